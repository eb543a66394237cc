"""The global-amax pre-passes of two-level scales two or four jobs a launch (kernels.prepass) against each job's
own pre-pass (kernels.quantize._amax_kernel): each job's global maximum is the same word, so the codes are the
single launches'.

On CPU the kernels run in Triton's interpreter (tests/conftest.py), so shapes stay tiny; the GPU tests repeat
the comparison at real shapes.
"""

from __future__ import annotations

import pytest
import torch

from ufp4_compile.numerics import hadamard
from ufp4_compile.numerics.quantize import _finite_amax
from ufp4_compile.numerics.formats import OperandFormat

kernels_quantize = pytest.importorskip("ufp4_compile.kernels.quantize")
quantize_pair = pytest.importorskip("ufp4_compile.kernels.quantize_pair")
launchers = pytest.importorskip("ufp4_compile.kernels.quantize_pair_launchers")
prepass = pytest.importorskip("ufp4_compile.kernels.prepass")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _bits(t):
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.uint8}.get(
        t.dtype, t.dtype))


@pytest.mark.parametrize("specs", [("int4/16/e4m3/nearest", 16, 16), ("e2m1/16/e4m3/stochastic", 0, 16)])
def test_amax_pair_writes_each_jobs_partial_maxima(specs):
    """Two two-level quantizations' global-amax pre-passes in one launch (nvfp4's dY: Dgrad unrotated, Wgrad
    rotated): each job's partial maxima are its own pre-pass's, word for word."""
    spec, ra, rb = specs
    fmt = OperandFormat.from_spec(spec)
    x = torch.randn(48, 64, device=DEVICE) * 3
    x[1, 2] = float("inf")  # counts as 0
    plans = [kernels_quantize.plan_for(x, 1, fmt, ra, codes=False, values=True),
             kernels_quantize.plan_for(x, 0, fmt, rb, codes=True, values=False)]
    keys = [kernels_quantize.rht_key(plan, 3) for plan in plans]
    n = kernels_quantize.AMAX_PROGRAMS
    paired = [torch.full((n,), -1, dtype=torch.int32, device=DEVICE) for _ in plans]
    launches = prepass.amax_launches(plans, [x, x], paired, keys)
    assert len(launches) == 1 and launches[0][0] is prepass._amax_pair_kernel
    for kernel, grid, num_warps, tensors, scalars in launches:
        kernel[grid](**tensors, **scalars, num_warps=num_warps)
    for plan, key, got in zip(plans, keys, paired):
        want = torch.full((n,), -2, dtype=torch.int32, device=DEVICE)
        kernel, grid, num_warps, tensors, scalars = kernels_quantize.amax_launch(plan, x, want, key)
        kernel[grid](**tensors, **scalars, num_warps=num_warps)
        assert torch.equal(got, want)
        assert int(got.max()) == _reference_amax_bits(x, plan, 3)
    assert paired[0].max() != paired[1].max()  # each job's maximum is its own (rotated along its own axis)


def _dual_amax_check(x, spec, rhts, order=(1, 0)):
    """One tensor's two pre-passes from one read (the dual pre-pass) against each job's own pre-pass: the same
    global maximum (the only word a quantize kernel reads from the partial maxima)."""
    fmt = OperandFormat.from_spec(spec)
    plans = [kernels_quantize.plan_for(x, axis, fmt, rht, codes=axis == 0, values=axis == 1)
             for axis, rht in zip(order, rhts)]
    keys = [kernels_quantize.rht_key(plan, 3) for plan in plans]
    n = kernels_quantize.AMAX_PROGRAMS
    shape = tuple(x.shape)
    assert prepass.dual_amax_refusal(shape, *plans) is None
    dual = [torch.full((n,), -1, dtype=torch.int32, device=x.device) for _ in plans]
    launches = prepass.amax_launches(plans, [x, x], dual, keys, shape)
    assert len(launches) == 1 and launches[0][0] is prepass._dual_amax_kernel
    for kernel, grid, num_warps, tensors, scalars in launches:
        kernel[grid](**tensors, **scalars, num_warps=num_warps)
    maxima = []
    for plan, key, got in zip(plans, keys, dual):
        want = torch.full((n,), -2, dtype=torch.int32, device=x.device)
        kernel, grid, num_warps, tensors, scalars = kernels_quantize.amax_launch(plan, x, want, key)
        kernel[grid](**tensors, **scalars, num_warps=num_warps)
        assert int(got.min()) >= 0 and int(got.max()) == int(want.max())  # every program wrote its slot
        assert int(got.max()) == _reference_amax_bits(x, plan, 3)
        maxima.append(int(got.max()))
    return maxima


def _reference_amax_bits(x, plan, rht_seed):
    """The reference's global amax (numerics.quantize: max |RHT(x)| over the finite values) as int32 bits."""
    axis, rht = (1 if plan.rowwise else 0), plan.amax_constexprs["RHT"]
    xf = x.float()
    if rht:
        xf = hadamard.rht(xf, axis, rht, rht_seed)
    return int(_finite_amax(xf).view(torch.int32))


@pytest.mark.parametrize("spec, rhts", [("int4/16/e4m3/nearest", (16, 16)), ("e2m1/16/e4m3/stochastic", (0, 16)),
                                        ("int4/16/e4m3/nearest", (16, 0)), ("e2m1/16x16/e4m3/nearest", (0, 0))])
