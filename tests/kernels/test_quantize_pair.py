"""Two quantizations in one launch (kernels.quantize_pair) against the reference and the single launches:
identical codes, scales, values and tensor scales.

On CPU the kernels run in Triton's interpreter (tests/conftest.py), so shapes stay tiny; the GPU tests
repeat the comparison at real shapes.
"""

from __future__ import annotations

import pytest
import torch

from ufp4_compile.numerics.formats import OperandFormat
from ufp4_compile.numerics.quantize import quantize as quantize_reference
from ufp4_compile.numerics.quantize import quantize_dequantize as quantize_dequantize_reference

kernels_quantize = pytest.importorskip("ufp4_compile.kernels.quantize")
quantize_pair = pytest.importorskip("ufp4_compile.kernels.quantize_pair")
launchers = pytest.importorskip("ufp4_compile.kernels.quantize_pair_launchers")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _pair_reference(x, spec, rht, seed, job, rht_seed=3):
    axis, offset, dtype = job
    if dtype is None:
        q = quantize_reference(x, axis, spec, rht=rht, rht_seed=rht_seed, seed=seed, offset=offset)
        return q.codes, q.scales, q.tensor_scale
    return quantize_dequantize_reference(x, axis, spec, rht=rht, rht_seed=rht_seed, seed=seed, offset=offset,
                                         dtype=dtype)


def _bits(t):
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.uint8}.get(
        t.dtype, t.dtype))


@pytest.mark.parametrize("spec, rht", [("int4/16/fp32/stochastic", 16), ("int4/16/fp32/nearest", 16),
                                       ("e2m1/16/fp32/nearest", 0), ("e2m1/32/e8m0/stochastic", 16),
                                       ("int4/16/e4m3/stochastic", 16), ("e2m1/16/e4m3/nearest", 0)])
@pytest.mark.parametrize("shape, jobs", [
    ((48, 64), ((1, 16, torch.bfloat16), (0, 1 << 32, None))),  # X in the forward: row values, column codes
    ((40, 96), ((1, 5, torch.bfloat16), (0, 77, torch.bfloat16))),  # dY in the backward; a partial column tile
    ((3, 40, 32), ((1, 9, None), (2, 3, torch.float32))),  # pages column-wise
])
def test_pair_launch_matches_reference(spec, rht, shape, jobs):
    """Two quantizations of one tensor in one launch (the pair kernel where pair_refusal allows; the dual
    kernel for a 2-D tensor's two axes; else two launches: E8M0's and E4M3's row-wise tiles take more warps
    than their column-wise ones): each result is the reference's, bit for bit."""
    x = torch.randn(shape, device=DEVICE) * 3
    seed = torch.tensor(1234, device=DEVICE)
    fmt = OperandFormat.from_spec(spec)
    plans = [kernels_quantize.plan_for(x, axis % x.dim(), fmt, rht, codes=dtype is None, values=dtype is not None)
             for axis, _, dtype in jobs]
    assert (quantize_pair.pair_refusal(*plans) is None) == ("fp32" in spec)
    results = launchers.quantize_pair(x, spec, rht, 3, seed, jobs)
    for job, got in zip(jobs, results):
        want = _pair_reference(x, spec, rht, seed, job)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert torch.equal(_bits(g), _bits(w))


@pytest.mark.parametrize("spec, rht", [("int4/16/fp32/stochastic", 16), ("int4/16/fp32/nearest", 16),
                                       ("e2m1/16/fp32/stochastic", 16), ("e2m1/16/fp32/nearest", 0),
                                       ("int4/16/e4m3/stochastic", 16), ("e2m1/16/e4m3/nearest", 0)])
