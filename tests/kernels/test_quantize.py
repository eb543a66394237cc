"""The fused quantize kernel against the reference (numerics.quantize): identical codes, scales, tensor scale.

On CPU the kernels run in Triton's interpreter (tests/conftest.py), so shapes stay tiny; the GPU tests
repeat the comparison at real shapes.
"""

from __future__ import annotations

import pytest
import torch

from ufp4_compile import recipes
from ufp4_compile.numerics.formats import OperandFormat
from ufp4_compile.numerics.quantize import quantize as quantize_reference
from ufp4_compile.numerics.quantize import quantize_dequantize as quantize_dequantize_reference

kernels_quantize = pytest.importorskip("ufp4_compile.kernels.quantize")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def preset_specs() -> list[tuple[str, int]]:
    """Every (operand format spec, RHT size) used by the preset recipes."""
    specs = set()
    for recipe in recipes.PRESETS.values():
        for role in recipe.quantized_roles:
            gemm = recipe.gemm(role)
            specs.add((gemm.a.spec, gemm.rht))
            specs.add((gemm.b.spec, gemm.rht))
    return sorted(specs)


EXTRA_SPECS = [("int4/32/e8m0-floor/nearest", 0), ("e2m1/32/e8m0-floor/stochastic", 32),
               ("int4/32/e8m0/stochastic", 16), ("e2m1/16/e8m0/nearest", 64)]