@pytest.mark.parametrize("shape", [(48, 64), (32, 512), (16, 288)])
def test_dual_amax_matches_each_jobs_pre_pass(spec, rhts, shape):
    """A 2-D tensor's row-wise and column-wise pre-passes from one read (each job its own RHT; a last column
    tile past N; two row-wise halves of a tile at 512 columns; the column-wise job first), with NaN, Inf and a
    huge block: each job's global maximum is its own pre-pass's, and the rotations are each job's own."""
    x = torch.randn(shape, device=DEVICE) * 3
    x[0, 5], x[3, 17], x[7, 16:32] = float("nan"), float("-inf"), 1e30
    row, col = _dual_amax_check(x, spec, rhts)
    assert _dual_amax_check(x, spec, rhts[::-1], order=(0, 1)) == [col, row]
    if rhts == (0, 16):
        assert row == int(x.abs().nan_to_num(0, 0, 0).max().view(torch.int32))


@pytest.mark.parametrize("spec, rhts", [("int4/16/e4m3/nearest", (16, 16)), ("e2m1/16/e4m3/nearest", (0, 16))])
def test_two_tensors_dual_pre_passes_in_one_launch(spec, rhts):
    """X's and W's pre-passes before their two-duals launch: one launch, each job's global maximum its own
    pre-pass's; the two-duals launch that reads them gives the single launches' bits."""
    fmt = OperandFormat.from_spec(spec)
    x, w = torch.randn(48, 64, device=DEVICE) * 3, torch.randn(32, 64, device=DEVICE)
    x[2, 9], w[5, 3] = float("inf"), 1e30
    plans = [kernels_quantize.plan_for(t, axis, fmt, rht, codes=axis == 0, values=axis == 1)
             for t in (x, w) for axis, rht in zip((1, 0), rhts)]
    duals = [quantize_pair.pair_launch(*plans[i:i + 2], dual_shape=tuple(t.shape)) for i, t in ((0, x), (2, w))]
    launch = quantize_pair.two_duals_launch(*duals)
    keys = [kernels_quantize.rht_key(plan, 3) for plan in plans]
    n = kernels_quantize.AMAX_PROGRAMS
    partials = [torch.full((n,), -1, dtype=torch.int32, device=DEVICE) for _ in plans]
    launches = prepass.prepass_launches(quantize_pair.one_read_shapes(launch), plans, [x, x, w, w], partials, keys)
    assert [k for k, *_ in launches] == [prepass._two_dual_amax_kernel]
    for kernel, grid, num_warps, tensors, scalars in launches:
        kernel[grid](**tensors, **scalars, num_warps=num_warps)
    for plan, t, key, got in zip(plans, (x, x, w, w), keys, partials):
        want = torch.empty((n,), dtype=torch.int32, device=DEVICE)
        kernel, grid, num_warps, tensors, scalars = kernels_quantize.amax_launch(plan, t, want, key)
        kernel[grid](**tensors, **scalars, num_warps=num_warps)
        assert int(got.min()) >= 0 and int(got.max()) == int(want.max())
    jobs = ((1, 16, torch.bfloat16), (0, 1 << 32, None))
    results = launchers.quantize_two_duals(spec, (x, 3, None, rhts, jobs), (w, 5, None, rhts, jobs))
    singles = [f(t, axis, spec, rht, r, None, offset, *([dtype] if dtype is not None else []))
               for t, r in ((x, 3), (w, 5)) for (axis, offset, dtype), rht in zip(jobs, rhts)
               for f in [kernels_quantize.quantize if dtype is None else kernels_quantize.quantize_dequantize]]
    for got, want in zip(results, singles):
        assert all(torch.equal(_bits(g), _bits(o)) for g, o in zip(got, want))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec, rhts", [("int4/16/e4m3/nearest", (16, 16)), ("e2m1/16/e4m3/stochastic", (0, 16))])
@pytest.mark.parametrize("shape", [(8192, 1024), (8192, 2752), (4096, 5504)])
def test_dual_amax_matches_each_jobs_pre_pass_real_shapes(spec, rhts, shape):
    x = (torch.randn(shape, device="cuda") * 2).to(torch.bfloat16)
    x[4000, 77] = float("inf")
    _dual_amax_check(x, spec, rhts)


def test_dual_amax_refusal_names_the_reason():
    fmt = OperandFormat.from_spec("e2m1/16/e4m3/nearest")

    def plan(shape, axis, rht=16, spec=fmt):
        return kernels_quantize.launch_plan(shape, 2, axis, OperandFormat.from_spec(spec) if isinstance(spec, str)
                                            else spec, rht, axis == 0, axis == 1, False)

    assert prepass.dual_amax_refusal((64, 64), plan((64, 64), 1), plan((64, 64), 0)) is None
    assert "one tensor" in prepass.dual_amax_refusal(None, plan((64, 64), 1), plan((64, 64), 0))
    assert "two-level" in prepass.dual_amax_refusal(
        (64, 64), plan((64, 64), 1, spec="int4/16/fp32/nearest"), plan((64, 64), 0, spec="int4/16/fp32/nearest"))
    assert "row-wise and column-wise" in prepass.dual_amax_refusal((64, 64), plan((64, 64), 1),
                                                                         plan((64, 64), 1))
    assert "whole 16 x 16" in prepass.dual_amax_refusal((64, 72), plan((64, 72), 1), plan((64, 72), 0))
    assert "spans" in prepass.dual_amax_refusal((64, 64), plan((64, 64), 1, 0), plan((64, 64), 0, 32))
