"""quantize / dequantize / gemm_reference: layout, validation, special values, properties."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ufp4_compile.numerics import (E8M0Rounding, Grid, OperandFormat, QuantizedTensor, Rounding, ScaleFormat,
                                   dequantize, gemm_reference, quantize, quantize_dequantize, rht, unpack_codes)

FORMATS = [OperandFormat(g, b, s) for g, b, s in itertools.product(Grid, (16, 32), ScaleFormat)]
FORMATS.append(OperandFormat(Grid.E2M1, 32, ScaleFormat.E8M0, e8m0_rounding=E8M0Rounding.FLOOR))


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_layout_and_dtypes():
    x = _x(4, 64, 32)
    for scale, dtype in ((ScaleFormat.FP32, torch.float32), (ScaleFormat.E4M3, torch.float8_e4m3fn),
                         (ScaleFormat.E8M0, torch.uint8)):
        q = quantize(x, 1, OperandFormat(Grid.INT4, 16, scale))
        assert q.codes.shape == (4, 32, 32) and q.codes.dtype == torch.uint8 and q.codes.is_contiguous()
        assert q.scales.shape == (4, 4, 32) and q.scales.dtype == dtype
        assert q.tensor_scale.shape == () and q.tensor_scale.dtype == torch.float32
        assert q.shape == (4, 64, 32) and q.axis == 1
    assert quantize(x, -1, "int4/32/fp32/nearest").axis == 2


def test_spec_string_and_frozen():
    q = quantize(_x(2, 16), 1, "e2m1/16/e4m3/nearest")
    assert q.fmt == OperandFormat(Grid.E2M1, 16, ScaleFormat.E4M3)
    with pytest.raises(AttributeError):
        q.axis = 0


@pytest.mark.parametrize("bad,match", [
    (dict(x=torch.arange(32).view(2, 16)), "x.dtype=torch.int64 is not valid; valid values: float32"),
    (dict(x=_x(2, 16).double()), "x.dtype=torch.float64"),
    (dict(axis=2), "axis=2 is not valid for a 2-d tensor"),
    (dict(rht=8), "rht=8 is not valid; valid values"),
    (dict(x=_x(2, 32, 16), fmt="e2m1/16x16/e4m3/nearest"), "block_2d=True needs a 2-D tensor"),
    (dict(x=_x(8, 16), fmt="e2m1/16x16/e4m3/nearest"), "axis 0 has length 8, which is not a multiple of the tile"),
    (dict(fmt="int4/16/fp32/stochastic"), "seed is required"),
    (dict(fmt="int4/8/fp32/nearest"), "block=8 is not valid"),
])
def test_bad_input_is_a_clear_value_error(bad, match):
    args = dict(x=_x(16, 32), axis=1, fmt="int4/16/fp32/nearest")
    args.update(bad)
    x, axis, fmt = args.pop("x"), args.pop("axis"), args.pop("fmt")
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(".", r"\.")):
        quantize(x, axis, fmt, **args)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.spec)
def test_all_zero_blocks_dequantize_to_zero(fmt):
    x = _x(4, 64)
    x[1] = 0.0
    q = quantize(x, 1, fmt)
    assert (unpack_codes(q.codes, 1)[1] == 0).all()
    assert torch.equal(dequantize(q)[1], torch.zeros(64))
    assert torch.equal(dequantize(quantize(torch.zeros(3, 32), 1, fmt)), torch.zeros(3, 32))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.spec)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_blocks_dequantize_to_nan(fmt, bad):
    x = _x(4, 64)
    x[2, 5] = bad
    q = quantize(x, 1, fmt)
    d = dequantize(q)
    block = slice(0, fmt.block)
    assert (unpack_codes(q.codes, 1)[2, block] == 0).all()
    assert torch.isnan(d[2, block]).all()
    stored_nan = q.scales[2, 0]
    nan_bits = {ScaleFormat.FP32: None, ScaleFormat.E4M3: 0x7F, ScaleFormat.E8M0: 255}[fmt.scale]
    assert torch.isnan(stored_nan) if nan_bits is None else stored_nan.view(torch.uint8).item() == nan_bits
    # Every other block is quantized as if the element were 0 (for E4M3 too: the global amax is taken over
    # the finite values; a NaN tensor scale used to turn every block NaN).
    clean = quantize(torch.where(torch.isfinite(x), x, 0.0), 1, fmt)
    assert torch.isfinite(q.tensor_scale) and torch.equal(q.tensor_scale, clean.tensor_scale)
    d_clean = dequantize(clean)
    d[2, block] = d_clean[2, block]
    assert torch.equal(d, d_clean)


@pytest.mark.parametrize("fmt", ["int4/16/e4m3/nearest", "e2m1/16/e4m3/nearest"])
def test_e4m3_tensor_of_non_finite_values_only(fmt):
    x = torch.full((2, 32), float("inf"))
    q = quantize(x, 1, fmt)
    assert q.tensor_scale.item() == 1.0  # finite amax 0: enc = 1, as for an all-zero tensor
    assert torch.isnan(dequantize(q)).all()


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.spec)
def test_axis0_equals_axis1_of_the_transpose(fmt):
    x = _x(64, 96)
    q0 = quantize(x, 0, fmt, rht=16, rht_seed=3)
    q1 = quantize(x.t().contiguous(), 1, fmt, rht=16, rht_seed=3).t()
    assert q1.axis == 0 and q1.shape == (64, 96)
    assert torch.equal(q0.codes, q1.codes)
    assert torch.equal(q0.scales.view(torch.uint8) if q0.scales.dtype.itemsize == 1 else q0.scales,
                       q1.scales.view(torch.uint8) if q1.scales.dtype.itemsize == 1 else q1.scales)
    assert torch.equal(dequantize(q0), dequantize(q1))


def test_block_2d_scales_are_equal_over_tiles():
    x = _x(64, 48)
    for axis in (0, 1):
        q = quantize(x, axis, "e2m1/16x16/e4m3/nearest")
        s = q.scales.float()
        tiles = s.unfold(1 - axis, 16, 16)
        assert (tiles == tiles[..., :1]).all()
        # The tile's scale comes from the tile amax: within E4M3 rounding (3 mantissa bits, relative error
        # <= 2**-4) of amax / 6, so no element lies beyond 6 * scale * tensor_scale * (1 + 2**-4).
        bound = s.repeat_interleave(16, dim=axis) * q.tensor_scale * 6
        assert (x.abs() <= bound * (1 + 2**-4)).all()
        tile_amax = x.abs().unfold(0, 16, 16).unfold(1, 16, 16).amax((-1, -2))
        assert (tile_amax.repeat_interleave(16, 0).repeat_interleave(16, 1) <= bound * (1 + 2**-4)).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_equal_their_float32_values(dtype):
    x = _x(8, 64).to(dtype)
    for fmt in FORMATS:
        assert torch.equal(quantize(x, 1, fmt).codes, quantize(x.float(), 1, fmt).codes)


def test_dequantize_dtype():
    q = quantize(_x(4, 32), 1, "int4/16/fp32/nearest")
    assert dequantize(q, torch.bfloat16).dtype == torch.bfloat16
    torch.testing.assert_close(dequantize(q, torch.bfloat16), dequantize(q).bfloat16(), rtol=0, atol=0)


def _step_bound(q: QuantizedTensor) -> torch.Tensor:
    """Half the widest grid gap, times the block's effective scale: the largest nearest-rounding error."""
    half_gap = 1.0 if q.fmt.grid is Grid.E2M1 else 0.5
    from ufp4_compile.numerics.scales import decode_scales
    s = decode_scales(q.scales, q.fmt.scale).repeat_interleave(q.fmt.block, dim=q.axis) * q.tensor_scale
    return half_gap * s


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3), axis_pick=st.integers(0, 10),
       fmt_pick=st.integers(0, len(FORMATS) - 1), use_rht=st.booleans(), seed=st.integers(0, 2**31),
       log_scale=st.floats(-20, 20))
