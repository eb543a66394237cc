"""A graph input's bf16 cast folded into the quantize launches that read it (docs/kernels.md, "The weight casts
folded into the quantize launches").

Under autocast a linear layer's weight reaches its quantizations as ``convert_element_type(primals_k, bf16)``:
an Inductor kernel and a bf16 buffer that only our launches read. :func:`folded_cast` names the FP32 graph input
a launch can read in its place; the launch then rounds each element to bf16 as it loads it
(``kernels.quantize_tile._loaded``, the ``ROUND`` constexprs of ``kernels.quantize.rounding_constexprs``): the
cast's bits. Nobody else reading the cast, Inductor launches no cast kernel and allocates no copy.
"""

from __future__ import annotations

import contextlib

import torch
from torch._inductor import ir

from ufp4_compile.lowering.partners import _quantize_call

_folding = True


@contextlib.contextmanager
def fold_casts(enabled: bool = True):
    """Fold a graph input's bf16 cast into the quantize launches that read it (:func:`folded_cast`) while
    compiling (the default; ``enabled=False``: the launches read the cast, which Inductor computes). Keep the
    setting for the first backward too: the backward compiles then."""
    if enabled is not True and enabled is not False:
        raise ValueError(f"enabled={enabled!r} is not valid: True or False")
    global _folding
    previous, _folding = _folding, enabled
    try:
        yield
    finally:
        _folding = previous


def folded_cast(call) -> ir.TensorBox | None:
    """The FP32 source of the bf16 cast that the quantize ``call`` (``partners._quantize_call``'s tuple)
    quantizes, lowered, where the launches read it in place of the cast: the source is a graph input (a
    weight's FP32 master copy under autocast) on a CUDA device with static sizes and contiguous strides, and
    every reader of the cast is a quantization without a shift, so no one else needs the cast and Inductor,
    which computes a node only for a reader, launches no cast kernel and allocates no bf16 copy. Else None:
    the launch reads the cast."""
    from torch._inductor.virtualized import V

    cast = call[0] if _folding and call is not None and call[8] is None else None
    if (not isinstance(cast, torch.fx.Node) or cast.target is not torch.ops.prims.convert_element_type.default
            or cast.args[1] is not torch.bfloat16 or cast.kwargs):
        return None
    source = cast.args[0]
    if (not isinstance(source, torch.fx.Node) or source.op != "placeholder"
            or getattr(source.meta.get("val"), "dtype", None) is not torch.float32):
        return None
    for user in cast.users:
        other = _quantize_call(user)
        if other is None or other[0] is not cast or other[8] is not None:
            return None
    lowered = V.graph.graph_inputs.get(source.target)  # (its env entry is gone after its last reader, the cast)
    if not isinstance(lowered, ir.TensorBox):
        return None
    device = lowered.get_device()
    if device is None or device.type != "cuda":
        return None
    try:
        sizes = [int(s) for s in lowered.get_size()]
        strides = [int(s) for s in lowered.get_stride()]
    except TypeError:  # a symbolic size or stride
        return None
    return lowered if strides == [int(s) for s in ir.FlexibleLayout.contiguous_strides(sizes)] else None
