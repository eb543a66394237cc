"""Inductor lowering of ``ufp4::round_to_bf16``: FP32 to bfloat16, rounded to nearest even, that stays a
rounding inside a fused kernel.

Inductor computes a bfloat16 intermediate in FP32 inside the kernel it fuses into, so ``x.to(bfloat16)``
followed by a consumer that upcasts it (autocast's backward, an activation) reads the unrounded FP32 ``x``.
The tensor-scale epilogue of a dense GEMM (``passes/dense_gemms.py``) must give the rounded product, the
codes path's GEMM output. Rounding through integer bit operations in the graph did that, at about a dozen
ops per element; Inductor then found the fused SwiGLU backward of the E4M3 recipes too large to inline
(``realize_opcount_threshold``) and wrote an extra intermediate. This lowering is the two conversions
Inductor itself emits where it emulates eager's casts: down to bfloat16 with its storage type (a real
rounding), then back to the compute type.

On CUDA only: Inductor's C++ kernels map the upcast of such a conversion back to its FP32 source through
their common-subexpression cache (checked: the fused upcast read the unrounded value), so a CPU graph calls
the op's own implementation, whose stored bfloat16 output is rounded.
"""

from __future__ import annotations

import torch
from torch._inductor import ir
from torch._inductor.lowering import fallback_handler
from torch._inductor.virtualized import ops


def lower_round_to_bf16(x):
    """A bfloat16 pointwise node of ``x`` (FP32) rounded to nearest even (NaN stays NaN, overflow to Inf);
    off CUDA, the op's own implementation as an extern call."""
    if x.get_device().type != "cuda":
        return fallback_handler(torch.ops.ufp4.round_to_bf16.default, add_to_fallback_set=False)(x)
    loader = x.make_loader()

    def inner_fn(index):
        down = ops.to_dtype(loader(index), torch.bfloat16, use_compute_types=False)
        return ops.to_dtype(down, torch.bfloat16)

    return ir.Pointwise.create(device=x.get_device(), dtype=torch.bfloat16, inner_fn=inner_fn,
                               ranges=list(x.get_size()))
