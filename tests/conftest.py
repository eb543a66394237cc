"""Test-wide setup: Triton kernels run in the interpreter when there is no CUDA device."""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before anything imports triton; kernels then run on CPU tensors, exactly.
    os.environ.setdefault("TRITON_INTERPRET", "1")
