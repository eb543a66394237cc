"""The fused quantize kernel against the reference (numerics.quantize): identical codes, scales, tensor scale.

On CPU the kernels run in Triton's interpreter (tests/conftest.py), so shapes stay tiny; the GPU tests
repeat the comparison at real shapes.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from ufp4_compile import recipes
from ufp4_compile.numerics.formats import OperandFormat
from ufp4_compile.numerics.quantize import quantize as quantize_reference
from ufp4_compile.numerics.quantize import quantize_dequantize as quantize_dequantize_reference

kernels_quantize = pytest.importorskip("ufp4_compile.kernels.quantize")
kernels_tile = pytest.importorskip("ufp4_compile.kernels.quantize_tile")

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


@pytest.mark.parametrize("spec", ["int4/16/fp32/nearest", "int4/16/fp32/stochastic", "e2m1/16/fp32/nearest",
                                  "e2m1/16/fp32/stochastic"])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("rht", [0, 16])
def test_fp32_scales_clamp_where_a_tile_has_a_subnormal_scale(spec, axis, rht):
    """The INT4 grid with FP32 scales skips the clamp in tiles whose block scales are all normal and at least
    2**-64 (quantize_tile._scaled_blocks; E2M1 keeps it everywhere): a block whose scale is subnormal (amax = 10 * 2**-149: |x| / s reaches 10)
    or below 2**-64 (lifted), in a tile of ordinary blocks, must still take it; a tile at the threshold
    itself (every amax q_max * 2**-64) and the ordinary tiles around them must not change a bit."""
    q_max = OperandFormat.from_spec(spec).q_max
    x = torch.randn(64, 64)
    tiny = 2.0 ** -149
    pattern = torch.tensor([10, 3, -7, 1, 0, 5, -10, 2, 9, -1, 4, 6, -8, 0, 1, 10]) * tiny
    lifted = torch.linspace(-1, 1, 16) * 2.0 ** -70
    threshold = torch.where(torch.arange(16) % 2 == 0, 1.0, -0.5) * q_max * 2.0 ** -64
    if axis == 1:  # blocks along rows
        x[5, 16:32], x[40, 48:64], x[20, :16] = pattern, lifted, threshold
    else:  # blocks along columns
        x[16:32, 5], x[48:64, 40], x[:16, 20] = pattern, lifted, threshold
    assert_same(x.to(DEVICE), axis, spec, rht=rht)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    x = (torch.randn(32, 48) * 4).to(dtype)
    assert_same(x.to(DEVICE), 1, "int4/16/fp32/stochastic", rht=16)
    assert_same(x.to(DEVICE), 0, "e2m1/16/e4m3/nearest", rht=16)


def _half_range_tensor(dtype) -> torch.Tensor:
    """16-bit values where folding 1 / sqrt(R) into the RHT signs could go wrong if it were not exact:
    bf16's subnormals and the FP32 subnormal range the rotated sums reach, cancellations there, values just
    below and at the RHT guard's 2**64, a NaN group, and ordinary values beside them."""
    x = torch.randn(64, 128)
    if dtype == torch.bfloat16:
        x[0] = torch.randn(128) * 2.0**-130  # bf16 subnormals (down to 2**-133)
        x[1] = torch.randn(128) * 2.0**-124
        x[2, ::2], x[2, 1::2] = 2.0**-126, -(2.0**-126) * (1 + 2.0**-7)  # sums cancel into the subnormals
        x[3] = torch.randn(128) * 2.0**62  # large, below the guard
        x[4, :16] = 2.0**64  # one group through the guard, its neighbours not
        x[4, 16:32] = torch.randn(16) * 2.0**-120
        x[5, 32:48] = float("nan")
    else:  # fp16: subnormals from 2**-24, largest 65504
        x[0] = torch.randn(128) * 2.0**-20
        x[1, ::2], x[1, 1::2] = 2.0**-14, -(2.0**-14) * (1 + 2.0**-10)
        x[2] = torch.randn(128) * 30000
        x[5, 32:48] = float("nan")
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("spec, rht", [("int4/16/fp32/nearest", 16), ("int4/16/fp32/stochastic", 64),
                                       ("e2m1/16/e4m3/stochastic", 16), ("int4/16/e4m3/nearest", 64),
                                       ("int4/16/fp32/nearest", 32), ("e2m1/32/e8m0/nearest", 32)])
def test_16_bit_inputs_at_the_ends_of_the_range(dtype, spec, rht):
    """bf16 / fp16 inputs take the RHT with 1 / sqrt(R) folded into the signs where it is a power of two
    (R = 16, 64; R = 32 keeps the final multiplication): the same bits as the reference at both ends of the
    range, on both axes (the E4M3 formats through the global-amax pre-pass too)."""
    x = _half_range_tensor(dtype)
    assert_same(x.to(DEVICE), 1, spec, rht=rht)
    assert_same(x.t().contiguous().to(DEVICE), 0, spec, rht=rht)


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
        tl.store(out_ptr + i, kernels_tile._level_stochastic(tl.load(a_ptr + i), tl.load(rand_ptr + i), GRID))

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