def test_nearest_error_is_within_half_a_step(shape, axis_pick, fmt_pick, use_rht, seed, log_scale):
    fmt = FORMATS[fmt_pick]
    axis = axis_pick % len(shape)
    shape[axis] *= 32
    x = _x(*shape, seed=seed) * 2.0**log_scale
    q = quantize(x, axis, fmt, rht=16 if use_rht else 0, rht_seed=seed)
    xr = rht(x, axis, 16, seed) if use_rht else x
    err = (dequantize(q) - xr).abs()
    bound = _step_bound(q)
    if fmt.scale is ScaleFormat.E8M0 and fmt.e8m0_rounding is E8M0Rounding.FLOOR:
        # FLOOR may saturate: the amax can exceed q_max * scale by up to 2x.
        bound = torch.maximum(bound, xr.abs() - fmt.q_max * bound / (1.0 if fmt.grid is Grid.E2M1 else 0.5))
    # E4M3's two-level scale also rounds the block scale: allow FP32 slack on top of the grid step.
    assert (err <= bound * (1 + 1e-5) + 1e-30).all()
    assert q.codes.shape[axis] * 2 == shape[axis] and q.scales.shape[axis] * fmt.block == shape[axis]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.spec)
def test_gemm_reference_matches_fp64_matmul_of_dequantized_operands(fmt):
    a, b = _x(24, 128, seed=1), _x(40, 128, seed=2)
    qa, qb = quantize(a, 1, fmt, rht=16), quantize(b, 1, fmt, rht=16)
    expected = dequantize(qa).double() @ dequantize(qb).double().t()
    out = gemm_reference(qa, qb, torch.float32)
    assert out.dtype == torch.float32 and out.shape == (24, 40)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    # bf16 compute is exact for E4M3/E8M0 scales (<= 7 significant bits per element); FP32 scales round.
    out_bf16 = gemm_reference(qa, qb)
    if fmt.scale is ScaleFormat.FP32:
        torch.testing.assert_close(out_bf16.double(), expected, rtol=0, atol=2**-8 * expected.abs().max().item())
    else:
        torch.testing.assert_close(out_bf16.double(), expected, rtol=1e-5,
                                   atol=1e-5 * expected.abs().max().item())