@pytest.mark.parametrize("shape, jobs", [
    ((48, 64), ((1, 16, torch.bfloat16), (0, 1 << 32, None))),  # X in the forward: row values, column codes
    ((32, 512), ((0, 77, torch.bfloat16), (1, 5, torch.bfloat16))),  # dY: column job first; two row passes
    ((16, 288), ((1, 9, None), (0, 3, torch.float32))),  # a last column tile past N; codes and FP32 values
])
def test_dual_launch_matches_reference(spec, rht, shape, jobs):
    """A 2-D tensor's row-wise and column-wise quantizations from one read (the dual kernel: dual_refusal
    accepts these), with NaN, Inf and a huge block in the input: each result is its single launch's bit for
    bit, and the reference's (NaN for NaN: a NaN's payload is not part of the contract)."""
    x = torch.randn(shape, device=DEVICE) * 3
    x[0, 5], x[3, 17], x[7, 40:56] = float("nan"), float("-inf"), 1e30
    seed = torch.tensor(1234, device=DEVICE)
    fmt = OperandFormat.from_spec(spec)
    plans = [kernels_quantize.plan_for(x, axis % x.dim(), fmt, rht, codes=dtype is None, values=dtype is not None)
             for axis, _, dtype in jobs]
    assert quantize_pair.dual_refusal(tuple(x.shape), *plans) is None
    assert quantize_pair.pair_launch(*plans, dual_shape=tuple(x.shape)).kernel is quantize_pair._quantize_dual_kernel
    results = launchers.quantize_pair(x, spec, rht, 3, seed, jobs)
    for (axis, offset, dtype), got in zip(jobs, results):
        single = (kernels_quantize.quantize(x, axis, spec, rht, 3, seed, offset) if dtype is None else
                  kernels_quantize.quantize_dequantize(x, axis, spec, rht, 3, seed, offset, dtype))
        want = _pair_reference(x, spec, rht, seed, (axis, offset, dtype))
        assert len(got) == len(want) == len(single)
        for g, o, w in zip(got, single, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert torch.equal(_bits(g), _bits(o))
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("config", [{"cols": 4, "B": 128, "num_warps": 1}, {"cols": 1, "B": 32, "num_warps": 1}])
def test_dual_launch_tile_changes_no_bit(config):
    """The dual launch at another tile than its own (``config``: the sweep's): the same bits as the single
    launches at their default tiles."""
    x = torch.randn(32, 128, device=DEVICE) * 3
    seed = torch.tensor(99, device=DEVICE)
    jobs = ((1, 16, torch.bfloat16), (0, 9, None))
    for spec in ("int4/16/fp32/stochastic", "e2m1/16/fp32/nearest"):
        plans = [kernels_quantize.plan_for(x, axis, OperandFormat.from_spec(spec), 16, codes=dtype is None,
                                           values=dtype is not None, config=config) for axis, _, dtype in jobs]
        launch = quantize_pair.pair_launch(*plans, dual_shape=tuple(x.shape), tile=config)
        assert launch.kernel is quantize_pair._quantize_dual_kernel
        assert (launch.constexprs["COLS"], launch.constexprs["B"], launch.num_warps) == (
            config["cols"], config["B"], config["num_warps"])
        assert launch.grid == (128 // config["B"], 2, 1)
        results = launchers.quantize_pair(x, spec, 16, 3, seed, jobs, config=config)
        singles = [kernels_quantize.quantize_dequantize(x, 1, spec, 16, 3, seed, 16)[:1],
                   kernels_quantize.quantize(x, 0, spec, 16, 3, seed, 9)[:2]]
        for got, want in zip(results, singles):
            for g, w in zip(got, want):
                assert torch.equal(_bits(g), _bits(w))


@pytest.mark.parametrize("spec, want", [("int4/16/fp32/stochastic", (64, 1, 2)), ("e2m1/16/e4m3/nearest", (128, 2, 2)),
                                        ("int4/16/e4m3/stochastic", (128, 2, 2)), ("e2m1/32/e8m0/nearest", (32, 1, 2))])
def test_dual_tile_by_format(spec, want):
    """The dual launch's own tile per format (quantize_pair.dual_tile, from the H200 sweeps): columns, warps
    and columns per thread; two-level scales at 128 columns over two warps, MXFP4's span of 32 at 32 columns."""
    x = torch.zeros(512, 512)
    plans = [kernels_quantize.plan_for(x, axis, OperandFormat.from_spec(spec), 16, codes=axis == 0, values=axis == 1)
             for axis in (1, 0)]
    launch = quantize_pair.pair_launch(*plans, dual_shape=tuple(x.shape))
    assert (launch.constexprs["B"], launch.num_warps, launch.constexprs["COLS"]) == want
    assert launch.grid == (512 // want[0], 512 // plans[0].constexprs["U"], 1)


def test_dual_refusal_names_the_reason():
    plan = lambda shape, spec, axis, rht=16: kernels_quantize.plan_for(
        torch.empty(shape), axis, OperandFormat.from_spec(spec), rht, codes=True, values=False)
    ok = "int4/16/fp32/nearest"
    assert quantize_pair.dual_refusal((64, 64), plan((64, 64), ok, 1), plan((64, 64), ok, 0)) is None
    assert "2-D" in quantize_pair.dual_refusal((64, 64), plan((64, 64), ok, 1), plan((64, 64), ok, 1))
    assert "2-D" in quantize_pair.dual_refusal((2, 64, 64), plan((2, 64, 64), ok, 2), plan((2, 64, 64), ok, 1))
    assert "16 x 16 tiles" in quantize_pair.dual_refusal((40, 64), plan((40, 64), ok, 1), plan((40, 64), ok, 0))
    # a span of 32 (RHT-32 groups here, MXFP4's blocks below) for both jobs: whole 32 x 32 tiles
    assert quantize_pair.dual_refusal((64, 64), plan((64, 64), ok, 1, 32), plan((64, 64), ok, 0, 32)) is None
    assert "32 x 32 tiles" in quantize_pair.dual_refusal((48, 64), plan((48, 64), ok, 1, 32),
                                                            plan((48, 64), ok, 0, 32))
    assert "spanning 32 and 16" in quantize_pair.dual_refusal((64, 64), plan((64, 64), ok, 1, 32),
                                                                 plan((64, 64), ok, 0, 16))
    assert "spanning 64" in quantize_pair.dual_refusal((64, 64), plan((64, 64), ok, 1, 64), plan((64, 64), ok, 0, 64))
    mx = "e2m1/32/e8m0/nearest"
    assert quantize_pair.dual_refusal((64, 96), plan((64, 96), mx, 1, 0), plan((64, 96), mx, 0, 16)) is None
    # two-level scales: each job its own global-amax pre-pass; the dual kernel's own tile takes any warp count
    assert quantize_pair.dual_refusal((64, 64), plan((64, 64), "e2m1/16/e4m3/nearest", 1),
                                      plan((64, 64), "e2m1/16/e4m3/nearest", 0)) is None
    assert "16 x 16 blocks" in quantize_pair.dual_refusal((64, 64), plan((64, 64), "e2m1/16x16/e4m3/nearest", 1, 0),
                                                          plan((64, 64), "e2m1/16x16/e4m3/nearest", 0, 0))


@pytest.mark.parametrize("spec, rht", [("int4/16/fp32/stochastic", 16), ("int4/16/fp32/nearest", 16),
                                       ("e2m1/16/fp32/nearest", 0), ("e2m1/16/e4m3/stochastic", 16)])
@pytest.mark.parametrize("shapes, jobs", [
    (((48, 64), (32, 64)), ((1, 16, torch.bfloat16), (1, 3, torch.bfloat16))),  # X's and W's row-wise values
    (((48, 64), (40, 96)), ((0, 1 << 32, None), (0, 7, None))),  # their column-wise codes; a partial tile
    (((2, 40, 32), (64, 32)), ((1, 9, None), (1, 5, torch.float32))),  # pages column-wise beside a row-wise job
])
def test_pair_launch_of_two_tensors_matches_reference(spec, rht, shapes, jobs):
    """Two tensors quantized in one launch, each with its own RHT seed and seed (the pairing of X's and W's
    row-wise quantizations for Fprop): each result is its single reference's, bit for bit."""
    x, w = (torch.randn(shape, device=DEVICE) * 3 for shape in shapes)
    seeds = torch.tensor(1234, device=DEVICE), torch.tensor(77, device=DEVICE)
    results = launchers.quantize_pair(x, spec, rht, 3, seeds[0], jobs, other=(w, 5, seeds[1]))
    for t, rht_seed, seed, job, got in zip((x, w), (3, 5), seeds, jobs, results):
        want = _pair_reference(t, spec, rht, seed, job, rht_seed)
        assert len(got) == len(want)
        for g, w_ in zip(got, want):
            assert g.dtype == w_.dtype and g.shape == w_.shape
            assert torch.equal(_bits(g), _bits(w_))


@pytest.mark.parametrize("jobs", [((1, 16, torch.bfloat16), (1, 3, torch.bfloat16)), ((0, 0, None), (0, 7, None))])
def test_pair_launch_of_two_weights_in_16x16_blocks(jobs):
    """nvfp4's weights (16 x 16 blocks, E4M3 scales) pair with each other along one axis, each with its own
    global-amax pre-pass (in one launch): each result is its single reference's, bit for bit."""
    spec = "e2m1/16x16/e4m3/nearest"
    w1, w2 = torch.randn(48, 64, device=DEVICE) * 3, torch.randn(32, 80, device=DEVICE)
    w2[3, 4] = 1e4
    results = launchers.quantize_pair(w1, spec, 0, 3, None, jobs, other=(w2, 5, None))
    for t, job, got in zip((w1, w2), jobs, results):
        for g, w_ in zip(got, _pair_reference(t, spec, 0, None, job)):
            assert g.dtype == w_.dtype and g.shape == w_.shape
            assert torch.equal(_bits(g), _bits(w_))


@pytest.mark.parametrize("spec", ["e2m1/16/fp32/stochastic", "e2m1/32/e8m0/nearest", "int4/16/fp32/nearest",
                                  "e2m1/16/e4m3/nearest"])
@pytest.mark.parametrize("shape, jobs, other_shape", [
    ((32, 64), ((1, 5, torch.bfloat16), (0, 77, torch.bfloat16)), None),  # e2m1-ref's dY: Dgrad unrotated, Wgrad RHT
    ((32, 64), ((0, 16, None), (0, 3, None)), (48, 64)),  # X's Wgrad codes (RHT) beside W's Dgrad codes (none)
])
def test_jobs_with_their_own_rht(spec, shape, jobs, other_shape):
    """Each job of a pair or dual launch has its own RHT size (0 and 16: e2m1-ref rotates only Wgrad's
    operands): each result is its single launch's bit for bit and the reference's."""
    x = torch.randn(shape, device=DEVICE) * 3
    w = torch.randn(other_shape, device=DEVICE) if other_shape else None
    seeds = torch.tensor(1234, device=DEVICE), torch.tensor(77, device=DEVICE)
    other = (w, 5, seeds[1]) if w is not None else None
    rhts = (0, 16) if w is None else (16, 0)
    inputs = [(x, 3, seeds[0]), (w, 5, seeds[1]) if w is not None else (x, 3, seeds[0])]
    fmt = OperandFormat.from_spec(spec)
    plans = [kernels_quantize.plan_for(t, axis, fmt, rht, codes=dtype is None, values=dtype is not None)
             for (t, _, _), rht, (axis, _, dtype) in zip(inputs, rhts, jobs)]
    # one launch, or two where E8M0's (and E4M3's) row-wise and column-wise tiles take different warp counts
    # (E4M3's dual launch takes one tensor's two at its own tile)
    assert (quantize_pair.pair_refusal(*plans) is None) == ("fp32" in spec or jobs[0][0] == jobs[1][0])
    results = launchers.quantize_pair(x, spec, rhts, 3, seeds[0], jobs, other=other)
    for (t, rht_seed, seed), rht, (axis, offset, dtype), got in zip(inputs, rhts, jobs, results):
        single = (kernels_quantize.quantize(t, axis, spec, rht, rht_seed, seed, offset) if dtype is None else
                  kernels_quantize.quantize_dequantize(t, axis, spec, rht, rht_seed, seed, offset, dtype))
        want = _pair_reference(t, spec, rht, seed, (axis, offset, dtype), rht_seed)
        for g, o, r in zip(got, single, want):
            assert g.dtype == r.dtype and g.shape == r.shape
            assert torch.equal(_bits(g), _bits(o)) and torch.equal(_bits(g), _bits(r))


def test_pair_refusal_names_the_reason():
    x = torch.randn(64, 64)
    plan = lambda spec, axis: kernels_quantize.plan_for(x, axis, OperandFormat.from_spec(spec), 16, codes=True,
                                                        values=False)
    assert quantize_pair.pair_refusal(plan("e2m1/16/e4m3/nearest", 1), plan("e2m1/16/e4m3/nearest", 1)) is None
    assert "warps" in quantize_pair.pair_refusal(plan("e2m1/16/e4m3/nearest", 1), plan("e2m1/16/e4m3/nearest", 0))
    assert "warps" in quantize_pair.pair_refusal(plan("e2m1/32/e8m0/nearest", 1), plan("e2m1/32/e8m0/nearest", 0))
    assert "STOCHASTIC" in quantize_pair.pair_refusal(plan("int4/16/fp32/nearest", 1),
                                                      plan("int4/16/fp32/stochastic", 0))
    # several tiles a program (a benchmark config): only the single launch loops over them
    looping = kernels_quantize.plan_for(x, 1, OperandFormat.from_spec("int4/16/fp32/nearest"), 16, codes=True,
                                        values=False, config={"tiles": 2})
    assert "tiles" in quantize_pair.pair_refusal(looping, plan("int4/16/fp32/nearest", 1))
    assert "tiles" in quantize_pair.dual_refusal((64, 64), looping, plan("int4/16/fp32/nearest", 0))
    with pytest.raises(ValueError, match="rht"):
        launchers.quantize_pair(x, "int4/16/fp32/nearest", (16, 16, 0), 3, None, [(1, 0, None), (0, 0, None)])
    with pytest.raises(ValueError, match="jobs"):
        launchers.quantize_pair(x, "int4/16/fp32/nearest", 16, 3, None, [(1, 0, None)])
    with pytest.raises(ValueError, match="dtype"):
        launchers.quantize_pair(x, "int4/16/fp32/nearest", 16, 3, None, [(1, 0, None), (0, 0, torch.int8)])
    with pytest.raises(ValueError, match="other"):
        launchers.quantize_pair(x, "int4/16/fp32/nearest", 16, 3, None, [(1, 0, None), (0, 0, None)], other=x)


@pytest.mark.parametrize("spec, rhts", [("int4/16/fp32/nearest", (16, 16)), ("int4/16/fp32/stochastic", (16, 16)),
                                        ("e2m1/16/fp32/nearest", (0, 16)), ("e2m1/16/e4m3/nearest", (0, 16)),
                                        ("int4/16/e4m3/stochastic", (16, 16))])
def test_two_duals_in_one_launch_match_single_launches(spec, rhts):
    """X's and W's two quantizations each (row-wise values and column-wise codes for X; W's jobs in the other
    order, each job its own RHT) in one launch of the two-duals kernel, with NaN, Inf and a huge block in X:
    each result is its single launch's bit for bit (NaN for NaN). Both 128 columns or wider, so that each
    format's dual tile (up to 128 columns) is as wide for both, as one launch needs."""
    fmt = OperandFormat.from_spec(spec)
    x, w = torch.randn(48, 192, device=DEVICE) * 3, torch.randn(32, 128, device=DEVICE)
    x[0, 5], x[3, 17], x[7, 40:56] = float("nan"), float("-inf"), 1e30
    seeds = torch.tensor(1234, device=DEVICE), torch.tensor(77, device=DEVICE)
    x_jobs, w_jobs = ((1, 16, torch.bfloat16), (0, 1 << 32, None)), ((0, 7, None), (1, 3, torch.bfloat16))
    first, second = (x, 3, seeds[0], rhts, x_jobs), (w, 5, seeds[1], rhts[::-1], w_jobs)
    duals = []
    for t, _, _, rr, jobs in (first, second):
        plans = [kernels_quantize.plan_for(t, axis, fmt, r, codes=dtype is None, values=dtype is not None)
                 for (axis, _, dtype), r in zip(jobs, rr)]
        duals.append(quantize_pair.pair_launch(*plans, dual_shape=tuple(t.shape)))
    assert quantize_pair.two_duals_refusal(*duals) is None
    launch = quantize_pair.two_duals_launch(*duals)
    assert launch.kernel is quantize_pair._quantize_two_duals_kernel and launch.prefixes == "abdc"
    results = launchers.quantize_two_duals(spec, first, second)
    singles = [kernels_quantize.quantize(t, axis, spec, r, rs, s, offset) if dtype is None else
               kernels_quantize.quantize_dequantize(t, axis, spec, r, rs, s, offset, dtype)
               for t, rs, s, rr, jobs in (first, second) for (axis, offset, dtype), r in zip(jobs, rr)]
    assert len(results) == len(singles) == 4
    for got, want in zip(results, singles):
        for g, w_ in zip(got, want):
            assert g.dtype == w_.dtype and g.shape == w_.shape
            torch.testing.assert_close(g, w_, rtol=0, atol=0, equal_nan=True)
            assert torch.equal(_bits(g), _bits(w_)) or g.is_floating_point()


@pytest.mark.parametrize("spec, rhts", [("e2m1/32/e8m0/stochastic", (16, 16)), ("e2m1/32/e8m0/nearest", (0, 16))])
def test_dual_launches_at_a_span_of_32_match_single_launches(spec, rhts, monkeypatch):
    """MXFP4's blocks of 32: a program of the dual, two-duals and dual-dequantize launches holds 32 rows of the
    tensor. With NaN, Inf and a huge block in the input, each result is its single launch's bit for bit (NaN
    for NaN), and the reference's."""
    from ufp4_compile.kernels.dequantize import dequantize

    fmt = OperandFormat.from_spec(spec)
    seed = torch.tensor(1234, device=DEVICE)
    x, w = torch.randn(64, 96, device=DEVICE) * 3, torch.randn(32, 288, device=DEVICE)
    x[0, 5], x[3, 17], x[7, 32:64] = float("nan"), float("-inf"), 1e30
    x_jobs, w_jobs = ((1, 16, torch.bfloat16), (0, 1 << 32, None)), ((0, 7, None), (1, 3, torch.bfloat16))
    launches = []
    for t, jobs, rr in ((x, x_jobs, rhts), (w, w_jobs, rhts[::-1])):
        plans = [kernels_quantize.plan_for(t, axis, fmt, r, codes=dtype is None, values=dtype is not None)
                 for (axis, _, dtype), r in zip(jobs, rr)]
        assert quantize_pair.dual_refusal(tuple(t.shape), *plans) is None
        launches.append(quantize_pair.pair_launch(*plans, dual_shape=tuple(t.shape)))
        assert launches[-1].constexprs["U"] == 32 and launches[-1].grid[1] == t.shape[0] // 32
        assert (launches[-1].constexprs["B"], launches[-1].constexprs["COLS"]) == (32, 2)  # 32 columns, 2 each
    assert quantize_pair.two_duals_refusal(*launches) is None
    first, second = (x, 3, seed, rhts, x_jobs), (w, 5, seed, rhts[::-1], w_jobs)
    results = launchers.quantize_two_duals(spec, first, second)
    singles = [kernels_quantize.quantize(t, axis, spec, r, rs, s, offset) if dtype is None else
               kernels_quantize.quantize_dequantize(t, axis, spec, r, rs, s, offset, dtype)
               for t, rs, s, rr, jobs in (first, second) for (axis, offset, dtype), r in zip(jobs, rr)]
    for i, (got, want) in enumerate(zip(results, singles)):
        t, rs, _, rr, jobs = (first, first, second, second)[i]
        reference = _pair_reference(t, spec, rr[i % 2], seed, jobs[i % 2], rht_seed=rs)
        for g, w_, r in zip(got, want, reference):
            assert g.dtype == w_.dtype == r.dtype and g.shape == w_.shape == r.shape
            torch.testing.assert_close(g, w_, rtol=0, atol=0, equal_nan=True)
            torch.testing.assert_close(g, r, rtol=0, atol=0, equal_nan=True)
    # dY's dual with the dequantizations of two saved column-wise codes (a linear layer's backward)
    dy_jobs = ((0, 1 << 33, torch.bfloat16), (1, 16, torch.bfloat16))
    saved = [(*kernels_quantize.quantize(t, 0, spec.replace("stochastic", "nearest"), 16, rs, None, 0), 0,
              spec.replace("stochastic", "nearest"), torch.bfloat16) for t, rs in ((w.T.contiguous(), 5), (x, 7))]
    taken = []  # the launches the call made: one of the dual-dequantize kernel, not a fallback
    monkeypatch.setattr(launchers, "dual_dequantize_launch",
                        lambda *a, f=launchers.dual_dequantize_launch: taken.append(f(*a)) or taken[-1])
    results = launchers.quantize_dual_dequantize(x, spec, rhts, 3, seed, dy_jobs, saved)
    assert len(results) == 4 and [launch.constexprs["U"] for launch in taken] == [32]
    for (axis, offset, dtype), r, got in zip(dy_jobs, rhts, results[:2]):
        want = kernels_quantize.quantize_dequantize(x, axis, spec, r, 3, seed, offset, dtype)
        for g, w_ in zip(got, want):
            torch.testing.assert_close(g, w_, rtol=0, atol=0, equal_nan=True)
    for got, job in zip(results[2:], saved):
        assert torch.equal(_bits(got), _bits(dequantize(*job)))


def test_two_duals_refusal_names_the_reason():
    """Two duals share a launch only at one format and one tile; a refused pair runs as two dual launches."""
    plan = lambda t, axis, spec: kernels_quantize.plan_for(t, axis, OperandFormat.from_spec(spec), 16, codes=axis == 0,
                                                           values=axis == 1)
    x, narrow = torch.randn(64, 128), torch.randn(64, 32)
    dual = lambda t, spec: quantize_pair.pair_launch(plan(t, 1, spec), plan(t, 0, spec), dual_shape=tuple(t.shape))
    ok = "int4/16/fp32/nearest"
    assert quantize_pair.two_duals_refusal(dual(x, ok), dual(x, ok)) is None
    assert "STOCHASTIC" in quantize_pair.two_duals_refusal(dual(x, ok), dual(x, "int4/16/fp32/stochastic"))
    assert "B" in quantize_pair.two_duals_refusal(dual(x, ok), dual(narrow, ok))  # a 32-column tile
    pair = quantize_pair.pair_launch(plan(x, 1, ok), plan(x, 1, ok))
    assert "not two dual launches" in quantize_pair.two_duals_refusal(dual(x, ok), pair)
    results = launchers.quantize_two_duals(ok, (x, 3, None, (16, 16), ((1, 0, torch.bfloat16), (0, 0, None))),
                                               (narrow, 4, None, (16, 16), ((1, 0, torch.bfloat16), (0, 0, None))))
    for got, (t, rs) in zip(results[::2], ((x, 3), (narrow, 4))):
        assert torch.equal(got[0], kernels_quantize.quantize_dequantize(t, 1, ok, 16, rs, None, 0)[0])


def _dual_shared_singles(spec, wspec, first, second):
    """The single launches' results of quantize_dual_shared's four jobs."""
    (x, rs, seed, rhts, jobs), (w, _, w_rs, w_jobs) = first, second
    singles = [kernels_quantize.quantize(x, axis, spec, r, rs, seed, offset) if dtype is None else
               kernels_quantize.quantize_dequantize(x, axis, spec, r, rs, seed, offset, dtype)
               for (axis, offset, dtype), r in zip(jobs, rhts)]
    return singles + [kernels_quantize.quantize(w, axis, wspec, 0, w_rs, None, offset) if dtype is None else
                      kernels_quantize.quantize_dequantize(w, axis, wspec, 0, w_rs, None, offset, dtype)
                      for axis, offset, dtype in w_jobs]


@pytest.mark.parametrize("w_jobs", [((1, 3, torch.bfloat16), (0, 7, None)), ((0, 7, None), (1, 3, torch.float32))])
def test_dual_and_shared_values_in_one_launch_match_single_launches(w_jobs, monkeypatch):
    """NVFP4's linear forward: X's row-wise values and column-wise codes (1 x 16 blocks, RHT on the column-wise
    job) and W's one launch of its codes and values (16 x 16 blocks) as one launch of the dual-single kernel,
    after one pre-pass launch for the three jobs, with NaN, Inf and huge values in both: each result is its single
    launch's bit for bit (NaN for NaN)."""
    from ufp4_compile.kernels import prepass

    spec, wspec = "e2m1/16/e4m3/nearest", "e2m1/16x16/e4m3/nearest"
    x, w = torch.randn(32, 64, device=DEVICE) * 3, torch.randn(48, 32, device=DEVICE)
    x[0, 5], x[3, 17], x[7, 40:56] = float("nan"), float("-inf"), 1e30
    w[3, 5], w[20, 9] = 1e30, float("nan")
    first = (x, 3, None, (0, 16), ((1, 16, torch.bfloat16), (0, 1 << 32, None)))
    second = (w, wspec, 5, w_jobs)
    taken, prepasses = [], []
    monkeypatch.setattr(launchers, "dual_single_launch",
                        lambda *a, f=launchers.dual_single_launch: taken.append(f(*a)) or taken[-1])
    monkeypatch.setattr(launchers, "prepass_launches",
                        lambda *a, f=launchers.prepass_launches: prepasses.extend(f(*a)) or prepasses)
    results = launchers.quantize_dual_shared(spec, first, second)
    assert [launch.kernel for launch in taken] == [quantize_pair._quantize_dual_single_kernel]
    assert [launch[0] for launch in prepasses] == [prepass._dual_single_amax_kernel]
    singles = _dual_shared_singles(spec, wspec, first, second)
    assert len(results) == len(singles) == 4
    for got, want in zip(results, singles):
        assert len(got) == len(want)
        for g, w_ in zip(got, want):
            assert g.dtype == w_.dtype and g.shape == w_.shape
            torch.testing.assert_close(g, w_, rtol=0, atol=0, equal_nan=True)


def test_dual_single_refusal_names_the_reason():
    """A dual launch takes a second tensor's single launch at one format but for the blocks' shape, without a
    shift; a refused pair (another scale format) runs as the two launches, with their single launches' bits."""
    spec, wspec = "e2m1/16/e4m3/nearest", "e2m1/16x16/e4m3/nearest"
    fmt = OperandFormat.from_spec(spec)
    x, w = torch.randn(32, 64), torch.randn(32, 32)
    plans = [kernels_quantize.plan_for(x, 1, fmt, 0, codes=False, values=True),
             kernels_quantize.plan_for(x, 0, fmt, 16, codes=True, values=False)]
    dual = quantize_pair.pair_launch(*plans, dual_shape=(32, 64))
    single = lambda s: kernels_quantize.plan_for(w, 0, OperandFormat.from_spec(s), 0, codes=True, values=True)
    assert quantize_pair.dual_single_refusal(dual, single(wspec)) is None
    assert "SCALE" in quantize_pair.dual_single_refusal(dual, single("e2m1/16x16/fp32/nearest"))
    pair = quantize_pair.pair_launch(plans[0], plans[0])
    assert "not a dual launch" in quantize_pair.dual_single_refusal(pair, single(wspec))
    shifted = kernels_quantize.plan_for(w, 1, OperandFormat.from_spec("e2m1/16/fp32/nearest"), 0, codes=True,
                                        values=False, shift=True)
    one_level = [kernels_quantize.plan_for(x, a, OperandFormat.from_spec("e2m1/16/fp32/nearest"), 0,
                                           codes=a == 0, values=a == 1) for a in (1, 0)]
    assert "shift" in quantize_pair.dual_single_refusal(quantize_pair.pair_launch(*one_level, dual_shape=(32, 64)),
                                                        shifted)
    first = (x, 3, None, (0, 16), ((1, 16, torch.bfloat16), (0, 1 << 32, None)))
    second = (w, "e2m1/16x16/fp32/nearest", 5, ((1, 3, torch.bfloat16), (0, 7, None)))
    for got, want in zip(launchers.quantize_dual_shared(spec, first, second),
                         _dual_shared_singles(spec, "e2m1/16x16/fp32/nearest", first, second)):
        assert all(torch.equal(_bits(g), _bits(w_)) or g.is_floating_point() and torch.equal(g, w_)
                   for g, w_ in zip(got, want))


def _saved_codes(t, axis, spec, rht_seed):
    """Codes, scales and tensor scale of ``t`` along ``axis`` as the forward saves them for the backward (round to
    nearest: the forward's format)."""
    return kernels_quantize.quantize(t, axis, spec.replace("stochastic", "nearest"), 16, rht_seed, None, 0)


@pytest.mark.parametrize("spec, rhts", [("int4/16/fp32/stochastic", (16, 16)), ("e2m1/16/fp32/stochastic", (0, 16)),
                                        ("int4/16/e4m3/stochastic", (16, 16)), ("e2m1/16/e4m3/nearest", (0, 16))])
def test_dual_and_two_dequantizations_in_one_launch_match_single_launches(spec, rhts):
    """A linear layer's backward in one launch: dY's column-wise and row-wise values (each its own RHT, with
    NaN, Inf and a huge block in dY) and the dequantizations of W's and X's saved column-wise codes (X's with
    a NaN): each result is its single launch's bit for bit (NaN for NaN)."""
    fmt = OperandFormat.from_spec(spec)
    dy = torch.randn(48, 64, device=DEVICE) * 3
    dy[0, 5], dy[3, 17], dy[7, 40:56] = float("nan"), float("-inf"), 1e30
    w, x = torch.randn(64, 32, device=DEVICE) * 0.1, torch.randn(48, 32, device=DEVICE)
    x[2, 3] = float("nan")
    seed = torch.tensor(1234, device=DEVICE)
    jobs = ((0, 1 << 32, torch.bfloat16), (1, 16, torch.bfloat16))
    saved = [(*_saved_codes(t, 0, spec, rs), 0, spec.replace("stochastic", "nearest"), torch.bfloat16)
             for t, rs in ((w, 5), (x, 7))]
    plans = [kernels_quantize.plan_for(dy, axis, fmt, r, codes=False, values=True) for (axis, _, _), r in zip(jobs, rhts)]
    dual = quantize_pair.pair_launch(*plans, dual_shape=tuple(dy.shape))
    assert dual.prefixes == "ba"  # the first job is the column-wise one
    results = launchers.quantize_dual_dequantize(dy, spec, rhts, 3, seed, jobs, saved)
    assert len(results) == 4
    singles = [kernels_quantize.quantize_dequantize(dy, axis, spec, r, 3, seed, offset, dtype)
               for (axis, offset, dtype), r in zip(jobs, rhts)]
    for got, want in zip(results[:2], singles):
        for g, w_ in zip(got, want):
            assert g.dtype == w_.dtype and g.shape == w_.shape and torch.equal(_bits(g), _bits(w_))
    from ufp4_compile.kernels.dequantize import dequantize

    for got, job in zip(results[2:], saved):
        want = dequantize(*job)
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(_bits(got), _bits(want))
    assert torch.isnan(results[3]).any()


def test_dual_dequantize_refusal_names_the_reason():
    """Only a dual launch takes the two dequantizations, at tiles of the dual launch's size; refused, the
    same results come from the dual and the dequantize pair launches."""
    from ufp4_compile.kernels import dequantize as dq

    spec = "int4/16/fp32/nearest"
    fmt = OperandFormat.from_spec(spec)
    x = torch.randn(64, 128)
    plans = [kernels_quantize.plan_for(x, axis, fmt, 16, codes=False, values=True) for axis in (1, 0)]
    dual, pair = quantize_pair.pair_launch(*plans, dual_shape=(64, 128)), quantize_pair.pair_launch(*plans)
    deq = lambda elements: dq.launch_plan((1, 64, 64), (0, 64, 1), (0, 8, 1), True, fmt, True, elements)
    fits = quantize_pair.dual_dequantize_elements(dual)
    assert quantize_pair.dual_dequantize_refusal(dual, [deq(fits)] * 2) is None
    assert "not a dual launch" in quantize_pair.dual_dequantize_refusal(pair, [deq(fits)] * 2)
    assert "two" in quantize_pair.dual_dequantize_refusal(dual, [deq(fits)])
    assert "more than" in quantize_pair.dual_dequantize_refusal(dual, [deq(4096)] * 2)
    with pytest.raises(ValueError, match="two"):
        launchers.quantize_dual_dequantize(x, spec, (16, 16), 3, None, ((1, 0, None), (0, 0, None)), [])
    narrow = torch.randn(40, 24)  # not whole 16 x 16 tiles: no dual launch
    saved = [(*_saved_codes(torch.randn(32, 16), 0, spec, 5), 0, spec, torch.float32)] * 2
    results = launchers.quantize_dual_dequantize(narrow, spec, (16, 16), 3, None,
                                                     ((1, 0, torch.bfloat16), (0, 0, None)), saved)
    assert torch.equal(results[0][0], kernels_quantize.quantize_dequantize(narrow, 1, spec, 16, 3, None, 0)[0])
    assert torch.equal(results[2], dq.dequantize(*saved[0]))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["int4/16/fp32/stochastic", "e2m1/16/fp32/stochastic", "int4/16/fp32/nearest",
                                  "e2m1/16/e4m3/stochastic", "int4/16/e4m3/stochastic", "e2m1/32/e8m0/stochastic"])
@pytest.mark.parametrize("shape", [(8192, 1024), (8192, 3072), (4096, 2816)])
def test_dual_launch_matches_reference_real_shapes(spec, shape):
    """dY's two quantizations at the training step's shapes (and a width that is not a multiple of the
    column tile) from one read: the reference's bits, and the pair kernel's (dual off)."""
    x = (torch.randn(shape, device="cuda") * 2).to(torch.bfloat16)
    seed = torch.tensor(99, device="cuda")
    jobs = ((0, 1 << 33, torch.bfloat16), (1, 123456, torch.bfloat16))
    dual = launchers.quantize_pair(x, spec, 16, 3, seed, jobs)
    pair = launchers.quantize_pair(x, spec, 16, 3, seed, jobs, dual=False)
    for job, got, other in zip(jobs, dual, pair):
        for g, o, w in zip(got, other, _pair_reference(x, spec, 16, seed, job)):
            assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(_bits(g), _bits(w))
            assert torch.equal(_bits(g), _bits(o))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["int4/16/fp32/nearest", "e2m1/16/fp32/nearest", "e2m1/16/e4m3/nearest",
                                  "int4/16/e4m3/nearest", "e2m1/32/e8m0/nearest"])
def test_two_duals_match_reference_real_shapes(spec):
    """X's and W's two quantizations each at the step's shapes (X 8192 x 1024, W 3072 x 1024 and 1024 x 2816)
    in one launch: the reference's bits."""
    seed, w_seed = torch.tensor(99, device="cuda"), torch.tensor(5, device="cuda")
    jobs = ((1, 123456, torch.bfloat16), (0, 1 << 40, None))
    rhts = (0, 16) if spec.startswith("e2m1/16/e4m3") else (16, 16)
    for w_shape in ((3072, 1024), (1024, 2816)):
        x = (torch.randn(8192, w_shape[1], device="cuda") * 2).to(torch.bfloat16)
        w = (torch.randn(w_shape, device="cuda") * 0.02).to(torch.bfloat16)
        results = launchers.quantize_two_duals(spec, (x, 3, seed, rhts, jobs), (w, 4, w_seed, rhts, jobs))
        for (t, rs, s), (job, rht), got in zip([(x, 3, seed)] * 2 + [(w, 4, w_seed)] * 2, list(zip(jobs, rhts)) * 2,
                                               results):
            axis, offset, dtype = job
            want = (quantize_reference(t, axis, spec, rht=rht, rht_seed=rs, seed=s, offset=offset)
                    if dtype is None else None)
            want = ((want.codes, want.scales, want.tensor_scale) if want is not None else
                    quantize_dequantize_reference(t, axis, spec, rht=rht, rht_seed=rs, seed=s, offset=offset,
                                                  dtype=dtype))
            for g, w_ in zip(got, want):
                assert g.dtype == w_.dtype and g.shape == w_.shape and torch.equal(_bits(g), _bits(w_))


@gpu
@pytest.mark.gpu
def test_dual_shared_matches_reference_real_shapes():
    """NVFP4's linear forward at the step's shapes (X 8192 x 1024 and 8192 x 2816, W 3072 x 1024 and 1024 x
    2816) in one launch: the reference's bits for X's two and W's two."""
    spec, wspec = "e2m1/16/e4m3/nearest", "e2m1/16x16/e4m3/nearest"
    jobs, w_jobs = ((1, 123456, torch.bfloat16), (0, 1 << 40, None)), ((1, 0, torch.bfloat16), (0, 1 << 33, None))
    for w_shape in ((3072, 1024), (1024, 2816)):
        x = (torch.randn(8192, w_shape[1], device="cuda") * 2).to(torch.bfloat16)
        w = (torch.randn(w_shape, device="cuda") * 0.02).to(torch.bfloat16)
        results = launchers.quantize_dual_shared(spec, (x, 3, None, (0, 16), jobs), (w, wspec, 4, w_jobs))
        wants = [_pair_reference(x, spec, rht, None, job) for job, rht in zip(jobs, (0, 16))]
        wants += [_pair_reference(w, wspec, 0, None, job, rht_seed=4) for job in w_jobs]
        for got, want in zip(results, wants):
            for g, w_ in zip(got, want):
                assert g.dtype == w_.dtype and g.shape == w_.shape and torch.equal(_bits(g), _bits(w_))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["int4/16/fp32/stochastic", "e2m1/16/fp32/stochastic", "e2m1/16/e4m3/stochastic",
                                  "int4/16/e4m3/stochastic", "e2m1/32/e8m0/stochastic"])
