"""benchmarks/saved_tensors.py on the tiny preset: the partitioner saves 4-bit codes instead of GEMM inputs."""

import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "saved_tensors.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("saved_tensors_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_saved_set_bf16_vs_ufp4(bench, tmp_path):
    assert bench.main(["--preset", "tiny", "--recipes", "bf16,ufp4", "--batch-size", "2", "--out", str(tmp_path)]) == 0
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "saved_tensors_tiny.json").read_text())["rows"]}
    codes = "4-bit codes, scales (ufp4.quantize)"
    assert codes not in rows["bf16"]["groups"]
    assert rows["ufp4"]["groups"][codes]["tensors"] > 0
    assert 0 < rows["ufp4"]["activation_bytes"] < rows["bf16"]["activation_bytes"]
    assert "| **activations" in (tmp_path / "saved_tensors_tiny.md").read_text()
