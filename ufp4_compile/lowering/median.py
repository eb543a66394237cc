"""Inductor lowering of ``ufp4::sample_median`` (the mean split's ``mu``): one launch of
``kernels.median._sample_median_kernel`` from the generated code, reading the sampled tokens where they lie.

Inductor's own lowering of the op's reference took a copy of the sample, ``aten.nanmedian`` (an extern
call of five launches) and a fix-up kernel for every split. Off CUDA, with symbolic sizes, and for inputs the
kernel refuses (``kernels.median.refusal``), the op's own implementation runs as an extern call.
"""

from __future__ import annotations

import torch
from torch._inductor import ir
from torch._inductor.lowering import fallback_handler

from ufp4_compile.lowering.kernel_calls import _contiguous, _empty, _on_cuda, _static_sizes, kernel_launch


def _fixed_strides(x):
    """``x`` realized with a fixed layout (its own strides where it has them, else contiguous) and its
    strides as ints; None for symbolic strides."""
    x = ir.ExternKernel.realize_input(x)
    try:
        ir.as_storage_and_layout(x, freeze=True)
    except NotImplementedError:
        x = _contiguous(x)
    x = x if isinstance(x, ir.TensorBox) else ir.TensorBox(x)
    try:
        return x, tuple(int(s) for s in x.get_stride())
    except TypeError:
        return None


def lower_sample_median(x):
    from ufp4_compile.kernels.median import DTYPES, _sample_median_kernel, launch_plan

    sizes = _static_sizes(x)
    fixed = None
    if (sizes is not None and _on_cuda(x) and len(sizes[0]) == 2 and sizes[0][1] > 0
            and x.get_dtype() in DTYPES):
        fixed = _fixed_strides(x)
    if fixed is None:
        return fallback_handler(torch.ops.ufp4.sample_median.default, add_to_fallback_set=False)(x)
    (tokens, channels), (x, strides) = sizes[0], fixed
    grid, num_warps, scalars, constexprs = launch_plan(tokens, channels, x.get_dtype())
    mu = _empty((1, channels), torch.float32, x.get_device())
    kernel_launch(_sample_median_kernel, grid, num_warps, dict(x_ptr=x, mu_ptr=mu),
                  {"stride_t": strides[0], "stride_c": strides[1], **scalars, **constexprs})
    return mu