def test_dual_dequantize_matches_reference_real_shapes(spec):
    """A linear layer's backward at the step's shapes (dY 8192 x 3072 and 8192 x 1024; W 3072 x 1024, X 8192 x
    1024 saved column-wise) in one launch: the reference's bits for dY's two, and each dequantization
    equal to its own launch."""
    from ufp4_compile.kernels.dequantize import dequantize

    seed = torch.tensor(99, device="cuda")
    jobs = ((0, 1 << 33, torch.bfloat16), (1, 123456, torch.bfloat16))
    rhts = (16, 0) if spec.startswith("e2m1") else (16, 16)
    x = (torch.randn(8192, 1024, device="cuda") * 2).to(torch.bfloat16)
    for n in (3072, 1024):
        dy = (torch.randn(8192, n, device="cuda") * 1e-3).to(torch.bfloat16)
        w = (torch.randn(n, 1024, device="cuda") * 0.02).to(torch.bfloat16)
        fwd = spec.replace("stochastic", "nearest")
        saved = [(*kernels_quantize.quantize(t, 0, fwd, 16, rs, None, 0), 0, fwd, torch.bfloat16)
                 for t, rs in ((w, 5), (x, 7))]
        results = launchers.quantize_dual_dequantize(dy, spec, rhts, 3, seed, jobs, saved)
        for job, rht, got in zip(jobs, rhts, results[:2]):
            for g, w_ in zip(got, _pair_reference(dy, spec, rht, seed, job)):
                assert g.dtype == w_.dtype and g.shape == w_.shape and torch.equal(_bits(g), _bits(w_))
        for got, job in zip(results[2:], saved):
            assert torch.equal(_bits(got), _bits(dequantize(*job)))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["int4/16/fp32/nearest", "int4/16/fp32/stochastic", "e2m1/16/e4m3/nearest"])
