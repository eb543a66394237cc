"""Block scales (docs/numerics.md): FP32 amax/q_max, NVFP4 two-level E4M3 x FP32, E8M0 powers of two.

Every function works on the block amax (FP32, NaN or +Inf for a block holding a non-finite value) and is
plain IEEE FP32 arithmetic, so a kernel that evaluates the same expressions gets the same bits.
"""

from __future__ import annotations

import torch

from ufp4_compile.numerics.formats import E8M0Rounding, ScaleFormat

FP32_MAX = torch.finfo(torch.float32).max
E4M3_MAX = 448.0  # largest finite float8_e4m3fn
E4M3_NAN_BITS = 0x7F
E8M0_BIAS = 127
E8M0_NAN = 255
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127


def _f32(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d FP32 constant on ``like``'s device. Divide by these, never by a Python number: CUDA computes
    ``tensor / scalar`` as a multiplication by the rounded reciprocal, which is not IEEE division."""
    return torch.tensor(value, dtype=torch.float32, device=like.device)


# ---- FP32 ----------------------------------------------------------------------------------------------

def fp32_scales(amax: torch.Tensor, q_max: float) -> torch.Tensor:
    """``s = amax / q_max`` (IEEE division); NaN for a non-finite block."""
    s = amax / _f32(q_max, amax)
    return torch.where(torch.isfinite(amax), s, float("nan"))


# A block scale below 2**-64 is multiplied by 2**64 before its reciprocal is taken (and the block's values
# by the same power of two), so the reciprocal never overflows: (x * p) * (1 / (s * p)) is x * (1 / s)
# rounded as if FP32 had no exponent limit.
TINY_SCALE = 2.0 ** -64
TINY_SCALE_LIFT = 2.0 ** 64


def fp32_encode(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, r)``: ``y = (x * p) * r`` scales a block by its FP32 scale ``s``, one IEEE division per block
    (``r = 1 / (s * p)``) and two exact-or-once-rounded multiplications per element (docs/numerics.md)."""
    tiny = s < TINY_SCALE
    p = torch.where(tiny, _f32(TINY_SCALE_LIFT, s), _f32(1.0, s))
    return p, _f32(1.0, s) / (s * p)


# ---- E4M3 two-level (NVFP4) ------------------------------------------------------------------------------
# Bit-compatible with NVIDIA's NVFP4 quantizer: TransformerEngine
# transformer_engine/pytorch/custom_recipes/quantization_nvfp4.py (NVFP4QuantizerRef) and the CUDA/CuTe
# helpers compute_global_encode_scaling_factor_FP4 / compute_decoding_scaling_factor, with q_max in place
# of FLOAT4_E2M1_MAX = 6 and FLOAT8_E4M3_MAX = 448.

def e4m3_tensor_encode(global_amax: torch.Tensor, q_max: float) -> torch.Tensor:
    """Tensor encode scale ``enc = min((448 q_max) / g, FP32_MAX)``; 1 when g == 0; NaN when g is non-finite."""
    g = global_amax.float()
    enc = torch.minimum(_f32(E4M3_MAX * q_max, g) / g, _f32(FP32_MAX, g))
    enc = torch.where(g == 0, _f32(1.0, g), enc)
    return torch.where(torch.isfinite(g), enc, float("nan"))  # a canonical (positive) NaN


def e4m3_block_scales(amax: torch.Tensor, enc: torch.Tensor, q_max: float) -> torch.Tensor:
    """Block decode scales ``e4m3(min(amax * (enc * fp32(1/q_max)), 448))``, round to nearest even.

    NVIDIA folds 1/q_max into the tensor multiplier first (``enc * fp32(1/q_max)``), then multiplies by the
    block amax; this rounding order is part of bit compatibility. NaN (0x7F) for non-finite input.
    """
    inv_q = _f32(1.0, amax) / _f32(q_max, amax)
    s = amax * (enc * inv_q)
    s = torch.clamp(torch.minimum(s, _f32(FP32_MAX, amax)), -E4M3_MAX, E4M3_MAX)
    # One NaN encoding (0x7F, sign clear) whatever NaN the arithmetic produced.
    s = torch.where(torch.isfinite(amax) & ~torch.isnan(s), s, float("nan"))
    return s.to(torch.float8_e4m3fn)


def e4m3_block_encode(scales: torch.Tensor, tensor_scale: torch.Tensor) -> torch.Tensor:
    """Per-block encode multiplier ``min(1 / (float(s) * tensor_scale), FP32_MAX)`` (FP32_MAX when s == 0)."""
    denom = scales.float() * tensor_scale
    return torch.minimum(_f32(1.0, denom) / denom, _f32(FP32_MAX, denom))


# ---- E8M0 ---------------------------------------------------------------------------------------------

def _ceil_log2(v: torch.Tensor) -> torch.Tensor:
    """Exact ``ceil(log2 v)`` for finite v >= 0 (int64; v == 0 gives the minimum exponent)."""
    mant, exp = torch.frexp(v)  # v = mant * 2**exp, mant in [0.5, 1)
    e = exp.to(torch.int64) - (mant == 0.5).to(torch.int64)
    return torch.where(v > 0, e, E8M0_MIN_EXP)


def _floor_log2(v: torch.Tensor) -> torch.Tensor:
    mant, exp = torch.frexp(v)
    return torch.where(v > 0, exp.to(torch.int64) - 1, E8M0_MIN_EXP)


def e8m0_exponents(amax: torch.Tensor, q_max: float, rounding: E8M0Rounding) -> torch.Tensor:
    """Unbiased exponents e (int64, clamped to [-127, 127]) of the power-of-two block scales.

    ``UP``: ``ceil(log2(amax / q_max))`` of the FP32 quotient, so nothing saturates. ``FLOOR`` (OCP MX):
    ``floor(log2 amax) - floor(log2 q_max)``, and floor(log2 q_max) = 2 for both grids.
    """
    if rounding is E8M0Rounding.UP:
        e = _ceil_log2(torch.where(torch.isfinite(amax), amax / _f32(q_max, amax), 0.0))
    else:
        e = _floor_log2(torch.where(torch.isfinite(amax), amax, 0.0)) - 2
    return e.clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)


def e8m0_encode_exponents(amax: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """Stored E8M0 bytes: ``e + 127``, 255 (NaN) for a non-finite block."""
    stored = exponents + E8M0_BIAS
    return torch.where(torch.isfinite(amax), stored, E8M0_NAN).to(torch.uint8)


def pow2(exponents: torch.Tensor) -> torch.Tensor:
    """Exact FP32 ``2**e`` for integer e in [-149, 127], built from the bit pattern."""
    e = exponents.to(torch.int64)
    normal = ((e + 127).clamp(min=1) << 23).to(torch.int32).view(torch.float32)
    subnormal = (torch.ones_like(e) << (e + 149).clamp(0, 22)).to(torch.int32).view(torch.float32)
    return torch.where(e >= -126, normal, subnormal)


# ---- decoding ------------------------------------------------------------------------------------------

def decode_scales(scales: torch.Tensor, scale: ScaleFormat) -> torch.Tensor:
    """Stored block scales to FP32 values (E8M0: 2**(stored - 127), NaN for 255)."""
    if scale is ScaleFormat.E8M0:
        stored = scales.to(torch.int64)
        return torch.where(stored == E8M0_NAN, float("nan"), pow2(stored - E8M0_BIAS))
    return scales.float()
