"""The mean split's selection kernel (kernels.median) against the reference (numerics.sample_median): the
same FP32 bits for every dtype the kernel takes, any strides, zeros of both signs, NaN, +-Inf, subnormals,
channels without a finite value and no tokens at all.

On CPU the kernel runs in Triton's interpreter (tests/conftest.py), so shapes stay small; the GPU tests
repeat the comparison at the benchmark's shapes.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ufp4_compile.numerics import sample_median
from ufp4_compile.numerics.mean_split import sample_stride

median = pytest.importorskip("ufp4_compile.kernels.median")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _check(x):
    got, want = median.sample_median(x), sample_median(x.cpu())
    assert got.shape == want.shape == (1, x.shape[1]) and got.dtype == torch.float32
    bad = (got.cpu().view(torch.int32) != want.view(torch.int32)).nonzero()
    assert bad.numel() == 0, f"{len(bad)} channels differ, first {bad[:4].tolist()}: {got.cpu()[0, bad[:4, 1]]} " \
                             f"against {want[0, bad[:4, 1]]}"


def _special(tokens, channels, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(tokens, channels, generator=gen) * 3 + torch.linspace(-4, 4, channels)).to(dtype)
    x[:, 0] = 0.0  # zeros of both signs: +0.0
    x[1::2, 0] = -0.0
    x[:, 1] = float("nan")  # no finite value: 0
    x[::2, 2] = float("nan")  # half missing: the median of the others
    x[0, 3] = float("inf")
    x[1:2, 3] = -float("inf")
    x[2:3, 3] = float("nan")
    x[:, 4] = torch.randint(-2, 3, (tokens,), generator=gen).to(dtype)  # ties
    x[:, 5] = -x[:, 5].abs()  # negatives only
    tiny = torch.finfo(dtype).tiny
    x[:, 6] = (torch.randint(-3, 4, (tokens,), generator=gen) * tiny / 4).to(dtype)  # subnormals
    x[:, 7] = torch.finfo(dtype).max * torch.sign(torch.randn(tokens, generator=gen)).to(dtype)  # extremes
    return x.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens, channels", [(1, 9), (2, 9), (37, 21), (1023, 16), (1024, 16), (2100, 17)])
def test_equals_the_reference(dtype, tokens, channels):
    """Every stride of the sample (1 below 1024 tokens, 3 at 1024..2047, 5 above), channels not a whole
    number of the kernel's blocks, one and two tokens (the lower middle value)."""
    _check(_special(tokens, channels, dtype, tokens))


@pytest.mark.parametrize("dtype", DTYPES)
def test_any_strides(dtype):
    """A transposed view (dY seen as (tokens, channels) with tokens contiguous) and a column slice."""
    x = _special(300, 40, dtype, 3)
    _check(x.t().contiguous().t())
    _check(x[:, 5:29])


def test_no_tokens_gives_zeros():
    x = torch.empty(0, 20, dtype=torch.bfloat16, device=DEVICE)
    assert torch.equal(median.sample_median(x).cpu(), torch.zeros(1, 20))


def test_refuses_what_it_does_not_take():
    assert median.refusal(torch.zeros(4, 3, dtype=torch.float64)).startswith("x.dtype=torch.float64")
    assert median.refusal(torch.zeros(4, 3, 2)).startswith("a 3-d tensor")
    assert median.refusal(torch.zeros(4, 0)) == "no channels"
    assert median.refusal(torch.zeros(4, 3, dtype=torch.bfloat16)) is None
    with pytest.raises(ValueError, match="x.dtype=torch.float64"):
        median.sample_median(torch.zeros(4, 3, dtype=torch.float64))


