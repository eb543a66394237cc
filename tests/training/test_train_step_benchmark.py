"""Smoke test of benchmarks/train_step.py (the GPU benchmark's machinery, run on the CPU in --tiny mode)."""

import json

import pytest

BENCHMARK = "train_step.py"  # loaded by the bench fixture (conftest.py)


def test_tiny_smoke_run_writes_json_and_markdown(bench, tmp_path):
    assert bench.main(["--tiny", "--variants", "eager", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("train_step_*-tiny.json")
    data = json.loads(json_path.read_text())
    (row,) = data["rows"]
    assert row["variant"] == "bf16-eager" and len(row["step_times_s"]) == 2
    assert row["tokens_per_s"] == pytest.approx(2 * 64 / row["step_time_s"])
    assert "| bf16-eager |" in json_path.with_suffix(".md").read_text()


def test_ratios_against_bf16_compiled(bench):
    rows = [{"variant": "bf16-inductor", "step_time_s": 0.030, "peak_memory_bytes": 8e9, "compile_time_s": 40.0},
            {"variant": "ufp4:ufp4", "step_time_s": 0.032, "peak_memory_bytes": 6e9, "compile_time_s": 100.0},
            {"variant": "ufp4:nvfp4", "error": "Traceback ...\nRuntimeError: boom"}]
    bench.add_ratios(rows)
    assert rows[1]["ratio_step_time"] == pytest.approx(0.032 / 0.030)
    assert rows[1]["meets_targets"] == {"step_time": True, "peak_memory": True, "compile_time": False}
    assert "ratio_step_time" not in rows[2]
    assert "ratio_step_time_vs_cudagraphs" not in rows[1]


def test_cudagraph_variants_have_their_own_baseline(bench):
    rows = [{"variant": "bf16-inductor", "step_time_s": 0.030, "peak_memory_bytes": 8e9, "compile_time_s": 40.0},
            {"variant": "bf16-inductor-cg", "step_time_s": 0.025, "peak_memory_bytes": 9e9, "compile_time_s": 50.0},
            {"variant": "ufp4-cg:ufp4", "step_time_s": 0.050, "peak_memory_bytes": 7e9, "compile_time_s": 60.0}]
    bench.add_ratios(rows)
    assert rows[2]["ratio_step_time"] == pytest.approx(0.050 / 0.030)  # the baseline, whatever the mode
    assert rows[2]["ratio_step_time_vs_cudagraphs"] == pytest.approx(0.050 / 0.025)
    assert rows[2]["meets_targets"]["step_time"] is False
    args = bench.parse_args(["--tiny", "--variants", "inductor,ufp4-cg,inductor-cg", "--recipes", "ufp4"])
    assert [label for label, _, _ in bench.variants(args)] == ["bf16-inductor", "bf16-inductor-cg", "ufp4-cg:ufp4"]


def test_bad_arguments(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--recipes", "fp3"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--variants", "tensorrt"])


def test_kernel_names_fall_into_categories(bench):
    assert bench.categorize("_quantize_kernel") == "quantize"
    assert bench.categorize("_dequantize_kernel") == "dequantize"
    assert bench.categorize("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "gemm (cuBLAS)"
    assert bench.categorize("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NNT") == "gemm (cuBLAS)"
    assert bench.categorize("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert bench.categorize("multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert bench.categorize("triton_per_fused__to_copy_mean_mul_pow_rsqrt_0") == "inductor (generated)"
    assert bench.categorize("void at::native::elementwise_kernel<128, 2>") == "other"


def test_profile_breakdown_on_cpu(bench, tmp_path):
    assert bench.main(["--tiny", "--variants", "eager", "--profile", "1", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("train_step_*-tiny.json")
    (row,) = json.loads(json_path.read_text())["rows"]
    prof = row["profile"]
    assert prof["steps"] == 1 and prof["total_ms_per_step"] > 0
    assert prof["total_ms_per_step"] == pytest.approx(sum(prof["ms_per_step_by_category"].values()))
    assert prof["top_kernels"] and all(k["ms_per_step"] >= 0 for k in prof["top_kernels"])
    (md,) = tmp_path.glob("train_step_profile_*-tiny.md")
    assert "| **total kernel ms** |" in md.read_text()
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--profile", "-1"])