def test_gemm_reference_with_transposed_operands():
    # Wgrad: dW = dY^T X, both operands quantized along tokens (axis 0), passed as .t() views.
    dy, x = _x(64, 32, seed=3), _x(64, 48, seed=4)
    fmt = "int4/16/fp32/nearest"
    qdy, qx = quantize(dy, 0, fmt, rht=16), quantize(x, 0, fmt, rht=16)
    out = gemm_reference(qdy.t(), qx.t(), torch.float32)
    expected = dequantize(qdy).double().t() @ dequantize(qx).double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)
    # and the rotated product approximates the unrotated one (quantization error only)
    rel = (out.double() - dy.double().t() @ x.double()).norm() / (dy.double().t() @ x.double()).norm()
    assert rel < 0.2
    with pytest.raises(ValueError, match="quantized along dim 1"):
        gemm_reference(qdy, qx.t())
    with pytest.raises(ValueError, match="compute_dtype"):
        gemm_reference(qdy.t(), qx.t(), torch.float16)


def test_stochastic_format_through_gemm():
    fmt = OperandFormat(Grid.INT4, 16, ScaleFormat.FP32, Rounding.STOCHASTIC)
    q = quantize(_x(8, 32), 1, fmt, seed=torch.tensor(3, dtype=torch.int64), offset=9)
    assert gemm_reference(q, q).shape == (8, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", FORMATS + [OperandFormat(Grid.INT4, 16, "fp32", Rounding.STOCHASTIC),
                                          OperandFormat(Grid.E2M1, 16, "e4m3", Rounding.STOCHASTIC)],
                         ids=lambda f: f.spec)
