"""quantize / dequantize / gemm_reference: layout, validation, special values, properties."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ufp4_compile.numerics import (E8M0Rounding, Grid, OperandFormat, QuantizedTensor, Rounding, ScaleFormat,
                                   dequantize, gemm_reference, quantize, rht, unpack_codes)

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
    (dict(x=_x(2, 24)), "axis 1 has length 24, which is not a multiple of the block 16"),
    (dict(axis=2), "axis=2 is not valid for a 2-d tensor"),
    (dict(rht=8), "rht=8 is not valid; valid values"),
    (dict(x=_x(2, 48), rht=32), "not a multiple of the rht size 32"),
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
    if fmt.scale is ScaleFormat.E4M3:
        # A non-finite global amax poisons the tensor scale, hence every block.
        assert torch.isnan(q.tensor_scale) and torch.isnan(d).all()
        assert (q.scales.view(torch.uint8) == 0x7F).all()
    else:
        assert torch.isfinite(d[2, fmt.block:]).all() and torch.isfinite(d[:2]).all()
        stored_nan = q.scales[2, 0]
        assert torch.isnan(stored_nan) if fmt.scale is ScaleFormat.FP32 else stored_nan.item() == 255


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
