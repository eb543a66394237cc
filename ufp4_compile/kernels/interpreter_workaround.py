"""Workarounds for two bugs of Triton 3.6's interpreter (``TRITON_INTERPRET=1``), which CI runs kernels in.

1. Upstream triton-lang/triton#9171 ("numpy 2.4.0 causes exceptions in interpreter tests"): the
   interpreter's ``tensor.__index__`` calls ``int()`` on a 1-element array, which NumPy 2.4 refuses ("only
   0-dimensional arrays can be converted to Python scalars"), so ``for k in range(0, K, BLOCK_K)`` fails.
   Fix: squeeze first (the upstream patch). Delete once the pinned Triton carries it.
2. ``InterpreterBuilder.create_dot`` multiplies bfloat16 operands as their raw uint16 storage (only FP8
   operands are converted), so a bf16 ``tl.dot`` returns garbage. Fix: widen bf16 operands to FP32 first,
   which is exactly what the tensor cores compute (bf16 products are exact in FP32). Delete once the
   interpreter converts bf16 in ``create_dot``.
3. ``InterpreterBuilder.cast_impl`` truncates FP32 -> bf16 (``_convert_float`` without a rounding mode),
   where compiled kernels round to nearest even. Fix: round to nearest even on the bits. Delete once the
   interpreter rounds.
4. The same ``cast_impl`` converts a bf16 subnormal to FP32 wrongly (3.03e-39 -> 3.67e-40, 9.18e-41 -> 0)
   and decodes the float8_e4m3fn NaN 0x7F as 480 (its FP8 conversion knows no NaN). Fix: bf16 -> FP32 as
   the bits shifted left by 16, E4M3 -> FP32 decoded exactly (0x7F / 0xFF NaN), as compiled kernels do.

Scope: the interpreter only (compiled kernels are untouched), applied once when ``ufp4_compile.kernels``
is imported with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os


def apply() -> bool:
    """Patch the interpreter's ``__index__`` to squeeze first; True if the patch was (already) applied."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_ufp4_patched", False):
        return True

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched._ufp4_patched = True
    interpreter._patch_lang_tensor = patched
    _patch_bf16_dot(interpreter)
    return True


def _patch_bf16_dot(interpreter) -> None:
    import numpy as np
    import triton.language as tl

    builder_cls = interpreter.InterpreterBuilder
    original = builder_cls.create_dot

    def widen(handle):
        if handle.dtype.scalar == tl.bfloat16:
            bits = handle.data.astype(np.uint32) << 16
            return interpreter.TensorHandle(bits.view(np.float32), tl.float32)
        return handle

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    builder_cls.create_dot = create_dot

    cast_impl = builder_cls.cast_impl

    def cast_rne(self, src, dst_type):
        if src.dtype.scalar == tl.bfloat16 and dst_type.scalar == tl.float32:  # exact: the bits, shifted
            bits = np.asarray(src.data).view(np.uint16).astype(np.uint32) << 16
            return interpreter.TensorHandle(bits.view(np.float32), tl.float32)
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = src.data.astype(np.float32).view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            nan = np.isnan(src.data)
            rounded = np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        return cast_impl(self, src, dst_type)

    builder_cls.cast_impl = cast_rne

    fp_to_fp = builder_cls.create_fp_to_fp

    def fp_to_fp_exact(self, src, dst_type, rounding_mode):  # the FP8 -> FP32 path of ``.to``
        if src.dtype.scalar == tl.float8e4nv and dst_type.scalar == tl.float32:
            return interpreter.TensorHandle(_e4m3_to_f32(np.asarray(src.data).view(np.uint8)), tl.float32)
        return fp_to_fp(self, src, dst_type, rounding_mode)

    builder_cls.create_fp_to_fp = fp_to_fp_exact


def _e4m3_to_f32(b):
    """float8_e4m3fn bytes to FP32, exactly, with 0x7F / 0xFF as NaN (the format has no infinity)."""
    import numpy as np

    b = b.astype(np.int32)
    exp, mant = (b >> 3) & 0xF, b & 7
    mag = np.where(exp == 0, mant * 2.0**-9, (1 + mant / 8.0) * np.exp2(exp - 7.0))
    mag = np.where((exp == 0xF) & (mant == 7), np.nan, mag)
    return np.where(b & 0x80, -mag, mag).astype(np.float32)
