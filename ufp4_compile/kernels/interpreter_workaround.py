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
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = src.data.astype(np.float32).view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            nan = np.isnan(src.data)
            rounded = np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        return cast_impl(self, src, dst_type)

    builder_cls.cast_impl = cast_rne