def test_cuda_gives_the_cpu_bits(fmt):
    # The reference runs on any device with the same bits (it never divides by a Python scalar, which CUDA
    # turns into a reciprocal multiply).
    x = _x(256, 512) * torch.logspace(-6, 3, 512)
    x[3, :16] = 0.0
    for axis in (0, 1):
        cpu = quantize(x, axis, fmt, rht=16, rht_seed=5, seed=123, offset=7)
        gpu = quantize(x.cuda(), axis, fmt, rht=16, rht_seed=5, seed=torch.tensor(123, device="cuda"), offset=7)
        assert torch.equal(cpu.codes, gpu.codes.cpu())
        assert torch.equal(cpu.scales.view(torch.uint8) if cpu.scales.dtype.itemsize == 1 else cpu.scales,
                           (gpu.scales.view(torch.uint8) if gpu.scales.dtype.itemsize == 1 else gpu.scales).cpu())
        assert torch.equal(cpu.tensor_scale, gpu.tensor_scale.cpu())
        assert torch.equal(dequantize(cpu), dequantize(gpu).cpu())


# ---- partial blocks, empty tensors, the top of FP32's range ----------------------------------------------

def _padded(x, axis, to):
    pad = list(x.shape)
    pad[axis] = to - x.shape[axis]
    return torch.cat([x, torch.zeros(pad)], dim=axis)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.spec)
@pytest.mark.parametrize("length", [1, 7, 20, 45])
@pytest.mark.parametrize("axis", [0, 1])
def test_partial_last_block_is_padded_with_zeros(fmt, length, axis):
    """L not a multiple of the block: codes and scales cover ceil(L / block) blocks, the last one padded with
    zeros (which do not change an amax); dequantize and quantize_dequantize return exactly L elements."""
    x = _x(length, 6, seed=length) if axis == 0 else _x(6, length, seed=length)
    padded = -(-length // fmt.block) * fmt.block
    q, ref = quantize(x, axis, fmt), quantize(_padded(x, axis, padded), axis, fmt)
    assert q.shape == tuple(x.shape) and q.padded_shape == ref.shape
    assert q.codes.shape[axis] == padded // 2 and q.scales.shape[axis] == padded // fmt.block
    assert torch.equal(q.codes, ref.codes) and torch.equal(q.tensor_scale, ref.tensor_scale)
    assert torch.equal(q.scales.view(torch.uint8), ref.scales.view(torch.uint8))
    assert torch.equal(dequantize(q), dequantize(ref).narrow(axis, 0, length))
    values, tensor_scale = quantize_dequantize(x, axis, fmt, dtype=torch.float32)
    assert values.shape == x.shape and torch.equal(values * tensor_scale, dequantize(q))


@pytest.mark.parametrize("rht_size", [16, 32])
def test_partial_rht_group_is_left_unrotated(rht_size):
    """With an RHT the whole groups are rotated and a trailing partial group is not (numerics.hadamard.rht);
    the GEMM of two operands quantized along the same partial axis still equals their rotated product."""
    x = _x(6, 40, seed=9)
    fmt = "int4/16/fp32/nearest"
    q = quantize(x, 1, fmt, rht=rht_size, rht_seed=4)
    assert torch.equal(q.codes, quantize(_padded(rht(x, 1, rht_size, 4), 1, 48), 1, fmt).codes)
    w = _x(5, 40, seed=10)
    qw = quantize(w, 1, fmt, rht=rht_size, rht_seed=4)
    out = gemm_reference(q, qw, torch.float32).double()
    exact = x.double() @ w.double().t()
    assert (out - exact).norm() / exact.norm() < 0.25


def test_wgrad_over_a_token_count_that_is_not_a_multiple_of_the_block():
    """dW = dY^T X with 37 tokens: both operands quantized along tokens (axis 0) with a padded last block;
    the reference GEMM equals the FP64 product of the dequantized operands."""
    dy, x = _x(37, 16, seed=5), _x(37, 32, seed=6)
    fmt = OperandFormat(Grid.INT4, 16, ScaleFormat.FP32, Rounding.STOCHASTIC)
    qdy = quantize(dy, 0, fmt, rht=16, seed=3, offset=1)
    qx = quantize(x, 0, "int4/16/fp32/nearest", rht=16)
    out = gemm_reference(qdy.t(), qx.t(), torch.float32)
    expected = dequantize(qdy).double().t() @ dequantize(qx).double()
    assert out.shape == (16, 32)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS + [OperandFormat(Grid.INT4, 16, ScaleFormat.E4M3, Rounding.STOCHASTIC)],
                         ids=lambda f: f.spec)
