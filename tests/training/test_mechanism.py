"""``ufp4 analyze --model``'s measurements (training/mechanism.py) on a small random GPT."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from ufp4_compile.data.corpus import Corpus, TokenStream
from ufp4_compile.models.gpt import GPT, GPTConfig
from ufp4_compile.recipes import BF16, Role, SRSeedPolicy
from ufp4_compile.training import checkpoint, mechanism

MODEL = GPTConfig(vocab_size=64, d_model=64, n_layers=3, n_heads=4, seq_len=32)
LINEARS = [f"layers.{i}.{m}" for i in range(3) for m in ("attn.qkv", "attn.out", "mlp.gate_up", "mlp.down")]


def _corpus() -> Corpus:
    tokens = np.random.default_rng(0).integers(0, 64, 4000).astype(np.uint8)
    return Corpus(TokenStream([tokens[:3000]]), TokenStream([tokens[3000:]]), 64, {"sha256": "x"})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Hundreds of small reference ops: one thread is several times faster than two on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    model = GPT(MODEL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipes = mechanism.parse_recipes("e2m1-ref,ufp4,ufp4-rht0")
    result = mechanism.analyze_model(model, _corpus(), recipes, 2, "cpu", False, log=lambda *_: None)
    return model, before, result


def test_recipe_names_with_the_rht_switched():
    off = mechanism.parse_recipe("ufp4-rht0")
    assert off.name == "ufp4-rht0" and (off.fprop.rht, off.dgrad.rht, off.wgrad.rht) == (0, 0, 16)
    on = mechanism.parse_recipe("e2m1-ref+rht16")
    assert (on.fprop.rht, on.dgrad.rht, on.wgrad.rht) == (16, 16, 16) and on.fprop.a.grid.value == "e2m1"
    assert mechanism.fprop_only(on).quantized_roles == (Role.FPROP,)
    back = mechanism.backward_only(on)
    assert back.quantized_roles == (Role.DGRAD, Role.WGRAD) and back.sr_seed_policy is SRSeedPolicy.FIXED
    with pytest.raises(ValueError, match="quantizes nothing"):
        mechanism.parse_recipe("bf16")
    with pytest.raises(ValueError, match="valid names"):
        mechanism.parse_recipes("ufp4,fp3")


def test_compare():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    same = mechanism.compare(x, x)
    assert same["alpha"] == pytest.approx(1) and same["cosine"] == pytest.approx(1) and same["sqnr_db"] == math.inf
    half = mechanism.compare(x, 0.5 * x)
    assert half["alpha"] == pytest.approx(0.5) and half["norm_ratio"] == pytest.approx(0.5)


def test_every_figure_is_there_and_the_model_is_left_alone(measured):
    model, before, result = measured
    assert result["layers"] == LINEARS and "lm_head" in result["kept"]
    assert len(result["operands"]) == len(LINEARS) * 6 * 4  # 3 roles x 2 operands, 2 grids x 2 RHT sizes
    for row in result["operands"]:
        assert 0.9 < row["alpha"] < 1.1 and 10 < row["sqnr_db"] < 40
    assert set(result["forward"]) == set(result["backward"]) == {"e2m1-ref", "ufp4", "ufp4-rht0"}
    for name, fwd in result["forward"].items():
        assert [b["block"] for b in fwd["blocks"]] == [0, 1, 2]
        assert set(fwd["layers"]) == set(LINEARS) and all("eta" in g for g in fwd["layers"].values())
        assert 0.9 < fwd["alpha_end"] < 1.1 and fwd["logits"]["cosine"] > 0.99
        bwd = result["backward"][name]
        assert [b["block"] for b in bwd["blocks"]] == [0, 1, 2] and set(bwd["layers"]) == set(LINEARS)
        for g in bwd["layers"].values():
            assert {"dX", "dW", "eta_dgrad", "eta_wgrad"} <= set(g) and g["dW"]["cosine"] > 0.9
    assert all(isinstance(c["holds"], bool) for c in result["checks"])
    assert len(result["checks"]) == 5 + 2 * 2  # 5 on operands, 2 forward and 2 backward (no e2m1-ref+rht16 here)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))  # emulation undone
    assert all(p.grad is None for p in model.parameters())
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_shrinkage_of_the_grids_on_gaussian_weights(measured):
    # The weights are N(0, 0.02) at initialization. E2M1's round-to-nearest shrinks Gaussian blocks
    # (alpha = 0.9959 on 4096x256 in `ufp4 analyze`); the uniform grid does not. Measured here, per weight
    # and axis: E2M1 0.994-0.998 but one 64x64 weight at 1.0004 (256 blocks: sampling noise), median 0.9963;
    # INT4 0.998-1.002.
    rows = [r for r in measured[2]["operands"] if r["operand"] == "W" and r["rht"] == 0]
    e2m1 = [r["alpha"] for r in rows if r["grid"] == "e2m1"]
    int4 = [r["alpha"] for r in rows if r["grid"] == "int4"]
    assert np.median(e2m1) < 0.998 and sum(a < 1 for a in e2m1) >= 0.9 * len(e2m1)
    assert np.median(np.abs(np.array(int4) - 1)) < np.median(np.abs(np.array(e2m1) - 1))


def test_nothing_quantized_means_ratios_of_one(measured):
    model, _, result = measured
    x, y = [torch.from_numpy(a) for a in (np.arange(64).reshape(2, 32) % 64, (np.arange(64).reshape(2, 32) + 1) % 64)]
    exact = mechanism.run_trace(model, x, y, torch.autocast("cpu", enabled=False), backward=True)
    fwd = mechanism.forward_depth(model, BF16, x, y, torch.autocast("cpu", enabled=False), exact, LINEARS)
    assert all(b["alpha"] == pytest.approx(1, abs=1e-6) for b in fwd["blocks"])
    assert fwd["loss"] == pytest.approx(exact.loss, abs=1e-6)


def test_load_model_from_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    model = GPT(MODEL)
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path / "checkpoints" / "bf16-seed1.pt"
    identity = {"run_id": "bf16-seed1", "seed": 1, "model": {f: getattr(MODEL, f) for f in MODEL.__dataclass_fields__},
                "corpus": "abc"}
    checkpoint.save(path, model, optimizer, identity, {"step": 2, "losses": [3.0, 2.5]})
    loaded, info = mechanism.load_model(path, "cpu")
    assert loaded.config == MODEL and info["steps"] == 2 and info["corpus_sha256"] == "abc"
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a checkpoint of ufp4 train"):
        mechanism.load_model(bad, "cpu")
    with pytest.raises(ValueError, match="no such file"):
        mechanism.load_model(tmp_path / "missing.pt", "cpu")
