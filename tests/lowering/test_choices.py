"""The choices the scaled_mm lowering offers, per (formats, compute dtype, target, K), with faked targets."""

import pytest

from ufp4_compile.dispatch import GemmPath, Target, gemm_paths
from ufp4_compile.kernels import gemm
from ufp4_compile.lowering.choices import (
    BLOCKSCALE_CONFIGS, DEQUANT_CONFIGS, fp32_dot_is_ieee, plan_choices)
from ufp4_compile.numerics.formats import OperandFormat
from ufp4_compile.recipes import PRESETS

SM90, SM100, GFX950, CPU = Target("cuda", 90), Target("cuda", 100), Target("hip", "gfx950"), Target("cpu")
F = OperandFormat.from_spec
NVFP4 = (F("e2m1/16/e4m3/nearest"), F("e2m1/16x16/e4m3/nearest"))
MXFP4 = (F("e2m1/32/e8m0/nearest"), F("e2m1/32/e8m0/stochastic"))
INT4_MX = (F("int4/32/e8m0/nearest"), F("int4/32/e8m0/nearest"))
UFP4 = (F("int4/16/fp32/stochastic"), F("int4/16/fp32/nearest"))
UFP4_NV = (F("int4/16/e4m3/nearest"), F("int4/16/e4m3/nearest"))
ALL_PAIRS = {"nvfp4": NVFP4, "mxfp4": MXFP4, "int4-e8m0": INT4_MX, "ufp4": UFP4, "ufp4-nv": UFP4_NV}
K = 4096


def names(pair, target, compute="bf16", k=K, **kwargs):
    return [p.name for p in plan_choices(*pair, compute, target, k, **kwargs)]


NATIVE_CASES = [(SM100, "nvfp4"), (SM100, "mxfp4"), (SM100, "int4-e8m0"), (GFX950, "mxfp4"), (GFX950, "int4-e8m0")]


@pytest.mark.parametrize("target, pair", NATIVE_CASES, ids=lambda x: str(x))
@pytest.mark.parametrize("autotune", [False, True])
def test_native_choice_comes_first_where_dispatch_has_it(target, pair, autotune):
    plans = plan_choices(*ALL_PAIRS[pair], "bf16", target, K, autotune=autotune)
    assert plans[0].name == "native" and plans[0].path is GemmPath.NATIVE
    assert [p.name for p in plans].count("native") == 1
    assert plans[-1].name == "extern"  # the dequantize + matmul fallback is always there
    # The FP32-compute recipe variant of the same formats: still native first (the product is the same).
    assert names(ALL_PAIRS[pair], target, "fp32", autotune=autotune)[0] == "native"


@pytest.mark.parametrize("target", [SM90, CPU, Target("cuda", 80), Target("hip", "gfx942")], ids=str)
@pytest.mark.parametrize("pair", sorted(ALL_PAIRS))
@pytest.mark.parametrize("autotune", [False, True])
def test_no_native_choice_without_block_scaled_mma(target, pair, autotune):
    assert "native" not in names(ALL_PAIRS[pair], target, autotune=autotune)


@pytest.mark.parametrize("target, pair", [(GFX950, "nvfp4"), (SM100, "ufp4"), (SM100, "ufp4-nv"),
                                          (GFX950, "ufp4")], ids=str)
def test_no_native_choice_for_formats_the_mma_cannot_take(target, pair):
    assert "native" not in names(ALL_PAIRS[pair], target, autotune=True)
    assert "native" not in names(ALL_PAIRS[pair], target, only=("native",))


def test_default_policy_without_autotune():
    # Hopper: dequantize + cuBLAS alone (measured fastest), so nothing is benchmarked.
    for pair in ALL_PAIRS.values():
        assert names(pair, SM90) == ["extern"]
    # Native targets: the native kernel and the extern choice, benchmarked against each other.
    assert names(MXFP4, SM100) == ["native", "extern"]
    assert names(MXFP4, GFX950) == ["native", "extern"]
    assert names(UFP4, SM100) == ["extern"]
    # The CPU target offers the dequantize + matmul choice only (the lowering falls back on CPU tensors).
    assert names(MXFP4, CPU) == names(MXFP4, CPU, autotune=True) == ["extern"]