def assert_same(x, axis, spec, rht=0, rht_seed=3, seed=1234, offset=5):
    ref = quantize_reference(x, axis, spec, rht=rht, rht_seed=rht_seed, seed=seed, offset=offset)
    codes, scales, tensor_scale = kernels_quantize.quantize(x, axis, spec, rht, rht_seed, seed, offset)
    assert codes.dtype == ref.codes.dtype and scales.dtype == ref.scales.dtype
    assert codes.shape == ref.codes.shape and scales.shape == ref.scales.shape
    torch.testing.assert_close(codes, ref.codes, rtol=0, atol=0)
    # Compare bit patterns: NaN scales must match too.
    as_bits = {torch.float32: torch.int32, torch.float8_e4m3fn: torch.uint8, torch.uint8: torch.uint8}
    torch.testing.assert_close(scales.view(as_bits[scales.dtype]), ref.scales.view(as_bits[scales.dtype]),
                               rtol=0, atol=0)
    torch.testing.assert_close(tensor_scale, ref.tensor_scale, rtol=0, atol=0, equal_nan=True)
    # The same launch writing the dequantized operand instead of codes (the bf16 GEMM's input).
    for dtype in (torch.bfloat16, torch.float32):
        ref_values, ref_ts = quantize_dequantize_reference(x, axis, spec, rht=rht, rht_seed=rht_seed, seed=seed,
                                                           offset=offset, dtype=dtype)
        values, ts = kernels_quantize.quantize_dequantize(x, axis, spec, rht, rht_seed, seed, offset, dtype)
        assert values.dtype == dtype and values.shape == x.shape
        torch.testing.assert_close(values, ref_values, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(ts, ref_ts, rtol=0, atol=0, equal_nan=True)


def shapes_for(spec: str) -> list[tuple[tuple[int, ...], int]]:
    if "/32/" in spec:
        return [((96, 64), 1), ((96, 64), 0), ((2, 3, 64), -1)]
    cases = [((48, 80), 1), ((48, 80), 0), ((16, 16), 0)]
    if "16x16" not in spec:
        cases += [((2, 3, 32), -1), ((32, 3, 5), 0), ((2, 32, 3), 1)]
    return cases


def _cases():
    for spec, rht in preset_specs() + EXTRA_SPECS:
        for shape, axis in shapes_for(spec):
            for r in sorted({0, rht}):
                if r == 0 or shape[axis] % r == 0:
                    yield pytest.param(spec, shape, axis, r, id=f"{spec}-{'x'.join(map(str, shape))}-ax{axis}-rht{r}")


@pytest.mark.parametrize("spec, shape, axis, rht", list(_cases()))
def test_kernel_matches_reference(spec, shape, axis, rht):
    gen = torch.Generator().manual_seed(hash((spec, shape, axis, rht)) % 2**31)
    x = torch.randn(shape, generator=gen) * torch.exp(torch.randn(shape, generator=gen))
    assert_same(x.to(DEVICE), axis, spec, rht)


@pytest.mark.parametrize("spec", ["int4/16/fp32/nearest", "e2m1/16/e4m3/stochastic", "e2m1/32/e8m0/nearest",
                                  "int4/16/e4m3/nearest", "int4/32/e8m0-floor/stochastic"])
def test_special_blocks(spec):
    """All-zero blocks, NaN / Inf blocks, subnormal and huge blocks, ties on the grid."""
    block = OperandFormat.from_spec(spec).block
    x = torch.randn(16, 4 * block)
    x[0] = 0.0
    x[1, :block] = float("nan")
    x[2, block:2 * block] = float("inf")
    x[3, :block] = 1e-40  # subnormal
    x[4, :block] = torch.linspace(-1e-38, 1e-38, block)
    x[5, :block] = torch.linspace(-3e38, 3e38, block)
    x[6, :] = torch.arange(4 * block) * 0.25 - 8.0  # exact ties for both grids
    x[7, :block] = -0.0
    assert_same(x.to(DEVICE), 1, spec)
    assert_same(x.to(DEVICE), 1, spec, rht=block)
    finite = x.clone()
    finite[1:3] = 1.0  # a finite tensor: E4M3 tensor scale from a finite amax
    assert_same(finite.to(DEVICE), 1, spec)
    assert_same(finite.t().contiguous().to(DEVICE), 0, spec)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    x = (torch.randn(32, 48) * 4).to(dtype)
    assert_same(x.to(DEVICE), 1, "int4/16/fp32/stochastic", rht=16)
    assert_same(x.to(DEVICE), 0, "e2m1/16/e4m3/nearest", rht=16)


def test_strided_input_and_large_counters():
    """A transposed (non-contiguous) view, an offset past 2**32 and seeds past 2**63 (64-bit keys)."""
    base = torch.randn(64, 48)
    view = base.t()  # (48, 64), strides (1, 48)
    assert_same(view.to(DEVICE), 1, "int4/16/fp32/stochastic", seed=2**64 - 3, offset=2**33 + 7)
    assert_same(view.to(DEVICE), 0, "e2m1/16/fp32/stochastic", seed=-5, offset=3, rht=16, rht_seed=2**40 + 1)
    seed = torch.tensor(987654321987, dtype=torch.int64)
    assert_same(view.to(DEVICE), 1, "int4/16/e4m3/stochastic", seed=seed.to(DEVICE), rht=32)


def test_bad_input_is_a_value_error():
    x = torch.randn(16, 24, device=DEVICE)
    with pytest.raises(ValueError, match="seed is required"):
        kernels_quantize.quantize(x, 0, "int4/16/fp32/stochastic")
    with pytest.raises(ValueError, match="x.dtype"):
        kernels_quantize.quantize(x.to(torch.int32), 0, "int4/16/fp32/nearest")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec, rht", preset_specs())
@pytest.mark.parametrize("axis", [0, 1])
def test_kernel_matches_reference_real_shapes(spec, rht, axis):
    x = torch.randn(4096, 2048, device="cuda") * 2
    x[7, 100] = 300.0
    assert_same(x.to(torch.bfloat16), axis, spec, rht, rht_seed=11, seed=torch.tensor(99, device="cuda"),
                offset=123456)


def test_launch_plans_follow_strides_and_formats():
    """The launcher caches each call site's geometry: one shape with other strides, another axis or another
    format must get its own plan, and a repeated call the same bits (the tensor scale included: the kernel
    writes it into an uninitialized tensor)."""
    torch.manual_seed(5)
    x = torch.randn(64, 32)
    xt = torch.randn(32, 64).t()  # same shape, transposed strides
    for _ in range(2):
        for t in (x, xt):
            for axis in (0, 1):
                for spec in ("int4/16/fp32/nearest", "e2m1/16/e4m3/nearest", "int4/16/fp32/stochastic"):
                    assert_same(t, axis, spec, rht=16)


@pytest.mark.parametrize("spec, rht", [("int4/16/fp32/stochastic", 16), ("e2m1/16/e4m3/stochastic", 64),
                                       ("e2m1/32/e8m0/nearest", 16), ("int4/16/e4m3/nearest", 32)])
@pytest.mark.parametrize("shape, axis", [((5, 20), 1), ((3, 45), -1), ((37, 6), 0), ((2, 7, 3), 1), ((3, 1), 1)])
def test_partial_blocks(spec, rht, shape, axis):
    """An axis length that is not a multiple of the block (a symbolic token count in Wgrad): the last block
    is padded with zeros and a trailing partial RHT group is left unrotated, exactly as in the reference."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape) * 100 + shape[axis])) * 3
    for r in (0, rht):
        assert_same(x.to(DEVICE), axis, spec, r)


@pytest.mark.parametrize("spec", ["int4/16/fp32/nearest", "e2m1/16/e4m3/stochastic", "e2m1/32/e8m0/nearest"])
@pytest.mark.parametrize("shape, axis", [((0, 32), 1), ((0, 32), 0), ((4, 0), 1), ((2, 0, 16), 2)])
def test_empty_tensors(spec, shape, axis):
    assert_same(torch.zeros(shape, device=DEVICE), axis, spec, 16)


@pytest.mark.parametrize("spec", ["int4/16/fp32/nearest", "int4/16/e4m3/nearest", "e2m1/16/e4m3/stochastic",
                                  "e2m1/32/e8m0/nearest", "int4/32/e8m0/stochastic"])
def test_values_near_the_fp32_limit(spec):
    """Big RHT groups (through 2**-64, saturating), E8M0's top exponent (levels above 3 clamped), E4M3's
    finite global amax beside non-finite blocks: the same bits as the reference."""
    fmax = torch.finfo(torch.float32).max
    x = torch.randn(8, 64)
    x[0] = 1e38
    x[1] = -3e38
    x[2] = torch.linspace(-1, 1, 64) * fmax
    x[3, ::2], x[3, 1::2] = fmax, -fmax
    x[4] *= 2.0**70
    x[5, 3] = float("inf")
    x[6, 40] = float("nan")
    x[7, :16] = 1e-40
    for rht in (0, 16, 64):
        assert_same(x.to(DEVICE), 1, spec, rht)


@pytest.mark.parametrize("shape, axis", [((4128, 32), 1), ((2, 32, 2064), 1)], ids=["row-wise", "column-wise-pages"])
def test_global_amax_over_more_tiles_than_prepass_programs(shape, axis):
    """E4M3 two-level scales: with 16-wide pre-pass tiles these shapes have 516 tiles, more than the
    pre-pass's AMAX_PROGRAMS, so each of its programs walks several tiles (and pages) before writing its
    partial maximum. The largest value sits in the last tile; the tensor scale and codes equal the reference."""
    assert kernels_quantize.AMAX_PROGRAMS == 512
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=gen)
    x.view(-1)[-1] = 40.0
    spec = "e2m1/16/e4m3/nearest"
    ref = quantize_reference(x, axis, spec, rht=0)
    config = {"B": 16, "amax_B": 16}
    plan = kernels_quantize.plan_for(x, axis % x.dim(), kernels_quantize.as_format(spec), 0, codes=True,
                                     values=False, config=config)
    amax_tiles = (-(-plan.args["L"] // plan.amax_constexprs["U"]) * -(-plan.args["O"] // plan.amax_constexprs["B"])
                  * plan.grid[2])
    assert amax_tiles > kernels_quantize.AMAX_PROGRAMS
    codes, scales, tensor_scale = kernels_quantize.quantize(x.to(DEVICE), axis, spec, 0, 0, config=config)
    torch.testing.assert_close(tensor_scale.cpu(), ref.tensor_scale, rtol=0, atol=0)
    torch.testing.assert_close(codes.cpu(), ref.codes, rtol=0, atol=0)
    torch.testing.assert_close(scales.cpu().view(torch.uint8), ref.scales.view(torch.uint8), rtol=0, atol=0)


@pytest.mark.parametrize("grid", [0, 1], ids=["int4", "e2m1"])
def test_stochastic_level_helper_every_gap(grid):
    """The kernel's stochastic level (from bit patterns) against numerics.grids.round_stochastic for every
    a = k / 64 in [0, 7.5] clamped to the grid's top level (each gap and its ends, levels themselves), with
    random bits that include 0 and 255."""
    import triton
    import triton.language as tl

    from ufp4_compile.numerics.formats import Grid
    from ufp4_compile.numerics.grids import round_stochastic

    @triton.jit
    def level_kernel(a_ptr, rand_ptr, out_ptr, N: tl.constexpr, GRID: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(out_ptr + i, kernels_quantize._level_stochastic(tl.load(a_ptr + i), tl.load(rand_ptr + i), GRID))

    top = 7.0 if grid == 0 else 6.0
    a = (torch.arange(481, dtype=torch.float32) / 64).clamp(max=top)
    a = torch.cat([a, a, a])
    gen = torch.Generator().manual_seed(5)
    rand = torch.randint(0, 1 << 8, a.shape, generator=gen, dtype=torch.int32)
    rand[:481], rand[481:962] = 0, 0xFF
    n = triton.next_power_of_2(a.numel())
    a_pad = torch.zeros(n, dtype=torch.float32)
    a_pad[:a.numel()] = a
    rand_pad = torch.zeros(n, dtype=torch.int32)
    rand_pad[:a.numel()] = rand
    out = torch.zeros(n, dtype=torch.int32, device=DEVICE)
    level_kernel[(1,)](a_pad.to(DEVICE), rand_pad.to(DEVICE), out, n, grid)
    want = round_stochastic(a, (Grid.INT4, Grid.E2M1)[grid], rand)
    torch.testing.assert_close(out[:a.numel()].cpu().long(), want, rtol=0, atol=0)


def test_rowwise_fold():
    """Row-wise launches view ``(rows, L)`` as ``(rows * L // U, U)`` (coalesced loads and stores): the same
    codes, scales and values as the unfolded launch (stochastic rounding's counters included), and no fold
    where it would change a result (16 x 16 blocks, a partial tile) or exceed CUDA's grid limit."""
    fmt = kernels_quantize.as_format

    def plan(shape, spec, config=None):
        return kernels_quantize.launch_plan(shape, 2, len(shape) - 1, fmt(spec), 16, True, False, False,
                                            tuple(sorted(config.items())) if config else None)

    assert plan((64, 96), "int4/16/fp32/stochastic").args["O"] == 64 * 6
    assert plan((64, 96), "int4/16/fp32/stochastic", {"fold": False}).args["O"] == 64
    assert plan((64, 96), "e2m1/16x16/e4m3/nearest").args["O"] == 64  # 2-D blocks span 16 rows
    assert plan((64, 100), "int4/16/fp32/nearest").args["O"] == 64  # a partial last tile
    assert plan((2**20, 8192), "int4/16/fp32/nearest").args["O"] == 2**20  # 2**22 programs: past grid.y
    x = (torch.randn(24, 96, generator=torch.Generator().manual_seed(3)) * 3).to(DEVICE)
    for spec in ("int4/16/fp32/stochastic", "e2m1/16/e4m3/stochastic", "e2m1/32/e8m0/nearest"):
        folded = kernels_quantize.quantize(x, 1, spec, 16, 5, 77, 9)
        unfolded = kernels_quantize.quantize(x, 1, spec, 16, 5, 77, 9, config={"fold": False})
        for a, b in zip(folded, unfolded):
            assert torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                               b.view(torch.uint8) if b.element_size() == 1 else b)
        values = kernels_quantize.quantize_dequantize(x, 1, spec, 16, 5, 77, 9)[0]
        assert torch.equal(values, kernels_quantize.quantize_dequantize(x, 1, spec, 16, 5, 77, 9,
                                                                         config={"fold": False})[0])


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
                                       ("e2m1/16/fp32/nearest", 0), ("e2m1/32/e8m0/stochastic", 16)])
