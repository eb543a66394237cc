"""Smoke test of benchmarks/train_step.py (the GPU benchmark's machinery, run on the CPU in --tiny mode)."""

import json

import pytest
import torch

BENCHMARK = "train_step.py"  # loaded by the bench fixture (conftest.py)


def test_tiny_smoke_run_writes_json_and_markdown(bench, tmp_path):
    assert bench.main(["--tiny", "--variants", "eager", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("train_step_*-tiny.json")
    data = json.loads(json_path.read_text())
    (row,) = data["rows"]
    assert row["variant"] == "bf16-eager" and len(row["step_times_s"]) == 2
    assert row["tokens_per_s"] == pytest.approx(2 * 64 / row["step_time_s"])
    assert "| bf16-eager |" in json_path.with_suffix(".md").read_text()
    assert data["meta"]["reuse_worker_binaries"] is True  # the default: static launchers from the worker's binaries


def test_second_compile_turns_the_reuse_of_worker_binaries_off(bench, tmp_path, monkeypatch):
    """--second-compile runs the variants with static_launch.reuse_worker_binaries(False) and says so."""
    from ufp4_compile.lowering import static_launch

    seen = []
    original = static_launch.reuse_worker_binaries
    monkeypatch.setattr(static_launch, "reuse_worker_binaries", lambda enabled=True: seen.append(enabled) or
                        original(enabled))
    assert bench.main(["--tiny", "--variants", "eager", "--second-compile", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("train_step_*-tiny.json")
    assert seen == [False] and json.loads(json_path.read_text())["meta"]["reuse_worker_binaries"] is False
    assert "compiled a second time in the parent" in json_path.with_suffix(".md").read_text()


def test_ratios_against_bf16_compiled(bench):
    rows = [{"variant": "bf16-inductor", "step_time_s": 0.030, "peak_memory_bytes": 8e9, "compile_time_s": 40.0},
            {"variant": "ufp4:ufp4", "step_time_s": 0.032, "peak_memory_bytes": 6e9, "compile_time_s": 100.0},
            {"variant": "ufp4:nvfp4", "error": "Traceback ...\nRuntimeError: boom"}]
    bench.add_ratios(rows)
    assert rows[1]["ratio_step_time"] == pytest.approx(0.032 / 0.030)
    assert rows[1]["meets_targets"] == {"step_time": True, "peak_memory": True, "compile_time": False}
    assert "ratio_step_time" not in rows[2]
    assert "ratio_step_time_vs_cudagraphs" not in rows[1]


def test_targets_are_per_recipe_and_ufp4_rows_have_a_ratio_to_their_qdq_peer(bench):
    rows = [{"variant": "bf16-inductor", "step_time_s": 0.030, "peak_memory_bytes": 8e9, "compile_time_s": 40.0},
            {"variant": "ufp4:ufp4-mean", "step_time_s": 0.042, "peak_memory_bytes": 7e9, "compile_time_s": 60.0},
            {"variant": "ufp4:ufp4", "step_time_s": 0.042, "peak_memory_bytes": 7e9, "compile_time_s": 60.0},
            {"variant": "qdq:ufp4", "step_time_s": 0.060, "peak_memory_bytes": 7e9, "compile_time_s": 50.0},
            {"variant": "ufp4-cg:ufp4", "step_time_s": 0.020, "peak_memory_bytes": 7e9, "compile_time_s": 60.0},
            {"variant": "qdq-cg:ufp4", "step_time_s": 0.025, "peak_memory_bytes": 7e9, "compile_time_s": 50.0}]
    bench.add_ratios(rows)
    assert rows[1]["meets_targets"]["step_time"] is True  # 1.40x: within ufp4-mean's 1.50
    assert rows[2]["meets_targets"]["step_time"] is False  # the same 1.40x misses ufp4's 1.30
    assert rows[2]["ratio_vs_qdq"] == pytest.approx(0.042 / 0.060)
    assert rows[4]["ratio_vs_qdq"] == pytest.approx(0.020 / 0.025)  # -cg rows against the -cg peer
    assert "ratio_vs_qdq" not in rows[1] and "ratio_vs_qdq" not in rows[3]  # no peer row; the peer itself
    assert "meets_targets" not in rows[3]
    table = bench.markdown(_META, [{**r, "tokens_per_s": 1.0} for r in rows])
    assert "| ufp4:ufp4 | 42.00 | 1.400 | n/a | 0.70 |" in table
    assert "| ufp4:ufp4-mean | 42.00 | 1.400 |" in table and "| met |" in table  # within ufp4-mean's 1.50
    assert "| **missed**: step time |" in table  # ufp4's row: its 1.30 target
    args = bench.parse_args(["--tiny", "--recipes", "bf16,ufp4", "--variants", "qdq,qdq-cg,ufp4"])
    assert [label for label, _, _ in bench.variants(args)] == ["ufp4:bf16", "ufp4:ufp4", "qdq:ufp4", "qdq-cg:ufp4"]
    assert bench.parse_args(["--tiny"]).kinds == ["eager", "inductor", "ufp4", "qdq"]


_META = {"device": "cpu", "torch": "2", "triton": "3", "git": "0", "batch_size": 2, "precision": "fp32", "iters": 2,
         "warmup": 1, "compile_cache": False, "command": "python benchmarks/train_step.py",
         "model": {"d_model": 128, "n_layers": 2, "n_heads": 4, "seq_len": 64, "vocab_size": 256}}


def test_cudagraph_variants_have_their_own_baseline(bench):
    rows = [{"variant": "bf16-inductor", "step_time_s": 0.030, "peak_memory_bytes": 8e9, "compile_time_s": 40.0},
            {"variant": "bf16-inductor-cg", "step_time_s": 0.025, "peak_memory_bytes": 9e9, "compile_time_s": 50.0},
            {"variant": "ufp4-cg:ufp4", "step_time_s": 0.050, "peak_memory_bytes": 7e9, "compile_time_s": 60.0}]
    bench.add_ratios(rows)
    assert rows[2]["ratio_step_time"] == pytest.approx(0.050 / 0.030)  # the baseline, whatever the mode
    assert rows[2]["ratio_step_time_vs_cudagraphs"] == pytest.approx(0.050 / 0.025)
    assert rows[2]["meets_targets"]["step_time"] is False
    # 1.28x bf16 with CUDA graphs meets ufp4's 1.30 there, though 1.07x bf16's default step would too; 1.36x
    # bf16-cg misses it although the default-mode ratio (1.13x) is within
    for step, met in ((0.032, True), (0.034, False)):
        cg_rows = [dict(r) for r in rows[:2]] + [{**rows[2], "step_time_s": step}]
        bench.add_ratios(cg_rows)
        assert cg_rows[2]["meets_targets"]["step_time"] is met
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
    assert bench.categorize("_quantize_pair_kernel") == "quantize"
    assert bench.categorize("_dequantize_pair_kernel") == "dequantize"
    assert bench.categorize("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "gemm (cuBLAS)"
    assert bench.categorize("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NNT") == "gemm (cuBLAS)"
    assert bench.categorize("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert bench.categorize("multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert bench.categorize("triton_per_fused__to_copy_mean_mul_pow_rsqrt_0") == "inductor (generated)"
    assert bench.categorize("void at::native::elementwise_kernel<128, 2>") == "other"


def test_gpu_idle_is_charged_to_the_phase_that_launched_the_kernel(bench):
    """A synthetic two-step trace: a kernel's idle gap (from the previous kernel's end to its start) and its
    busy time count for the phase whose CPU range issued its launch; overlapping kernels leave no gap."""
    cpu = lambda name, ts, dur: {"ph": "X", "cat": "cpu_op", "name": name, "ts": ts, "dur": dur}
    launch = lambda corr, ts: {"ph": "X", "cat": "cuda_driver", "name": "cuLaunchKernelEx", "ts": ts, "dur": 1,
                               "args": {"correlation": corr}}
    kernel = lambda corr, ts, dur: {"ph": "X", "cat": "kernel", "name": f"k{corr}", "ts": ts, "dur": dur,
                                    "args": {"correlation": corr}}
    events = [cpu("CompiledFunction", 0, 100), cpu("CompiledFunctionBackward", 100, 100),
              cpu("Optimizer.step#AdamW.step", 200, 50),
              launch(1, 10), launch(2, 20), launch(3, 150), launch(4, 210), launch(5, 300),
              kernel(1, 50, 100), kernel(2, 120, 40),  # overlaps kernel 1: no gap; busy counts both
              kernel(3, 400, 1000), kernel(4, 1500, 500), kernel(5, 2000, 10)]
    idle = bench.gpu_idle_by_phase({"traceEvents": events}, steps=2)
    assert idle["forward"] == {"busy_ms": 0.14 / 2, "idle_ms": 0.0, "kernels": 1.0}
    assert idle["backward"] == pytest.approx({"busy_ms": 0.5, "idle_ms": (400 - 160) / 1e3 / 2, "kernels": 0.5})
    assert idle["optimizer"] == pytest.approx({"busy_ms": 0.25, "idle_ms": 0.05, "kernels": 0.5})
    assert idle["other"] == pytest.approx({"busy_ms": 0.005, "idle_ms": 0.0, "kernels": 0.5})


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


def test_qdq_variant_runs_in_tiny_mode(bench, tmp_path):
    assert bench.main(["--tiny", "--variants", "qdq", "--recipes", "ufp4", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("train_step_*-tiny.json")
    (row,) = json.loads(json_path.read_text())["rows"]
    assert row["variant"] == "qdq:ufp4" and row["step_time_s"] > 0
    # the first step's compile, by phase: Inductor compiled the forward and the backward
    phases = row["compile_phases_s"]
    assert phases["_compile.compile_inner"] > 0 and phases["compile_fx.<locals>.bw_compiler"] > 0
    assert phases["_compile.compile_inner"] <= row["first_step_s"] + 0.01
    md = json_path.with_suffix(".md").read_text()
    assert "Compile time by phase" in md and "| forward compile, all of it (`_compile.compile_inner`) | " in md


def test_compile_phases_are_the_first_steps_share_of_the_timed_functions(bench):
    before = {"a": 1.0, "b": 2.0}
    after = {"a": 1.0, "b": 2.504, "c": 0.25, "d": 0.001}
    assert bench.compile_phases(before, after) == {"b": 0.5, "c": 0.25}
    timings = bench.compile_seconds()
    assert all(isinstance(v, float) and v >= 0 for v in timings.values())


def test_fake_quant_int4_nearest_is_the_reference_quantize_dequantize(bench):
    from ufp4_compile.numerics.quantize import dequantize, quantize
    from ufp4_compile.recipes import Grid

    # Awkward data: magnitudes over six decades, ties of the grid (k + 0.5 after scaling) and a zero block.
    x = torch.randn(48, 64, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 64)
    x[:, :16] = torch.tensor([7.0, -7.0] + [k + 0.5 for k in range(-7, 7)])  # scale 7/7 = 1: k + 0.5 are ties
    x[0, 16:32] = 0.0
    for dim in (0, 1):
        expected = dequantize(quantize(x, dim, "int4/16/fp32/nearest"))
        # Both divide by the FP32 scale amax/7 (IEEE division), clamp to +-7 and round half to even: equal bits.
        torch.testing.assert_close(bench.qdq_peer.fake_quant(x, dim, Grid.INT4), expected, rtol=0, atol=0)


@pytest.mark.parametrize("recipe", ["ufp4", "e2m1-ref", "ufp4-mean"])
def test_qdq_linear_gradients_are_close_to_the_plain_linear(bench, recipe):
    torch.manual_seed(0)  # the weights and torch.rand_like's stochastic-rounding noise
    linear = torch.nn.Linear(64, 96)
    peer = bench.qdq_peer.QDQLinear(linear, bench.get_recipe(recipe))
    x = torch.randn(2, 32, 64, requires_grad=True)
    g = torch.randn(2, 32, 96)
    grads = []
    for layer in (peer, linear):
        x.grad = linear.weight.grad = linear.bias.grad = None
        (layer(x) * g).sum().backward()
        grads.append((x.grad, linear.weight.grad, linear.bias.grad))
    # One 4-bit operand of Gaussian blocks of 16 (amax about 2 sigma) has a relative RMS error of about 9%
    # (INT4, nearest) to 12% (stochastic rounding, or E2M1); a GEMM of two such operands about their root sum
    # of squares, 15-17% (measured). 0.25 leaves room for the seed and fails an operand quantized along the
    # wrong axis or rotated alone (the product then loses its structure: relative error near 1).
    for got, want in zip(*grads):
        assert ((got - want).norm() / want.norm()).item() < 0.25
    torch.testing.assert_close(grads[0][2], grads[1][2])  # the bias gradient is exact


def test_the_ufp4_mean_peer_splits_off_the_channel_means(bench):
    """Activations and gradients whose channels sit far from zero (offsets of 50 and 20 over unit noise): the
    unsplit recipe's block scales follow the offsets and round away most of what varies between tokens; the
    split quantizes the residual. Measured on the outputs less their mean over the tokens (Y in the forward,
    dX in the backward), the split's error is a fraction of the unsplit one's."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=False)
    x = (torch.randn(128, 64) + 50 * torch.randn(1, 64).sign()).requires_grad_()
    g = torch.randn(128, 96) + 20
    errors: dict = {}
    for recipe in ("ufp4", "ufp4-mean"):
        peer = bench.qdq_peer.QDQLinear(linear, bench.get_recipe(recipe))
        x.grad = None
        y = peer(x)
        (y * g).sum().backward()
        for got, want in ((y, x @ linear.weight.t()), (x.grad, g @ linear.weight)):
            got, want = got - got.mean(0), want - want.mean(0)
            errors.setdefault(recipe, []).append(((got - want).norm() / want.norm()).item())
    assert all(m < 0.5 * u for m, u in zip(errors["ufp4-mean"], errors["ufp4"])), errors


def test_swap_linears_keeps_the_output_head(bench):
    from ufp4_compile.models.gpt import GPT, get_config

    model = bench.qdq_peer.swap_linears(GPT(get_config("tiny", tie_embeddings=True)), "ufp4")
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears == ["lm_head"] and model.lm_head.weight is model.embed.weight
    assert sum(isinstance(m, bench.qdq_peer.QDQLinear) for m in model.modules()) == 4 * 2  # qkv, out, gate_up, down