def test_autotune_offers_every_exact_choice_in_dispatch_order():
    got = names(NVFP4, SM90, autotune=True)
    assert got == ["template"] * len(DEQUANT_CONFIGS) + ["blockscale"] * len(BLOCKSCALE_CONFIGS) + ["extern"]
    # FP32 block scales with bf16 compute: the blockscale loop would skip the reference's bf16 rounding.
    assert names(UFP4, SM90, autotune=True) == ["template"] * len(DEQUANT_CONFIGS) + ["extern"]
    blockscale = [p for p in plan_choices(*MXFP4, "bf16", SM100, K, autotune=True) if p.name == "blockscale"]
    assert {p.dot for p in blockscale} == {"fp8"} and all(p.config[2] == 32 for p in blockscale)
    # Choices follow the dispatch's order of paths.
    for recipe in PRESETS.values():
        for role in recipe.quantized_roles:
            g = recipe.gemm(role)
            for target in (SM90, SM100, GFX950):
                plan_paths = [p.path for p in plan_choices(g.a, g.b, "bf16", target, K, autotune=True)]
                dispatch_paths = [d.path for d in gemm_paths(g.a, g.b, "bf16", target)]
                assert list(dict.fromkeys(plan_paths)) == dispatch_paths, (recipe.name, role, target)


def test_only_narrows_to_exact_choices():
    assert names(NVFP4, SM90, only=("template",)) == ["template"]  # the default config only
    assert names(NVFP4, SM90, only=("blockscale",)) == ["blockscale"] * len(BLOCKSCALE_CONFIGS)
    assert names(UFP4, SM90, only=("blockscale",)) == []  # not exact for these formats
    assert names(MXFP4, SM100, only=("native", "extern")) == ["native", "extern"]
    assert names(MXFP4, SM90, only=("native",)) == []
    with pytest.raises(ValueError, match="valid values"):
        plan_choices(*MXFP4, "bf16", SM90, K, only=("cublas",))


def test_fp32_compute_drops_the_dequant_loop_where_fp32_dots_run_as_tf32():
    assert fp32_dot_is_ieee(SM90) and fp32_dot_is_ieee(GFX950) and not fp32_dot_is_ieee(SM100)
    on_hopper = plan_choices(*UFP4, "fp32", SM90, K, autotune=True)
    # (the blockscale loop's bf16 dots take raw codes, exact in bf16, and scale the partial sums in FP32)
    assert {(p.name, p.dot) for p in on_hopper} == {("template", "fp32"), ("blockscale", "bf16"), ("extern", None)}
    on_blackwell = plan_choices(*UFP4, "fp32", SM100, K, autotune=True)
    assert {(p.name, p.dot) for p in on_blackwell} == {("blockscale", "bf16"), ("extern", None)}
    assert all(p.mode == gemm.MODE_BLOCKSCALE for p in on_blackwell if p.name == "blockscale")


@pytest.mark.parametrize("k, block_k, even", [(4096, 128, True), (96, 128, False), (None, 128, False)])
def test_even_k_follows_the_reduction_length(k, block_k, even):
    plan = plan_choices(*UFP4_NV, "bf16", SM90, k, only=("template",))[0]
    assert plan.config[2] == block_k and plan.even_k is even


def test_bad_target_and_compute_are_rejected():
    with pytest.raises(ValueError, match="sm_<capability>"):
        plan_choices(*MXFP4, "bf16", "h100", K)
    with pytest.raises(ValueError, match="compute_dtype"):
        plan_choices(*MXFP4, "fp16", SM90, K)
