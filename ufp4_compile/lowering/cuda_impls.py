"""CUDA implementations of the ``torch.ops.ufp4`` ops: the Triton launchers of ``ufp4_compile.kernels``.

Eager calls on CUDA tensors, and Inductor's fallback calls for ops it does not lower (``ufp4::quantize``,
``ufp4::dequantize``, and ``ufp4::scaled_mm`` when no template choice fits), dispatch here; CPU tensors
keep the op's reference implementation.
"""

from __future__ import annotations

import torch

_registered = False


def _quantize(x, axis, fmt, rht, rht_seed, seed, offset, shift=None):
    from ufp4_compile.kernels.quantize import quantize

    return quantize(x, axis, fmt, rht, rht_seed, seed, offset, shift)


def _quantize_dequantize(x, axis, fmt, rht, rht_seed, seed, offset, dtype, shift=None):
    from ufp4_compile.kernels.quantize import quantize_dequantize

    return quantize_dequantize(x, axis, fmt, rht, rht_seed, seed, offset, dtype, shift)


def _dequantize(codes, scales, tensor_scale, axis, fmt, dtype):
    from ufp4_compile.kernels.dequantize import dequantize

    return dequantize(codes, scales, tensor_scale, axis, fmt, dtype)


def _scaled_mm(a_codes, a_scales, a_ts, b_codes, b_scales, b_ts, a_fmt, b_fmt, compute_dtype, out_dtype):
    from ufp4_compile.kernels.gemm import scaled_mm

    return scaled_mm(a_codes, a_scales, a_ts, b_codes, b_scales, b_ts, a_fmt, b_fmt, compute_dtype, out_dtype)


def _sample_median(x):
    from ufp4_compile import numerics
    from ufp4_compile.kernels import median

    return numerics.sample_median(x) if median.refusal(x) else median.sample_median(x)


def register_cuda_impls() -> None:
    """Register the Triton launchers as the ``cuda`` kernels of the ufp4 ops (idempotent)."""
    global _registered
    if _registered:
        return
    import ufp4_compile.ops  # noqa: F401  (defines the ops)

    for name, fn in (("quantize", _quantize), ("quantize_dequantize", _quantize_dequantize),
                     ("dequantize", _dequantize), ("scaled_mm", _scaled_mm),
                     ("sample_median", _sample_median)):
        torch.library.register_kernel(f"ufp4::{name}", "cuda", fn)
    _registered = True
