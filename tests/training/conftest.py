"""Benchmark scripts under test: a module names its script in ``BENCHMARK`` and takes the ``bench`` fixture."""

import importlib.util
import pathlib

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench(request):
    """The script ``benchmarks/<BENCHMARK>`` of the requesting test module, loaded as a module."""
    script = BENCHMARKS / request.module.BENCHMARK
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
