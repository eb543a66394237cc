"""Triton helpers shared by the quantize, dequantize and GEMM kernels: the bit-level pieces of
docs/numerics.md written so that compiled kernels and the interpreter give the reference's bits.

Formats reach kernels as small integer constexprs (:func:`format_constants`); the formulas themselves are
the reference's (``ufp4_compile.numerics``), transcribed literally: IEEE division through
``tl.math.div_rn``, exponents read off FP32 bits, E4M3 rounding done on the bits (the interpreter's own
FP8 cast rounds ties away from zero, the hardware's to even; doing it on the bits makes both agree).
"""

from __future__ import annotations

import dataclasses
import functools

import triton
import triton.language as tl

from ufp4_compile.numerics.formats import E8M0Rounding, Grid, OperandFormat, Rounding, ScaleFormat

GRID_IDS = {Grid.INT4: 0, Grid.E2M1: 1}
SCALE_IDS = {ScaleFormat.FP32: 0, ScaleFormat.E4M3: 1, ScaleFormat.E8M0: 2}

# Launch options for kernels that must reproduce the reference bit for bit: no FMA contraction (the
# reference rounds every product), and IEEE subnormals in libdevice (Triton's default flushes them).
EXACT_LAUNCH = {"enable_fp_fusion": False, "enable_reflect_ftz": False}


@dataclasses.dataclass(frozen=True)
class FormatConstants:
    """The constexprs a kernel needs for one :class:`OperandFormat`."""

    grid: int
    scale: int
    block: int
    block_2d: bool
    stochastic: bool
    e8m0_floor: bool
    q_max: float


@functools.lru_cache(maxsize=256)
def format_constants(fmt: OperandFormat) -> FormatConstants:
    return FormatConstants(
        grid=GRID_IDS[fmt.grid],
        scale=SCALE_IDS[fmt.scale],
        block=fmt.block,
        block_2d=fmt.block_2d,
        stochastic=fmt.rounding is Rounding.STOCHASTIC,
        e8m0_floor=fmt.e8m0_rounding is E8M0Rounding.FLOOR,
        q_max=fmt.q_max,
    )


# ---- bits ----------------------------------------------------------------------------------------------

@triton.jit
def abs_bits(x):
    """|x| as int32 bits: ordered like |x|, NaN above +Inf, so an integer max propagates NaN."""
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def is_finite(x):
    return abs_bits(x) < 0x7F800000


@triton.jit
def round_half_even(a):
    """Round-half-even of finite ``a >= 0`` below 2**31, as (int32 value, float32 value)."""
    f = a.to(tl.int32)  # truncation == floor for a >= 0
    frac = a - f.to(tl.float32)  # exact
    up = (frac > 0.5) | ((frac == 0.5) & ((f & 1) == 1))
    r = f + up.to(tl.int32)
    return r, r.to(tl.float32)


@triton.jit
def e4m3_round(v):
    """Round finite ``v`` in [0, 448] to float8_e4m3fn (nearest, ties to even): (stored byte, FP32 value)."""
    # Normal range (v >= 2**-6): keep 3 mantissa bits of the FP32 pattern, rounding to nearest even.
    bits = v.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # -1048576 == 0xFFF00000
    normal_byte = (((rounded >> 23) - 120) << 3) | ((rounded >> 20) & 7)
    # Subnormal range: multiples of 2**-9 (the scaling by 2**9 is exact).
    sub_q, sub_val = round_half_even(v * 512.0)
    is_normal = v >= 0.015625
    byte = tl.where(is_normal, normal_byte, sub_q)
    value = tl.where(is_normal, rounded.to(tl.float32, bitcast=True), sub_val * 0.001953125)
    return byte, value


@triton.jit
def pow2(e):
    """Exact FP32 ``2**e`` for int32 ``e`` in [-149, 127] (subnormals built from the bit pattern)."""
    normal = (tl.maximum(e + 127, 1) << 23).to(tl.float32, bitcast=True)
    shift = tl.minimum(tl.maximum(e + 149, 0), 22)
    subnormal = (tl.full(e.shape, 1, tl.int32) << shift).to(tl.float32, bitcast=True)
    return tl.where(e >= -126, normal, subnormal)


# ---- decoding --------------------------------------------------------------------------------------------

@triton.jit
def decode_nibbles(n, GRID: tl.constexpr):
    """FP32 grid values of 4-bit nibbles (int32 tensor, 0..15): INT4 two's complement or OCP E2M1.

    Built from FP32 bit patterns (no integer-to-float conversion, a quarter-rate instruction on GPUs):
    INT4 ``c = (n ^ 8) - 8`` is ``float(2**23 + (n ^ 8)) - (2**23 + 8)``, exact; E2M1 level k >= 2 is
    ``(k + 252) << 22`` (exponent and mantissa bit in place), level 1 is 0.5, the sign is bit 3.
    """
    if GRID == 0:
        return ((n ^ 8) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
    k = n & 7
    mag = tl.where(k == 0, 0, (k + 252 - (k == 1).to(tl.int32)) << 22)
    return (mag | ((n & 8) << 28)).to(tl.float32, bitcast=True)


@triton.jit
def decode_scales(s, SCALE: tl.constexpr):
    """FP32 values of stored block scales (FP32, float8_e4m3fn, or uint8 E8M0 exponents with 255 = NaN)."""
    if SCALE == 2:
        stored = s.to(tl.int32)
        value = pow2(stored - 127)
        return tl.where(stored == 255, float("nan"), value)
    return s.to(tl.float32)
