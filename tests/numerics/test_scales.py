"""Scale formats: E4M3 two-level (against a transcription of NVIDIA's reference), E8M0 up/floor edges."""

import pytest
import torch

from ufp4_compile.numerics import (E8M0Rounding, Grid, OperandFormat, ScaleFormat, dequantize, quantize,
                                   scales)

FP32_MAX = torch.finfo(torch.float32).max


def _nvidia_nvfp4_reference(x: torch.Tensor):
    """NVIDIA's NVFP4 1x16 quantizer as published in TransformerEngine
    (custom_recipes/quantization_nvfp4.py, NVFP4QuantizerRef._quantize_blockwise_reference and
    cast_to_fp4x2), re-typed here for a 2-D FP32 tensor with a non-zero finite amax."""
    m, n = x.shape
    xb = x.view(m, n // 16, 16)
    vec_max = xb.abs().amax(-1, keepdim=True)
    fp4_max, fp8_max = torch.tensor(6.0), torch.tensor(448.0)
    enc = torch.min(fp8_max * fp4_max / x.abs().max(), torch.tensor(FP32_MAX))
    dec_global = torch.div(1.0, enc)
    decode = torch.min(vec_max * (enc * torch.reciprocal(fp4_max)), torch.tensor(FP32_MAX))
    decode = torch.clamp(decode, -fp8_max, fp8_max).to(torch.float8_e4m3fn)
    encode = torch.min(torch.div(1.0, decode.float() * dec_global), torch.tensor(FP32_MAX))
    y = torch.clamp(xb * encode, -fp4_max, fp4_max).reshape(m, n)
    # NVIDIA's E2M1 cast: closed intervals round to the even code, open ones to the odd code; a
    # negative value rounding to zero gets the sign bit (0x8), -0.0 does not.
    bins = [
        (lambda v: (v >= 0.0) & (v <= 0.25), 0), (lambda v: (v > 0.25) & (v < 0.75), 1),
        (lambda v: (v >= 0.75) & (v <= 1.25), 2), (lambda v: (v > 1.25) & (v < 1.75), 3),
        (lambda v: (v >= 1.75) & (v <= 2.5), 4), (lambda v: (v > 2.5) & (v < 3.5), 5),
        (lambda v: (v >= 3.5) & (v <= 5.0), 6), (lambda v: v > 5.0, 7),
        (lambda v: (v >= -0.25) & (v < -0.0), 8), (lambda v: (v < -0.25) & (v > -0.75), 9),
        (lambda v: (v <= -0.75) & (v >= -1.25), 10), (lambda v: (v < -1.25) & (v > -1.75), 11),
        (lambda v: (v <= -1.75) & (v >= -2.5), 12), (lambda v: (v < -2.5) & (v > -3.5), 13),
        (lambda v: (v <= -3.5) & (v >= -5.0), 14), (lambda v: v < -5.0, 15),
    ]
    r = torch.zeros_like(y, dtype=torch.uint8)
    for in_bin, code in bins:
        r[in_bin(y)] = code
    return r[:, ::2] + r[:, 1::2] * 16, decode.squeeze(-1), dec_global


@pytest.mark.parametrize("seed", range(3))
def test_e4m3_two_level_matches_nvidia_reference_bit_for_bit(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 128, generator=gen) * torch.logspace(-7, 3, 128)[None, :]  # tiny to huge blocks
    x[3, :16] = 0.0  # an all-zero block
    x[5, 32:48] = 1e-9  # a block whose E4M3 scale underflows to 0
    codes, block_scales, tensor_scale = _nvidia_nvfp4_reference(x)
    q = quantize(x, 1, OperandFormat(Grid.E2M1, 16, ScaleFormat.E4M3))
    assert torch.equal(q.scales.view(torch.uint8), block_scales.view(torch.uint8))
    assert torch.equal(q.codes, codes)
    assert torch.equal(q.tensor_scale.reshape(1), tensor_scale.reshape(1))


def test_e4m3_zero_tensor_and_tiny_block():
    fmt = OperandFormat(Grid.INT4, 16, ScaleFormat.E4M3)
    q = quantize(torch.zeros(2, 32), 1, fmt)
    assert q.tensor_scale.item() == 1.0  # enc = 1 when the global amax is 0 (NVIDIA's kernels)
    assert (q.codes == 0).all() and (q.scales.float() == 0).all()
    assert torch.equal(dequantize(q), torch.zeros(2, 32))
    x = torch.zeros(1, 32)
    x[0, 0] = 1000.0
    x[0, 16:] = 1e-4  # block scale 448 * 1e-4 / 1000 rounds to 0 in E4M3
    q = quantize(x, 1, fmt)
    assert q.scales.float()[0, 1].item() == 0.0
    assert torch.equal(dequantize(q)[0, 16:], torch.zeros(16))
    # The largest block gets exactly 448 and its amax element is exactly q_max.
    assert q.scales.float()[0, 0].item() == 448.0
    torch.testing.assert_close(dequantize(q)[0, 0], torch.tensor(1000.0), rtol=2**-20, atol=0)


def test_e4m3_huge_values_stay_finite():
    x = torch.full((1, 16), 3e38)
    x[0, 1] = -1e38
    q = quantize(x, 1, OperandFormat(Grid.E2M1, 16, ScaleFormat.E4M3))
    d = dequantize(q)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d[0, 0], torch.tensor(3e38), rtol=1e-6, atol=0)