@pytest.mark.parametrize("shape, jobs", [
    ((48, 64), ((1, 16, torch.bfloat16), (0, 1 << 32, None))),  # X in the forward: row values, column codes
    ((40, 96), ((1, 5, torch.bfloat16), (0, 77, torch.bfloat16))),  # dY in the backward; a partial column tile
    ((3, 40, 32), ((1, 9, None), (2, 3, torch.float32))),  # pages column-wise
])
def test_pair_launch_matches_reference(spec, rht, shape, jobs):
    """Two quantizations of one tensor in one launch (the pair kernel where pair_refusal allows, two launches
    where it does not: E8M0's row-wise tile takes more warps than its column-wise one): each result is the
    reference's, bit for bit."""
    x = torch.randn(shape, device=DEVICE) * 3
    seed = torch.tensor(1234, device=DEVICE)
    fmt = OperandFormat.from_spec(spec)
    plans = [kernels_quantize.plan_for(x, axis % x.dim(), fmt, rht, codes=dtype is None, values=dtype is not None)
             for axis, _, dtype in jobs]
    assert (kernels_quantize.pair_refusal(*plans) is None) == ("fp32" in spec)
    results = kernels_quantize.quantize_pair(x, spec, rht, 3, seed, jobs)
    for job, got in zip(jobs, results):
        want = _pair_reference(x, spec, rht, seed, job)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert torch.equal(_bits(g), _bits(w))