@pytest.mark.parametrize("shape, axis", [((0, 32), 1), ((0, 32), 0), ((4, 0), 1), ((3, 0, 32), 2)])
def test_empty_tensors(fmt, shape, axis):
    """A batch with no tokens (an MoE expert that received none) quantizes to empty codes."""
    x = torch.zeros(shape)
    q = quantize(x, axis, fmt, rht=16, seed=1)
    assert q.codes.numel() == 0 and q.scales.numel() == 0 and q.tensor_scale.item() == 1.0
    assert dequantize(q).shape == shape
    values, tensor_scale = quantize_dequantize(x, axis, fmt, rht=16, seed=1)
    assert values.shape == shape and tensor_scale.item() == 1.0
    if len(shape) == 2 and axis == 1:
        assert gemm_reference(q, quantize(_x(5, shape[1]), 1, fmt, seed=1)).shape == (shape[0], 5)


def test_gemm_with_an_empty_reduction_is_zero():
    qa = quantize(torch.zeros(0, 3), 0, "int4/16/fp32/nearest").t()
    qb = quantize(torch.zeros(0, 4), 0, "int4/16/fp32/nearest").t()
    assert torch.equal(gemm_reference(qa, qb), torch.zeros(3, 4))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.spec)
@pytest.mark.parametrize("rht_size", [0, 16, 64])
def test_finite_values_near_the_fp32_limit_stay_finite(fmt, rht_size):
    """A block of 1e38 gave NaN with every RHT (butterfly overflow); mxfp4 decoded 3e38 to Inf (E2M1's 4 at
    scale 2**126 is 2**128). Finite input now gives finite scales and finite dequantized values."""
    fmax = torch.finfo(torch.float32).max
    x = torch.full((4, 64), 1e38)
    x[1] = -3e38
    x[2] = torch.linspace(-1, 1, 64) * fmax
    x[3, ::2], x[3, 1::2] = fmax, -fmax
    q = quantize(x, 1, fmt, rht=rht_size, rht_seed=2)
    d = dequantize(q)
    assert torch.isfinite(q.scales.float()).all() and torch.isfinite(d).all()
    target = rht(x, 1, rht_size, 2) if rht_size else x
    if rht_size == 0:  # the unrotated values all fit: still within a few grid steps of x
        assert ((d - target).abs() <= 0.5 * target.abs().amax(dim=1, keepdim=True)).all()


def test_e8m0_top_exponent_keeps_levels_that_fit():
    """E8M0 UP picks 2**126 for amax in (q * 2**125, FP32_MAX]: levels above 3 would decode past FP32_MAX,
    so the block saturates at 3 * 2**126 (the one place UP saturates)."""
    for grid in Grid:
        x = torch.full((1, 32), -3e38)
        q = quantize(x, 1, OperandFormat(grid, 32, ScaleFormat.E8M0))
        assert q.scales.item() == 253
        assert torch.equal(dequantize(q), torch.full((1, 32), -3 * 2.0**126))
