import dataclasses
import math

import pytest
import torch

from ufp4_compile.models.gpt import GPT, PRESETS, GPTConfig, apply_rope, expected_num_params, get_config, rope_tables


def small_config(**overrides) -> GPTConfig:
    return dataclasses.replace(GPTConfig(vocab_size=96, d_model=64, n_layers=3, n_heads=4, seq_len=24), **overrides)


def test_forward_shapes_and_loss():
    config = small_config()
    torch.manual_seed(0)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, config.vocab_size)
    loss = model(idx, idx)
    assert loss.shape == ()
    # At initialization (std 0.02) the logits are nearly uniform: loss close to log(vocab).
    assert abs(loss.item() - math.log(config.vocab_size)) < 0.1


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True}, {"ffn_hidden": 80}])
def test_parameter_count_matches_formula(overrides):
    config = small_config(**overrides)
    model = GPT(config)
    d, h, v, n = config.d_model, config.hidden, config.vocab_size, config.n_layers
    assert model.num_params() == sum(p.numel() for p in set(model.parameters()))
    assert model.num_params() == expected_num_params(config)
    untied = expected_num_params(dataclasses.replace(config, tie_embeddings=False))
    if config.tie_embeddings:
        assert model.lm_head.weight is model.embed.weight
        assert model.num_params() == untied - v * d
    assert untied == 2 * v * d + n * (4 * d * d + 3 * d * h + 2 * d) + d


def test_presets():
    assert set(PRESETS) >= {"tiny", "small", "bench"}
    with torch.device("meta"):
        small = GPT(PRESETS["small"]).num_params()
    assert 100e6 <= small <= 200e6, small
    bench = PRESETS["bench"]
    assert (bench.d_model, bench.n_layers, bench.n_heads, bench.seq_len, bench.vocab_size) == (1024, 12, 16, 1024,
                                                                                               32000)
    for config in PRESETS.values():
        # Every GEMM dimension is a multiple of 64: 16/32-element blocks and the RHT fit.
        for dim in (config.d_model, config.hidden, config.vocab_size):
            assert dim % 64 == 0


def test_bad_config_and_preset():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        GPTConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="n_layers"):
        GPTConfig(n_layers=0)
    with pytest.raises(ValueError, match="valid names: tiny, small, bench"):
        get_config("huge")
    assert get_config("tiny", seq_len=64, d_model=None).seq_len == 64


def test_sequence_longer_than_config_is_an_error():
    model = GPT(small_config())
    with pytest.raises(ValueError, match="exceeds config.seq_len"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_causal():
    torch.manual_seed(1)
    model = GPT(small_config())
    idx = torch.randint(0, 96, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 96
    before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :12], after[:, :12])
    assert not torch.allclose(before[:, 12:], after[:, 12:])


def rope_complex(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Independent formulation: pairs as complex numbers times exp(i * t * theta^(-2j/d))."""
    t, d = x.shape[-2], x.shape[-1]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(t, d // 2, dtype=torch.float64), torch.outer(torch.arange(t, dtype=torch.float64),
                                                                             freqs))
    return torch.view_as_real(z * rot).reshape(x.shape).float()


def test_rope_matches_complex_rotation_and_keeps_norms():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 40, 16)
    cos, sin = rope_tables(64, 16, 10000.0)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y, rope_complex(x, 10000.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])  # position 0 is not rotated


def test_rope_scores_depend_on_relative_position_only():
    torch.manual_seed(3)
    q, k = torch.randn(16), torch.randn(16)
    cos, sin = rope_tables(64, 16, 10000.0)

    def score(m: int, n: int) -> torch.Tensor:
        qs = torch.zeros(64, 16)
        ks = torch.zeros(64, 16)
        qs[m], ks[n] = q, k
        return apply_rope(qs, cos, sin)[m] @ apply_rope(ks, cos, sin)[n]

    for m, n, shift in [(5, 2, 7), (3, 3, 40), (1, 9, 20)]:
        torch.testing.assert_close(score(m, n), score(m + shift, n + shift), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3))