@pytest.mark.parametrize("spec, rht", [("int4/16/fp32/stochastic", 16), ("int4/16/fp32/nearest", 16),
                                       ("e2m1/16/fp32/stochastic", 16), ("e2m1/16/fp32/nearest", 0)])
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
    assert kernels_quantize.dual_refusal(tuple(x.shape), *plans) is None
    assert kernels_quantize.pair_launch(*plans, dual_shape=tuple(x.shape)).kernel is kernels_quantize._quantize_dual_kernel
    results = kernels_quantize.quantize_pair(x, spec, rht, 3, seed, jobs)
    for (axis, offset, dtype), got in zip(jobs, results):
        single = (kernels_quantize.quantize(x, axis, spec, rht, 3, seed, offset) if dtype is None else
                  kernels_quantize.quantize_dequantize(x, axis, spec, rht, 3, seed, offset, dtype))
        want = _pair_reference(x, spec, rht, seed, (axis, offset, dtype))
        assert len(got) == len(want) == len(single)
        for g, o, w in zip(got, single, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert torch.equal(_bits(g), _bits(o))
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


def test_dual_refusal_names_the_reason():
    plan = lambda shape, spec, axis, rht=16: kernels_quantize.plan_for(
        torch.empty(shape), axis, OperandFormat.from_spec(spec), rht, codes=True, values=False)
    ok = "int4/16/fp32/nearest"
    assert kernels_quantize.dual_refusal((64, 64), plan((64, 64), ok, 1), plan((64, 64), ok, 0)) is None
    assert "2-D" in kernels_quantize.dual_refusal((64, 64), plan((64, 64), ok, 1), plan((64, 64), ok, 1))
    assert "2-D" in kernels_quantize.dual_refusal((2, 64, 64), plan((2, 64, 64), ok, 2), plan((2, 64, 64), ok, 1))
    assert "16 x 16 tiles" in kernels_quantize.dual_refusal((40, 64), plan((40, 64), ok, 1), plan((40, 64), ok, 0))
    assert "16 x 16 tiles" in kernels_quantize.dual_refusal((64, 64), plan((64, 64), ok, 1, 32),
                                                            plan((64, 64), ok, 0, 32))
    assert "pre-pass" in kernels_quantize.dual_refusal((64, 64), plan((64, 64), "e2m1/16/e4m3/nearest", 1),
                                                       plan((64, 64), "e2m1/16/e4m3/nearest", 0))


@pytest.mark.parametrize("spec, rht", [("int4/16/fp32/stochastic", 16), ("int4/16/fp32/nearest", 16),
                                       ("e2m1/16/fp32/nearest", 0)])
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
    results = kernels_quantize.quantize_pair(x, spec, rht, 3, seeds[0], jobs, other=(w, 5, seeds[1]))
    for t, rht_seed, seed, job, got in zip((x, w), (3, 5), seeds, jobs, results):
        want = _pair_reference(t, spec, rht, seed, job, rht_seed)
        assert len(got) == len(want)
        for g, w_ in zip(got, want):
            assert g.dtype == w_.dtype and g.shape == w_.shape
            assert torch.equal(_bits(g), _bits(w_))


def test_pair_refusal_names_the_reason():
    x = torch.randn(64, 64)
    plan = lambda spec, axis: kernels_quantize.plan_for(x, axis, OperandFormat.from_spec(spec), 16, codes=True,
                                                        values=False)
    assert "pre-pass" in kernels_quantize.pair_refusal(plan("e2m1/16/e4m3/nearest", 1), plan("e2m1/16/e4m3/nearest", 0))
    assert "warps" in kernels_quantize.pair_refusal(plan("e2m1/32/e8m0/nearest", 1), plan("e2m1/32/e8m0/nearest", 0))
    assert "STOCHASTIC" in kernels_quantize.pair_refusal(plan("int4/16/fp32/nearest", 1),
                                                         plan("int4/16/fp32/stochastic", 0))
    with pytest.raises(ValueError, match="jobs"):
        kernels_quantize.quantize_pair(x, "int4/16/fp32/nearest", 16, 3, None, [(1, 0, None)])
    with pytest.raises(ValueError, match="dtype"):
        kernels_quantize.quantize_pair(x, "int4/16/fp32/nearest", 16, 3, None, [(1, 0, None), (0, 0, torch.int8)])
    with pytest.raises(ValueError, match="other"):
        kernels_quantize.quantize_pair(x, "int4/16/fp32/nearest", 16, 3, None, [(1, 0, None), (0, 0, None)], other=x)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["int4/16/fp32/stochastic", "e2m1/16/fp32/stochastic", "int4/16/fp32/nearest"])
