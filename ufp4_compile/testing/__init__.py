"""Helpers for testing the ufp4 backend: graph capture, normalization, counting, small models."""

from ufp4_compile.testing.graphs import (GraphCapture, count_calls, eligible_matmuls, normalized, saved_tensors,
                                         ufp4_gemms)
from ufp4_compile.testing.run import Compiled, compile_and_run

__all__ = ["Compiled", "GraphCapture", "compile_and_run", "count_calls", "eligible_matmuls", "normalized",
           "saved_tensors", "ufp4_gemms"]
