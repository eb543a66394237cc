"""Quantizing ``x - shift`` (a mean split's residual) inside the kernels: the single launch and the pair
launch subtract the shift as they load a tile and give the reference's bits (``numerics.quantize`` with
``shift``, itself ``quantize(x.float() - shift)``); two-level formats quantize the difference computed first.

On CPU the kernels run in Triton's interpreter (tests/conftest.py), so shapes stay small; the GPU tests
repeat the comparison at the training step's shapes.
"""

from __future__ import annotations

import pytest
import torch

from ufp4_compile import numerics

kernels_quantize = pytest.importorskip("ufp4_compile.kernels.quantize")
quantize_pair = pytest.importorskip("ufp4_compile.kernels.quantize_pair")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPECS = ["int4/16/fp32/nearest", "int4/16/fp32/stochastic", "e2m1/32/e8m0/stochastic", "e2m1/16/e4m3/nearest"]


def _equal(got, want) -> bool:
    """The same values bit for bit, NaN payloads aside (a GPU's NaN and the CPU's differ)."""
    got, want = got.cpu(), want.cpu()
    if not got.is_floating_point():
        return torch.equal(got, want)
    got, want = got.float(), want.float()
    nan = want.isnan()
    return torch.equal(got.isnan(), nan) and torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


def _operand(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3 + torch.linspace(-4, 4, shape[1])).to(dtype)
    x[1, 3], x[2, 5], x[3, 7] = float("nan"), float("inf"), -float("inf")
    mu = (torch.randn(1, shape[1], generator=gen) * 2).float()
    mu[0, :4] = torch.tensor([0.0, -0.0, 3.0, float(x[0, 3])])  # zeros, and a value of x (a zero residual)
    return x.to(DEVICE), mu.to(DEVICE)


def _reference(x, mu, spec, rht, dtype):
    seed = torch.tensor(99)
    if dtype is None:
        q = numerics.quantize(x.cpu(), 1, spec, rht=rht, rht_seed=5, seed=seed, offset=7 << 32, shift=mu.cpu())
        assert torch.equal(q.codes, numerics.quantize(x.cpu().float() - mu.cpu(), 1, spec, rht=rht, rht_seed=5,
                                                      seed=seed, offset=7 << 32).codes)
        return q.codes, q.scales, q.tensor_scale
    return numerics.quantize_dequantize(x.cpu(), 1, spec, rht=rht, rht_seed=5, seed=seed, offset=7 << 32,
                                        dtype=dtype, shift=mu.cpu())


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("rht", [0, 16])
@pytest.mark.parametrize("shape", [(48, 64), (40, 48), (16, 512)])  # one tile a row, partial tiles, folded rows
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_single_launch_equals_the_reference(spec, rht, shape, dtype):
    x, mu = _operand(shape, dtype, shape[0] + rht)
    seed = torch.tensor(99, device=DEVICE)
    got = kernels_quantize.quantize(x, 1, spec, rht, 5, seed, 7 << 32, mu)
    assert all(_equal(g, w) for g, w in zip(got, _reference(x, mu, spec, rht, None)))
    got = kernels_quantize.quantize_dequantize(x, 1, spec, rht, 5, seed, 7 << 32, torch.bfloat16, mu)
    assert all(_equal(g, w) for g, w in zip(got, _reference(x, mu, spec, rht, torch.bfloat16)))


@pytest.mark.parametrize("spec", SPECS[:3])
def test_pair_launch_with_a_shifted_job(spec):
    """The mean split's pair: the residual x - mu (values) and mu itself (values) in one launch."""
    x, mu = _operand((48, 64), torch.bfloat16, 1)
    seed = torch.tensor(99, device=DEVICE)
    fmt = numerics.OperandFormat.from_spec(spec)
    plans = [kernels_quantize.plan_for(x, 1, fmt, 16, codes=False, values=True, shift=True),
             kernels_quantize.plan_for(mu, 1, fmt, 16, codes=False, values=True)]
    assert quantize_pair.pair_refusal(*plans) is None  # the test runs the pair kernel
    (values, ts), (mu_values, mu_ts) = quantize_pair.quantize_pair(
        x, spec, 16, 5, seed, [(1, 7 << 32, torch.bfloat16), (1, 7 << 32, torch.bfloat16)], other=(mu, 5, seed),
        shifts=(mu, None))
    want = _reference(x, mu, spec, 16, torch.bfloat16)
    assert _equal(values, want[0]) and _equal(ts, want[1])
    want_mu = numerics.quantize_dequantize(mu.cpu(), 1, spec, rht=16, rht_seed=5, seed=torch.tensor(99),
                                           offset=7 << 32, dtype=torch.bfloat16)
    assert _equal(mu_values, want_mu[0]) and _equal(mu_ts, want_mu[1])


def test_shifted_jobs_never_take_the_dual_kernel():
    fmt = numerics.OperandFormat.from_spec("int4/16/fp32/nearest")
    x = torch.zeros(64, 64, dtype=torch.bfloat16)
    row = kernels_quantize.plan_for(x, 1, fmt, 16, codes=False, values=True, shift=True)
    col = kernels_quantize.plan_for(x, 0, fmt, 16, codes=True, values=False)
    assert "shift" in quantize_pair.dual_refusal((64, 64), row, col)
    unshifted = kernels_quantize.plan_for(x, 1, fmt, 16, codes=False, values=True)
    assert quantize_pair.dual_refusal((64, 64), unshifted, col) is None


def test_bad_shift():
    x = torch.zeros(32, 64, dtype=torch.bfloat16, device=DEVICE)
    for bad in (torch.zeros(64, 1, device=DEVICE), torch.zeros(1, 64, dtype=torch.bfloat16, device=DEVICE)):
        with pytest.raises(ValueError, match="shift must be a torch.float32 tensor of shape \\(1, 64\\)"):
            kernels_quantize.quantize(x, 1, "int4/16/fp32/nearest", 16, 5, None, 0, bad)
    with pytest.raises(ValueError, match="two-level scales"):
        kernels_quantize.launch_plan((32, 64), 2, 1, numerics.OperandFormat.from_spec("e2m1/16/e4m3/nearest"), 16,
                                     True, False, False, None, True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [(8192, 1024), (8192, 2752), (8192, 3072)])
def test_single_launch_equals_the_reference_at_real_shapes(spec, shape):
    x, mu = _operand(shape, torch.bfloat16, 2)
    seed = torch.tensor(99, device=DEVICE)
    got = kernels_quantize.quantize_dequantize(x, 1, spec, 16, 5, seed, 7 << 32, torch.bfloat16, mu)
    assert all(_equal(g, w) for g, w in zip(got, _reference(x, mu, spec, 16, torch.bfloat16)))