def test_pair_launch_matches_reference_real_shapes(spec):
    x = (torch.randn(4096, 2048, device="cuda") * 2).to(torch.bfloat16)
    seed = torch.tensor(99, device="cuda")
    jobs = ((1, 123456, torch.bfloat16), (0, 1 << 40, None))
    for job, got in zip(jobs, launchers.quantize_pair(x, spec, 16, 3, seed, jobs)):
        for g, w in zip(got, _pair_reference(x, spec, 16, seed, job)):
            assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(_bits(g), _bits(w))


@pytest.mark.parametrize("jobs", [((1, 0, torch.bfloat16), (0, 0, None)), ((0, 5, None), (1, 7, torch.float32))])
def test_16x16_blocks_codes_and_values_in_one_launch(jobs):
    """NVFP4's weights: one tensor's codes along one axis and values along the other, 16 x 16 blocks, no RHT,
    round to nearest, quantize every element alike, so one launch writes both (same_values_refusal accepts):
    each result is its single launch's, bit for bit, with NaN, Inf and a huge block in the input."""
    spec = "e2m1/16x16/e4m3/nearest"
    x = torch.randn(64, 96, device=DEVICE) * 3
    x[3, 5], x[20, 40], x[33, 70] = 1e30, float("nan"), float("-inf")
    fmt = OperandFormat.from_spec(spec)
    assert quantize_pair.same_values_refusal((64, 96), fmt, [(axis, 0, dtype) for axis, _, dtype in jobs]) is None
    results = launchers.quantize_pair(x, spec, 0, 0, None, jobs)
    for (axis, offset, dtype), got in zip(jobs, results):
        single = (kernels_quantize.quantize(x, axis, spec, 0, 0, None, offset) if dtype is None else
                  kernels_quantize.quantize_dequantize(x, axis, spec, 0, 0, None, offset, dtype))
        assert len(got) == len(single)
        assert all(g.dtype == o.dtype and torch.equal(_bits(g), _bits(o)) for g, o in zip(got, single))


def test_same_values_refusal_names_the_reason():
    fmt = OperandFormat.from_spec("e2m1/16x16/e4m3/nearest")
    jobs = [(1, 0, torch.bfloat16), (0, 0, None)]
    refusal = quantize_pair.same_values_refusal
    assert refusal((64, 64), fmt, jobs) is None
    assert "16 x 16" in refusal((64, 64), OperandFormat.from_spec("e2m1/16/e4m3/nearest"), jobs)
    assert "stochastic" in refusal((64, 64), OperandFormat.from_spec("e2m1/16x16/e4m3/stochastic"), jobs)
    assert "RHT" in refusal((64, 64), fmt, [(1, 16, torch.bfloat16), (0, 0, None)])
    assert "codes" in refusal((64, 64), fmt, [(1, 0, torch.bfloat16), (0, 0, torch.bfloat16)])
    assert "whole 16 x 16" in refusal((64, 72), fmt, jobs)
    assert "whole 16 x 16" in refusal((4, 64, 64), fmt, jobs)
