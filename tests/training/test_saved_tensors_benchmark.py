"""benchmarks/saved_tensors.py on the tiny preset: the partitioner saves 4-bit codes instead of GEMM inputs."""

import json

BENCHMARK = "saved_tensors.py"  # loaded by the bench fixture (conftest.py)


def test_tiny_saved_set_bf16_vs_ufp4(bench, tmp_path):
    assert bench.main(["--preset", "tiny", "--recipes", "bf16,ufp4", "--batch-size", "2", "--out", str(tmp_path)]) == 0
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "saved_tensors_tiny.json").read_text())["rows"]}
    codes = "4-bit codes, scales (ufp4.quantize)"
    assert codes not in rows["bf16"]["groups"]
    assert rows["ufp4"]["groups"][codes]["tensors"] > 0
    assert 0 < rows["ufp4"]["activation_bytes"] < rows["bf16"]["activation_bytes"]
    assert "| **activations" in (tmp_path / "saved_tensors_tiny.md").read_text()