def test_column_vector_width_changes_no_bit():
    """``config={"cols": ..}`` (the sweep's narrower column-wise vectors, fewer registers) lays the tile out
    differently, never the math: codes, scales and values equal the default launch's bit for bit; a width
    that is not a power of two is refused by name."""
    x = (torch.randn(48, 96, generator=torch.Generator().manual_seed(5)) * 3).to(DEVICE)
    for spec in ("int4/16/fp32/stochastic", "e2m1/16/fp32/nearest"):
        default = kernels_quantize.quantize(x, 0, spec, 16, 5, 77, 9)
        default_values = kernels_quantize.quantize_dequantize(x, 0, spec, 16, 5, 77, 9)[0]
        for config in ({"cols": 2, "B": 64, "num_warps": 1}, {"cols": 1, "B": 32, "num_warps": 1}):
            plan = kernels_quantize.plan_for(x, 0, OperandFormat.from_spec(spec), 16, codes=True, values=False,
                                             config=config)
            assert plan.constexprs["COLS"] == config["cols"]
            for a, b in zip(default, kernels_quantize.quantize(x, 0, spec, 16, 5, 77, 9, config=config)):
                assert torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                                   b.view(torch.uint8) if b.element_size() == 1 else b)
            values = kernels_quantize.quantize_dequantize(x, 0, spec, 16, 5, 77, 9, config=config)[0]
            assert torch.equal(values, default_values)
    with pytest.raises(ValueError, match="cols"):
        kernels_quantize.quantize(x, 0, "int4/16/fp32/nearest", 16, config={"cols": 3})


def test_tiles_a_program_change_no_bit():
    """``config={"tiles": .., "stages": ..}`` (the sweep's pipelined loop: several tiles a program) computes each
    tile as its own program would: codes, scales, tensor scale and values equal the default launch's bit for
    bit in both orientations (stochastic counters and the first program's tensor scale included); a count that
    does not divide the grid is refused by name."""
    x = (torch.randn(64, 96, generator=torch.Generator().manual_seed(6)) * 3).to(DEVICE)
    for spec in ("int4/16/fp32/stochastic", "e2m1/16/e4m3/nearest"):
        for axis in (0, 1):
            default = kernels_quantize.quantize(x, axis, spec, 16, 5, 77, 9)
            default_values = kernels_quantize.quantize_dequantize(x, axis, spec, 16, 5, 77, 9)[0]
            config = {"tiles": 2, "stages": 2, "B": 16} if axis == 1 else {"tiles": 4, "stages": 2}
            plan = kernels_quantize.plan_for(x, axis, OperandFormat.from_spec(spec), 16, codes=True, values=False,
                                             config=config)
            assert plan.constexprs["TILES"] == config["tiles"]
            for a, b in zip(default, kernels_quantize.quantize(x, axis, spec, 16, 5, 77, 9, config=config)):
                assert torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                                   b.view(torch.uint8) if b.element_size() == 1 else b)
            values = kernels_quantize.quantize_dequantize(x, axis, spec, 16, 5, 77, 9, config=config)[0]
            assert torch.equal(values, default_values)
    with pytest.raises(ValueError, match="tiles"):
        kernels_quantize.quantize(x, 0, "int4/16/fp32/nearest", 16, config={"tiles": 3})
    with pytest.raises(ValueError, match="tiles"):
        kernels_quantize.quantize(x, 0, "int4/16/fp32/nearest", 16, config={"tiles": 0})


@pytest.mark.parametrize("axis", [0, 1])
def test_plans_name_every_constexpr_of_the_kernel(axis):
    """Inductor launches ``_quantize_kernel`` with the plan's arguments and compiles a constexpr it is not given
    as None rather than as the Python default (a plan without ``TILES`` failed to compile in every compiled
    graph with a single quantize launch on the GPU, while the interpreter applied the default): every plan
    names each constexpr parameter, and none has a default to fall back on."""
    params = inspect.signature(kernels_quantize._quantize_kernel.fn).parameters.values()
    constexprs = {p.name for p in params if "constexpr" in str(p.annotation)}
    assert {"U", "TILES", "STAGES"} <= constexprs
    assert all(p.default is inspect.Parameter.empty for p in params if p.name in constexprs)
    for spec in ("int4/16/fp32/stochastic", "e2m1/16/e4m3/nearest", "e2m1/32/e8m0/nearest"):
        plan = kernels_quantize.launch_plan((64, 96), 2, axis, OperandFormat.from_spec(spec), 16, True, False, False)
        assert constexprs == set(plan.constexprs)


@pytest.mark.parametrize("spec, rht", [("int4/16/fp32/stochastic", 16), ("e2m1/32/e8m0/nearest", 0),
                                       ("e2m1/16/e4m3/stochastic", 16)])
@pytest.mark.parametrize("axis", [0, 1])
def test_a_launch_without_a_tensor_scale_pointer_writes_the_same_bits(spec, rht, axis):
    """The lowering passes no tensor-scale pointer where nobody reads the tensor scale (a dense GEMM's operand of
    one-level scales): the launch then writes the same codes, scales and values, and no tensor scale."""
    torch.manual_seed(0)
    x = (torch.randn(64, 96, device=DEVICE) * 3).bfloat16()
    x[5, 7] = float("nan")
    for codes_out in (True, False):
        plan = kernels_quantize.plan_for(x, axis, OperandFormat.from_spec(spec), rht, codes=codes_out,
                                         values=not codes_out)
        results = []
        for write in (True, False):
            codes = torch.empty(plan.codes_shape, dtype=torch.uint8, device=DEVICE) if codes_out else None
            scales = torch.empty(plan.scales_shape, dtype=plan.scale_dtype, device=DEVICE) if codes_out else None
            values = None if codes_out else torch.empty(x.shape, dtype=torch.bfloat16, device=DEVICE)
            ts = kernels_quantize._launch(x, plan, 3, 1234, 5 << 32, codes, scales, values,
                                          write_tensor_scale=write)
            assert (ts is None) == (not write)
            results.append([t.view(torch.uint8) for t in (codes, scales, values) if t is not None])
        for with_ts, without in zip(*results):
            torch.testing.assert_close(without, with_ts, rtol=0, atol=0)