def test_launch_plan_covers_every_sampled_token():
    for tokens in (1, 1023, 1024, 2047, 2048, 8192, 100_000):
        grid, num_warps, scalars, constexprs = median.launch_plan(tokens, 1000, torch.bfloat16)
        step = scalars["token_step"]
        assert step == sample_stride(tokens) and scalars["n_tokens"] == len(range(0, tokens, step))
        assert scalars["n_tokens"] <= constexprs["BLOCK_S"] <= 1024 and grid == (-(-1000 // median.BLOCK_C), 1, 1)
        assert 1 <= num_warps <= 8


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(1, 80), channels=st.integers(1, 20), dtype=st.sampled_from(DTYPES),
       pool=st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -3.0, 65504.0, float("nan"), float("inf"),
                                      -float("inf"), 1e-7, -1e-7]), min_size=1, max_size=6),
       seed=st.integers(0, 2**16))
def test_values_drawn_from_a_small_pool(tokens, channels, dtype, pool, seed):
    """Many ties, and whatever mix of non-finite values and signed zeros a channel gets."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, len(pool), (tokens, channels), generator=gen)
    _check(torch.tensor(pool, dtype=torch.float32)[index].to(dtype).to(DEVICE))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens, channels", [(8192, 1024), (8192, 2752), (8192, 5504), (16384, 3072), (777, 4096)])
def test_equals_the_reference_at_real_shapes(dtype, tokens, channels):
    x = _special(tokens, channels, dtype, channels)
    _check(x)
    _check(x.t().contiguous().t())


Q_SPECS = ["int4/16/fp32/nearest", "int4/16/fp32/stochastic", "e2m1/16/fp32/stochastic"]


def _quantized_check(x, spec, rht, dtype):
    """The selection launch that quantizes mu too: mu, and mu's quantization bit for bit the reference's (the
    single quantize launch's, itself tested against numerics)."""
    from ufp4_compile import numerics

    seed = torch.tensor(99, device=x.device)
    mu, got = median.sample_median_quantized(x, spec, rht, 5, seed, 7 << 32, dtype)
    want_mu = sample_median(x.cpu())
    assert torch.equal(mu.cpu(), want_mu)
    if dtype is None:
        q = numerics.quantize(want_mu, 1, spec, rht=rht, rht_seed=5, seed=seed.cpu(), offset=7 << 32)
        want = (q.codes, q.scales, q.tensor_scale)
    else:
        want = numerics.quantize_dequantize(want_mu, 1, spec, rht=rht, rht_seed=5, seed=seed.cpu(), offset=7 << 32,
                                            dtype=dtype)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        g, w = g.cpu(), w.cpu()
        assert torch.equal(g, w) if not g.is_floating_point() else torch.equal(g.float().view(torch.int32),
                                                                               w.float().view(torch.int32))


@pytest.mark.parametrize("spec", Q_SPECS)
@pytest.mark.parametrize("rht", [0, 16])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_quantized_mu_equals_the_reference(spec, rht, dtype):
    _quantized_check(_special(300, 64, torch.bfloat16, 3).to(DEVICE), spec, rht, dtype)


def test_quantized_mu_refusals():
    from ufp4_compile.numerics import OperandFormat

    refusal = lambda spec, rht=16, channels=64: median.quantize_refusal(channels, OperandFormat.from_spec(spec), rht)
    assert refusal("int4/16/fp32/nearest") is None and refusal("int4/16/fp32/stochastic", 0) is None
    assert "blocks of 32" in refusal("e2m1/32/e8m0/stochastic")
    assert "e4m3 scales" in refusal("e2m1/16/e4m3/nearest")
    assert "16 x 16" in refusal("e2m1/16x16/e4m3/nearest")
    assert refusal("int4/16/fp32/nearest", channels=48) is None
    assert "40 channels" in refusal("int4/16/fp32/nearest", channels=40)
    with pytest.raises(ValueError, match="blocks of 32"):
        median.sample_median_quantized(torch.zeros(8, 64, device=DEVICE), "e2m1/32/e8m0/nearest", 16, 5, None, 0,
                                        torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("spec", Q_SPECS)
@pytest.mark.parametrize("channels", [1024, 2752, 3072])
def test_quantized_mu_equals_the_reference_at_real_shapes(spec, channels):
    for dtype in (None, torch.bfloat16):
        _quantized_check(_special(8192, channels, torch.bfloat16, 4).to(DEVICE), spec, 16, dtype)
