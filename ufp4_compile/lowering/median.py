"""Inductor lowering of ``ufp4::sample_median`` (the mean split's ``mu``): one launch of
``kernels.median._sample_median_kernel`` from the generated code, reading the sampled tokens where they lie.

Inductor's own lowering of the op's reference took a copy of the sample, ``aten.nanmedian`` (an extern
call of five launches) and a fix-up kernel for every split. The same launch also quantizes ``mu`` where the
split quantizes it next (:func:`_fused_quantization`): the quantize node's result waits for it as a paired
launch's does. Off CUDA, with symbolic sizes, and for inputs the kernel refuses (``kernels.median.refusal``),
the op's own implementation runs as an extern call.
"""

from __future__ import annotations

import torch
from torch._inductor import ir
from torch._inductor.lowering import fallback_handler

from ufp4_compile.lowering import kernel_calls
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


def _fused_quantization(node, channels: int):
    """The quantization of ``mu`` that the selection launch of ``node`` (the ``sample_median`` node being
    lowered) takes too, as ``(its node, its call: partners._quantize_call)``, or None: with pairing on (its
    result waits for its node as a pair's does, ``kernel_calls._lower_paired``), the first later ``quantize``
    / ``quantize_dequantize`` of ``mu`` along its last axis with no shift, a seed that exists already, and a
    format and RHT that ``kernels.median.quantize_refusal`` accepts. A split quantizes ``mu`` for its rank-one
    term: a launch fewer per split."""
    from torch._inductor.virtualized import V

    from ufp4_compile.kernels.median import quantize_refusal
    from ufp4_compile.lowering import partners
    from ufp4_compile.numerics.quantize import as_format

    if node is None or not partners._pairing:
        return None
    state = kernel_calls.pairing_state()
    best = None
    for user in node.users:
        call = partners._quantize_call(user)
        if (call is None or call[0] is not node or call[1] not in (1, -1) or call[8] is not None
                or user in state["ahead"] or (best is not None and state["order"][user] > state["order"][best[0]])):
            continue
        if hasattr(call[5], "op") and call[5] not in V.graph.env:
            continue
        if quantize_refusal(channels, as_format(call[2]), call[3]) is None:
            best = (user, call)
    return best


def lower_sample_median(x):
    from torch._inductor.virtualized import V

    from ufp4_compile.kernels.median import (DTYPES, NO_QUANTIZE, _sample_median_kernel, launch_plan,
                                             quantize_constexprs)

    sizes = _static_sizes(x)
    fixed = None
    if (sizes is not None and _on_cuda(x) and len(sizes[0]) == 2 and sizes[0][1] > 0
            and x.get_dtype() in DTYPES):
        fixed = _fixed_strides(x)
    if fixed is None:
        return fallback_handler(torch.ops.ufp4.sample_median.default, add_to_fallback_set=False)(x)
    (tokens, channels), (x, strides) = sizes[0], fixed
    grid, num_warps, scalars, constexprs = launch_plan(tokens, channels, x.get_dtype())
    device = x.get_device()
    mu = _empty((1, channels), torch.float32, device)
    tensors = dict(x_ptr=x, mu_ptr=mu, q_codes_ptr=None, q_scales_ptr=None, q_values_ptr=None, q_ts_ptr=None,
                   q_seed_ptr=None)
    scalars.update(stride_t=strides[0], stride_c=strides[1], q_offset=0, q_rht_key=0, **NO_QUANTIZE)
    fused = _fused_quantization(V.graph.current_node, channels)
    result = None
    if fused is not None:
        from ufp4_compile.kernels.quantize import rht_key
        from ufp4_compile.lowering.partners import _plan

        user, call = fused
        plan = _plan((1, channels), 4, call[1], call[2], call[3], call[7])
        q = quantize_constexprs(plan)
        outputs = kernel_calls._outputs(plan, call[7], (1, channels), device, user)
        seed = V.graph.env[call[5]] if hasattr(call[5], "op") else None
        tensors.update(q_codes_ptr=outputs[0], q_scales_ptr=outputs[1], q_values_ptr=outputs[2],
                       q_ts_ptr=outputs[3], q_seed_ptr=seed if q["STOCHASTIC"] else None)
        scalars.update(q_offset=int(call[6]), q_rht_key=rht_key(plan, call[4]), **q)
        result = kernel_calls._result(outputs, call[7], device)
    kernel_launch(_sample_median_kernel, grid, num_warps, tensors, {**scalars, **constexprs})
    if result is not None:
        kernel_calls.pairing_state()["ahead"][user] = result
    return mu
