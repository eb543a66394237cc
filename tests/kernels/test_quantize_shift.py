"""Quantizing ``x - shift`` (a mean split's residual) inside the kernels: the single launch, the pair launch
and the dual launches (their row-wise job) subtract the shift as they load a tile and give the reference's
bits (``numerics.quantize`` with ``shift``, itself ``quantize(x.float() - shift)``); two-level formats
quantize the difference computed first.

On CPU the kernels run in Triton's interpreter (tests/conftest.py), so shapes stay small; the GPU tests
repeat the comparison at the training step's shapes.
"""

from __future__ import annotations

import pytest
import torch

from ufp4_compile import numerics

kernels_quantize = pytest.importorskip("ufp4_compile.kernels.quantize")
quantize_pair = pytest.importorskip("ufp4_compile.kernels.quantize_pair")
launchers = pytest.importorskip("ufp4_compile.kernels.quantize_pair_launchers")

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
    (values, ts), (mu_values, mu_ts) = launchers.quantize_pair(
        x, spec, 16, 5, seed, [(1, 7 << 32, torch.bfloat16), (1, 7 << 32, torch.bfloat16)], other=(mu, 5, seed),
        shifts=(mu, None))
    want = _reference(x, mu, spec, 16, torch.bfloat16)
    assert _equal(values, want[0]) and _equal(ts, want[1])
    want_mu = numerics.quantize_dequantize(mu.cpu(), 1, spec, rht=16, rht_seed=5, seed=torch.tensor(99),
                                           offset=7 << 32, dtype=torch.bfloat16)
    assert _equal(mu_values, want_mu[0]) and _equal(mu_ts, want_mu[1])


def _launches(monkeypatch, name):
    """The launches ``kernels.quantize_pair.<name>`` builds for the eager launchers while the test runs (one
    launch of that kernel, not a fallback to single calls)."""
    taken = []
    monkeypatch.setattr(launchers, name, lambda *a, f=getattr(launchers, name), **k: taken.append(f(*a, **k))
                        or taken[-1])
    return taken


def _single(x, axis, spec, offset, dtype, shift=None, rht_seed=5, rht=16):
    """The job's single launch (itself tested against the reference above)."""
    seed = torch.tensor(99, device=DEVICE)
    if dtype is None:
        return kernels_quantize.quantize(x, axis, spec, rht, rht_seed, seed, offset, shift)
    return kernels_quantize.quantize_dequantize(x, axis, spec, rht, rht_seed, seed, offset, dtype, shift)


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape and _equal(g, w)


@pytest.mark.parametrize("spec", SPECS[:3])
@pytest.mark.parametrize("row_first", [True, False])
def test_dual_launch_with_a_shifted_row_job(spec, row_first, monkeypatch):
    """A mean split's X (or dY) from one read: its row-wise values less mu (Fprop, or Dgrad) and its column-wise
    codes as it is (Wgrad), in the dual kernel, whichever job comes first: the single launches' bits."""
    x, mu = _operand((64, 96), torch.bfloat16, 3)
    seed = torch.tensor(99, device=DEVICE)
    fmt = numerics.OperandFormat.from_spec(spec)
    row = kernels_quantize.plan_for(x, 1, fmt, 16, codes=False, values=True, shift=True)
    col = kernels_quantize.plan_for(x, 0, fmt, 16, codes=True, values=False)
    assert quantize_pair.dual_refusal((64, 96), row, col) is None
    jobs, shifts = [(1, 7 << 32, torch.bfloat16), (0, 9 << 32, None)], [mu, None]
    if not row_first:
        jobs, shifts = jobs[::-1], shifts[::-1]
    taken = _launches(monkeypatch, "pair_launch")
    results = launchers.quantize_pair(x, spec, 16, 5, seed, jobs, shifts=shifts)
    assert [launch.kernel for launch in taken] == [quantize_pair._quantize_dual_kernel]
    assert taken[0].constexprs["A_SHIFT"]
    for got, (axis, offset, dtype), shift in zip(results, jobs, shifts):
        _same(got, _single(x, axis, spec, offset, dtype, shift))
    row_result = results[0 if row_first else 1]
    _same(row_result, _reference(x, mu, spec, 16, torch.bfloat16))


def test_a_shifted_column_wise_job_never_takes_the_dual_kernel():
    fmt = numerics.OperandFormat.from_spec("int4/16/fp32/nearest")
    x = torch.zeros(64, 64, dtype=torch.bfloat16)
    row = kernels_quantize.plan_for(x, 1, fmt, 16, codes=False, values=True)
    col = kernels_quantize.plan_for(x, 0, fmt, 16, codes=True, values=False, shift=True)
    assert "column-wise job with a shift" in quantize_pair.dual_refusal((64, 64), row, col)
    unshifted = kernels_quantize.plan_for(x, 0, fmt, 16, codes=True, values=False)
    assert quantize_pair.dual_refusal((64, 64), row, unshifted) is None


@pytest.mark.parametrize("spec", SPECS[:3])
def test_two_duals_with_a_shifted_row_job(spec, monkeypatch):
    """A mean split's forward: X's residual values and column-wise codes, and W's two, in one launch."""
    x, mu = _operand((64, 96), torch.bfloat16, 4)
    w, _ = _operand((32, 96), torch.bfloat16, 5)
    seed = torch.tensor(99, device=DEVICE)
    x_jobs, w_jobs = ((1, 7 << 32, torch.bfloat16), (0, 9 << 32, None)), ((0, 3, None), (1, 5, torch.bfloat16))
    taken = _launches(monkeypatch, "two_duals_launch")
    results = launchers.quantize_two_duals(spec, (x, 5, seed, (16, 16), x_jobs), (w, 6, seed, (16, 16), w_jobs),
                                               shifts=(mu, None, None, None))
    assert len(taken) == 1 and taken[0].constexprs["A_SHIFT"] and not taken[0].constexprs["C_SHIFT"]
    singles = [_single(x, a, spec, o, d, mu if i == 0 else None) for i, (a, o, d) in enumerate(x_jobs)]
    singles += [_single(w, a, spec, o, d, rht_seed=6) for a, o, d in w_jobs]
    for got, want in zip(results, singles):
        _same(got, want)