# (amax, q_max, rounding) -> stored E8M0 byte.
@pytest.mark.parametrize("amax,grid,rounding,stored", [
    (6.0, Grid.E2M1, E8M0Rounding.UP, 127),  # amax/6 == 1 exactly: 2**0
    (6.0000005, Grid.E2M1, E8M0Rounding.UP, 128),  # just above: round up to 2**1
    (7.0, Grid.INT4, E8M0Rounding.UP, 127),
    (7.9, Grid.INT4, E8M0Rounding.UP, 128),
    (7.9, Grid.INT4, E8M0Rounding.FLOOR, 127),  # floor(log2 7.9) - 2 = 0
    (8.0, Grid.E2M1, E8M0Rounding.FLOOR, 128),  # floor(log2 8) - 2 = 1
    (0.0, Grid.E2M1, E8M0Rounding.UP, 0),  # all-zero block: 2**-127
    (0.0, Grid.E2M1, E8M0Rounding.FLOOR, 0),
    (1e-45, Grid.E2M1, E8M0Rounding.UP, 0),  # subnormal amax: clamped to -127
    (3e-39, Grid.INT4, E8M0Rounding.UP, 0),  # amax/7 < 2**-127: clamped
    (3e38, Grid.E2M1, E8M0Rounding.UP, 253),  # ceil(log2(5e37)) = 126
    (3e38, Grid.E2M1, E8M0Rounding.FLOOR, 252),  # floor(log2 3e38) - 2 = 125
])
def test_e8m0_exponent_edges(amax, grid, rounding, stored):
    x = torch.zeros(1, 32)
    x[0, 3] = -amax
    q = quantize(x, 1, OperandFormat(grid, 32, ScaleFormat.E8M0, e8m0_rounding=rounding))
    assert q.scales.dtype == torch.uint8
    assert q.scales.item() == stored


def test_e8m0_up_never_saturates_floor_may():
    x = torch.full((1, 32), 7.9)
    up = quantize(x, 1, OperandFormat(Grid.INT4, 32, ScaleFormat.E8M0))
    floor = quantize(x, 1, OperandFormat(Grid.INT4, 32, ScaleFormat.E8M0, e8m0_rounding="floor"))
    assert dequantize(up)[0, 0].item() == 8.0  # 7.9 / 2 = 3.95 -> 4, times 2
    assert dequantize(floor)[0, 0].item() == 7.0  # saturated at q_max * 2**0


def test_pow2_is_exact_over_the_whole_range():
    e = torch.arange(-149, 128)
    expected = torch.tensor([2.0 ** int(k) for k in e], dtype=torch.float64).float()
    assert torch.equal(scales.pow2(e), expected)