@pytest.mark.parametrize("shape", [(8192, 1024), (8192, 3072), (4096, 2816)])
def test_dual_launch_matches_reference_real_shapes(spec, shape):
    """dY's two quantizations at the training step's shapes (and a width that is not a multiple of the
    column tile) from one read: the reference's bits, and the pair kernel's (dual off)."""
    x = (torch.randn(shape, device="cuda") * 2).to(torch.bfloat16)
    seed = torch.tensor(99, device="cuda")
    jobs = ((0, 1 << 33, torch.bfloat16), (1, 123456, torch.bfloat16))
    dual = kernels_quantize.quantize_pair(x, spec, 16, 3, seed, jobs)
    pair = kernels_quantize.quantize_pair(x, spec, 16, 3, seed, jobs, dual=False)
    for job, got, other in zip(jobs, dual, pair):
        for g, o, w in zip(got, other, _pair_reference(x, spec, 16, seed, job)):
            assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(_bits(g), _bits(w))
            assert torch.equal(_bits(g), _bits(o))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["int4/16/fp32/nearest", "int4/16/fp32/stochastic"])
def test_pair_launch_matches_reference_real_shapes(spec):
    x = (torch.randn(4096, 2048, device="cuda") * 2).to(torch.bfloat16)
    seed = torch.tensor(99, device="cuda")
    jobs = ((1, 123456, torch.bfloat16), (0, 1 << 40, None))
    for job, got in zip(jobs, kernels_quantize.quantize_pair(x, spec, 16, 3, seed, jobs)):
        for g, w in zip(got, _pair_reference(x, spec, 16, seed, job)):
            assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(_bits(g), _bits(w))