@pytest.mark.parametrize("spec", ["int4/16/fp32/stochastic", "e2m1/32/e8m0/stochastic"])
def test_dual_dequantize_with_a_shifted_row_job(spec, monkeypatch):
    """A mean split's backward: dY's row-wise values less its mu (Dgrad) and column-wise values (Wgrad), and
    the dequantizations of two saved codes, in one launch."""
    from ufp4_compile.kernels.dequantize import dequantize

    dy, mu = _operand((64, 96), torch.bfloat16, 6)
    w, x = torch.randn(96, 32, device=DEVICE), torch.randn(64, 32, device=DEVICE)
    nearest = spec.replace("stochastic", "nearest")
    saved = [(*kernels_quantize.quantize(t, 0, nearest, 16, 5, None, 0), 0, nearest, torch.bfloat16) for t in (w, x)]
    jobs = ((0, 1 << 33, torch.bfloat16), (1, 16, torch.bfloat16))
    taken = _launches(monkeypatch, "dual_dequantize_launch")
    seed = torch.tensor(99, device=DEVICE)
    results = launchers.quantize_dual_dequantize(dy, spec, (16, 16), 5, seed, jobs, saved, shifts=(None, mu))
    assert len(taken) == 1 and taken[0].constexprs["A_SHIFT"]
    _same(results[0], _single(dy, 0, spec, 1 << 33, torch.bfloat16))
    _same(results[1], _single(dy, 1, spec, 16, torch.bfloat16, mu))
    for got, job in zip(results[2:], saved):
        assert _equal(got, dequantize(*job))


def test_one_launch_forms_with_two_level_scales_quantize_the_difference():
    """Two-level formats take no shift in the kernels: the one-launch forms fall back to single calls of the
    difference, with the reference's bits."""
    spec = "e2m1/16/e4m3/nearest"
    x, mu = _operand((64, 96), torch.bfloat16, 7)
    results = launchers.quantize_two_duals(spec, (x, 5, None, (16, 16), ((1, 0, torch.bfloat16), (0, 0, None))),
                                               (x, 5, None, (16, 16), ((1, 0, torch.bfloat16), (0, 0, None))),
                                               shifts=(mu, None, None, None))
    want = numerics.quantize_dequantize(x.cpu(), 1, spec, rht=16, rht_seed=5, offset=0, dtype=torch.bfloat16,
                                        shift=mu.cpu())
    _same(results[0], want)
    with pytest.raises(ValueError, match="shifts has 3 entries"):
        launchers.quantize_two_duals(spec, (x, 5, None, (16, 16), ((1, 0, None), (0, 0, None))),
                                         (x, 5, None, (16, 16), ((1, 0, None), (0, 0, None))), shifts=(mu, None, None))


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("spec", SPECS[:3])
@pytest.mark.parametrize("shape", [(8192, 1024), (8192, 2752)])
def test_shifted_one_read_launches_at_real_shapes(spec, shape, monkeypatch):
    """The training step's split X (forward: with W's two in the two-duals launch) and split dY (backward: with
    two dequantizations), on the GPU: each job the single launch's bits, the shifted one the reference's."""
    x, mu = _operand(shape, torch.bfloat16, 8)
    w, _ = _operand((1024, shape[1]), torch.bfloat16, 9)
    seed = torch.tensor(99, device=DEVICE)
    x_jobs, w_jobs = ((1, 7 << 32, torch.bfloat16), (0, 9 << 32, None)), ((0, 3, None), (1, 5, torch.bfloat16))
    taken = _launches(monkeypatch, "two_duals_launch")
    results = launchers.quantize_two_duals(spec, (x, 5, seed, (16, 16), x_jobs), (w, 6, seed, (16, 16), w_jobs),
                                               shifts=(mu, None, None, None))
    assert len(taken) == 1
    singles = [_single(x, a, spec, o, d, mu if i == 0 else None) for i, (a, o, d) in enumerate(x_jobs)]
    singles += [_single(w, a, spec, o, d, rht_seed=6) for a, o, d in w_jobs]
    for got, want in zip(results, singles):
        _same(got, want)
    _same(results[0], _reference(x, mu, spec, 16, torch.bfloat16))
    from ufp4_compile.kernels.dequantize import dequantize

    nearest = spec.replace("stochastic", "nearest")
    saved = [(*kernels_quantize.quantize(t, 0, nearest, 16, 5, None, 0), 0, nearest, torch.bfloat16)
             for t in (w.T.contiguous()[:, :1024], x[:, :1024])]
    jobs = ((0, 1 << 33, torch.bfloat16), (1, 16, torch.bfloat16))
    taken = _launches(monkeypatch, "dual_dequantize_launch")
    results = launchers.quantize_dual_dequantize(x, spec, (16, 16), 5, seed, jobs, saved, shifts=(None, mu))
    assert len(taken) == 1
    _same(results[0], _single(x, 0, spec, 1 << 33, torch.bfloat16))
    _same(results[1], _single(x, 1, spec, 16, torch.bfloat16, mu))
    for got, job in zip(results[2:], saved):
        assert _equal(got, dequantize(*job))
