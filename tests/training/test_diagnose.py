import contextlib
import dataclasses
import math

import pytest
import torch

from ufp4_compile.models.gpt import GPT, GPTConfig
from ufp4_compile.recipes import UFP4, UFP4_MEAN, GemmRecipe, LayerPolicy, MeanSplit, OperandFormat, Role, get_recipe
from ufp4_compile.training import diagnose

MODEL = GPTConfig(vocab_size=64, d_model=64, n_layers=3, n_heads=4, seq_len=32)
LINEARS = {f"layers.{i}.{m}" for i in range(3) for m in ("attn.qkv", "attn.out", "mlp.gate_up", "mlp.down")}


def test_measure_covers_every_rewritten_linear_and_leaves_training_state_alone():
    torch.manual_seed(0)
    model = GPT(MODEL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 64, (2, 32))
    rng = torch.get_rng_state()
    stats = diagnose.measure(model, get_recipe("ufp4"), x, x, contextlib.nullcontext())
    assert set(stats) == LINEARS | {"lm_head"}
    assert "keep_output_head" in stats.pop("lm_head")["kept"]  # the head stays in high precision
    for layer in stats.values():
        assert set(layer) == {"fprop", "dgrad", "wgrad"}
        assert [layer["wgrad"]["a"]["operand"], layer["wgrad"]["b"]["operand"]] == ["dY", "X"]
        for gemm in layer.values():
            for side in ("a", "b"):
                assert 0.8 < gemm[side]["alpha"] < 1.2 and 5 < gemm[side]["sqnr_db"] < 60
            assert gemm["eta"] == pytest.approx(gemm["a"]["alpha"] * gemm["b"]["alpha"])
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert diagnose.measure(model, get_recipe("bf16"), x, x, contextlib.nullcontext()) == {}


def test_decisions_follow_the_layer_policy_and_shapes():
    model = GPT(MODEL)
    recipe = dataclasses.replace(get_recipe("ufp4"), layers=LayerPolicy(keep_first=1, skip=("*.mlp.down",)))
    tokens = {name: 64 for name in LINEARS | {"lm_head"}}
    decisions = diagnose.plan(model, recipe, tokens, torch.float32)
    rewritten = {n for n, roles in decisions.items() if "kept" not in roles}
    assert rewritten == {n for n in LINEARS if not n.startswith("layers.0.") and not n.endswith("mlp.down")}
    assert "keep_first" in decisions["layers.0.attn.qkv"]["kept"]
    # 40 tokens is not a multiple of 16: Wgrad's reduction over tokens takes a zero-padded last block.
    odd = diagnose.plan(model, get_recipe("ufp4"), {"layers.1.mlp.down": 40}, torch.float32)
    assert set(odd["layers.1.mlp.down"]) == {Role.FPROP, Role.DGRAD, Role.WGRAD}


def test_exactly_representable_operand_has_alpha_one_and_infinite_sqnr():
    fmt = OperandFormat("int4", 16, "fp32")
    gemm = GemmRecipe(a=fmt, b=fmt, rht=0)
    codes = torch.randint(-7, 8, (8, 64)).float()
    codes[:, ::16] = 7.0  # every block's amax is 7: scale exactly 1 * 0.375
    stats = diagnose.operand_stats(codes * 0.375, 1, fmt, gemm, 0, split=False)
    assert stats["alpha"] == 1.0 and stats["sqnr_db"] == math.inf
    rotated = diagnose.operand_stats(codes * 0.375, 1, fmt, dataclasses.replace(gemm, rht=16), 0, split=False)
    assert rotated["sqnr_db"] < math.inf  # the RHT moves the values off the grid


def test_mean_split_measures_the_reconstructed_operand():
    torch.manual_seed(1)
    x = torch.randn(256, 64) + 10 * torch.randn(1, 64)  # a large per-channel mean over tokens
    assert UFP4_MEAN.fprop.mean_split is MeanSplit.FP4 and UFP4.fprop.mean_split is MeanSplit.OFF
    high = dataclasses.replace(UFP4_MEAN.fprop, mean_split=MeanSplit.HIGH)
    plain = diagnose.operand_stats(x, 1, high.a, high, 0, split=False)
    kept = diagnose.operand_stats(x, 1, high.a, high, 0, split=True)
    fp4 = diagnose.operand_stats(x, 1, high.a, UFP4_MEAN.fprop, 0, split=True)
    # Mean kept exact: only the small residual is quantized, so the error relative to x drops a lot.
    assert kept["sqnr_db"] > plain["sqnr_db"] + 10
    # Mean quantized too (the paper's FP4 option): its own rounding error now counts.
    assert fp4["sqnr_db"] < kept["sqnr_db"]


def test_statistics_use_the_first_token_rows(monkeypatch):
    torch.manual_seed(0)
    model = GPT(MODEL)
    x = torch.randint(0, 64, (2, 32))
    full = diagnose.measure(model, get_recipe("e2m1-ref"), x, x, contextlib.nullcontext())
    monkeypatch.setattr(diagnose, "MAX_TOKENS", 32)
    part = diagnose.measure(model, get_recipe("e2m1-ref"), x, x, contextlib.nullcontext())
    assert set(part["layers.0.mlp.down"]) == {"fprop", "dgrad", "wgrad"}  # decided on all 64 tokens
    assert part["layers.0.mlp.down"]["fprop"]["b"] == full["layers.0.mlp.down"]["fprop"]["b"]  # W: all rows
    assert part["layers.0.mlp.down"]["fprop"]["a"] != full["layers.0.mlp.down"]["fprop"]["a"]  # X: 32 of 64
