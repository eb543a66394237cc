"""A dense GEMM's FP32 epilogue taken piece by piece where its output is only ever read in pieces.

Where a dense GEMM (``passes/dense_gemms.py``) writes its product in FP32, an elementwise epilogue follows it:
the E4M3 recipes' tensor scales (``product * (ts_a * ts_b)``), a mean split's rank-one term, a bias, and the
conversion to the compute dtype (``ufp4.round_to_bf16``, ``convert_element_type``). Models often read a GEMM's
output only in pieces along its last dimension: SwiGLU's gate and up halves (``chunk``/``split``), attention's
q, k and v (a view that splits the last dimension, a permute, a ``select`` per piece). Inductor then writes
the whole epilogue's output (the bf16 tensor, saved for the backward or read by an extern kernel) in a kernel
of its own, because its consumers iterate over the pieces' shapes: in the E4M3 training step of the bench GPT
a read of the FP32 product and a bf16 write and read per layer for the SwiGLU input (0.77 ms a step) and for
q, k, v (0.44 ms).

Elementwise ops commute with slicing, so this pass takes the epilogue on each piece of the FP32 product (a
view): ``round(P * ts).split(F)`` becomes ``round(P[:, :F] * ts), round(P[:, F:] * ts)``. Each piece's
epilogue then has its consumers' shape and fuses into their kernel (the SwiGLU forward writes its saved halves
and the activation in one kernel; RoPE reads q and k from the product). Same ops on the same values: the
same bits. Operands of the epilogue that vary along the last dimension (a rank-one term, a bias) are sliced
with it. A conversion to bfloat16 (a mean split's output) becomes ``ufp4.round_to_bf16``: before, the whole
output was written in bfloat16 and its readers loaded the rounded values; fused, Inductor would hand them the
FP32 value a plain conversion leaves inside a kernel (``lowering/rounding.py``). Conversions to other
low-precision dtypes are not split.

It applies only to static sizes (a symbolic token count leaves the graph as it is) and to an FP32 ``mm``
followed by a chain of the elementwise ops below, each read by the next op
only, whose end is read (through views that keep the last dimension) by nothing but a split along that
dimension, or a view that splits the last dimension into ``(S, ...)`` and selects (or unbinds) along ``S``.
"""

from __future__ import annotations

import logging
import math
import operator

import torch
import torch.fx as fx

from ufp4_compile import ops
from ufp4_compile.passes.fx_utils import NodeBuilder, detect_fake_mode, value

log = logging.getLogger("ufp4_compile.passes.split_epilogues")
aten, prims = torch.ops.aten, torch.ops.prims

PRODUCTS = (aten.mm.dtype, aten.mm.default)  # the dense GEMMs' FP32 products
EPILOGUE_OPS = (aten.mul.Tensor, aten.add.Tensor, prims.convert_element_type.default, ops.round_to_bf16)
_LEADING_VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default)
_SPLITS = (aten.split.Tensor, aten.split_with_sizes.default)


def _target(node) -> object:
    return node.target if isinstance(node, fx.Node) and node.op == "call_function" else None


def _epilogue(end: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """``(product, chain)``: the FP32 2-D GEMM product ``end`` is an elementwise epilogue of, and the chain's
    ops from the product's reader to ``end``; None where ``end`` is not such an epilogue's end."""
    shape = tuple(value(end).shape) if value(end) is not None else None
    if shape is None or len(shape) != 2 or not _static(shape):
        return None  # symbolic sizes (a dynamic token count): the views would need their size nodes
    chain, node = [], end
    while _target(node) in EPILOGUE_OPS:
        if chain and len(node.users) != 1:
            return None
        chain.insert(0, node)
        source = node.args[0]
        if value(source) is None or not _static(value(source).shape) or tuple(value(source).shape) != shape:
            return None
        for other in list(node.args[1:]) + list(node.kwargs.values()):
            if isinstance(other, fx.Node) and not _broadcast_operand(other, shape):
                return None
        node = source
    if not chain or _target(node) not in PRODUCTS or value(node).dtype != torch.float32:
        return None
    if any(_target(op) is prims.convert_element_type.default and op.args[1] not in (torch.float32, torch.bfloat16)
           for op in chain):
        return None  # a conversion that ufp4.round_to_bf16 cannot keep a rounding (below)
    return node, chain


def _broadcast_operand(node: fx.Node, shape: tuple) -> bool:
    """Whether an epilogue op's other tensor operand broadcasts against the product's ``(M, N)`` as a scalar,
    a row or the whole product (so that a slice of its last dimension, or the operand itself, goes with a
    slice of the product's)."""
    val = value(node)
    if val is None:
        return False
    dims = tuple(val.shape)
    return (len(dims) <= 2 and _static(dims)
            and all(d in (1, n) for d, n in zip(reversed(dims), reversed(shape))))


def _static(dims) -> bool:
    """Whether every size is a plain int (comparing a symbolic one would add a guard)."""
    return all(type(d) is int for d in dims)


def _through_views(end: fx.Node, width: int) -> fx.Node:
    """The last of the single-reader views after ``end`` that reshape only the dimensions before the last
    (of ``width`` elements), or ``end``."""
    node = end
    while len(node.users) == 1:
        (user,) = node.users
        val = value(user)
        if (_target(user) not in _LEADING_VIEWS or val is None or val.dim() == 0 or not _static(val.shape)
                or val.shape[-1] != width):
            break
        if _target(user) is aten.unsqueeze.default and user.args[1] % val.dim() == val.dim() - 1:
            break
        node = user
    return node


def _split_pieces(view: fx.Node, width: int) -> list[tuple[int, int, fx.Node, tuple]] | None:
    """``(start, stop, reader, layout)`` per piece where every reader of ``view`` is a split along its last
    dimension read by ``getitem`` (the reader each piece replaces; layout None: the piece as it is)."""
    pieces = []
    rank = value(view).dim()
    for split in view.users:
        if _target(split) not in _SPLITS:
            return None
        dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
        if dim % rank != rank - 1:
            return None
        sizes = split.args[1]
        if _target(split) is aten.split.Tensor:
            if not isinstance(sizes, int) or sizes <= 0:
                return None
            sizes = [min(sizes, width - start) for start in range(0, width, sizes)]
        if not all(isinstance(s, int) for s in sizes) or sum(sizes) != width:
            return None
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for item in split.users:
            if _target(item) is not operator.getitem:
                return None
            i = item.args[1]
            pieces.append((starts[i], starts[i] + sizes[i], item, None))
    return pieces


def _select_pieces(view: fx.Node, width: int) -> list[tuple[int, int, fx.Node, tuple]] | None:
    """The pieces where ``view``'s one reader splits its last dimension into ``(S, *rest)`` and every reader
    of that (directly or through one permute) selects one index along ``S`` (``select``, or ``unbind`` read
    by ``getitem``): each piece's layout is ``(dims, permutation)`` to rebuild the selected view from the
    piece's columns."""
    if len(view.users) != 1:
        return None
    (shaped,) = view.users
    lead = tuple(value(view).shape[:-1])
    val = value(shaped)
    if _target(shaped) not in (aten.view.default, aten._unsafe_view.default, aten.reshape.default) or val is None:
        return None
    dims = tuple(val.shape)
    if (not _static(dims) or dims[:len(lead)] != lead or len(dims) <= len(lead) + 1
            or math.prod(dims[len(lead):]) != width):
        return None
    axis, count, rest = len(lead), dims[len(lead)], dims[len(lead) + 1:]
    readers, perm = list(shaped.users), list(range(len(dims)))
    if len(readers) == 1 and _target(readers[0]) is aten.permute.default:
        perm = [d % len(dims) for d in readers[0].args[1]]
        readers = list(readers[0].users)
    piece, rank = width // count, len(dims)
    kept = [d if d < axis else d - 1 for d in perm if d != axis]  # the permutation without S
    pieces = []
    for reader in readers:
        if _target(reader) not in (aten.select.int, aten.unbind.int):
            return None
        dim = reader.args[1] if len(reader.args) > 1 else reader.kwargs.get("dim", 0)
        if perm[dim % rank] != axis:
            return None
        if _target(reader) is aten.select.int:
            taken = [(reader.args[2] % count, reader)]
        else:
            taken = [(item.args[1], item) for item in reader.users]
            if any(_target(item) is not operator.getitem for _, item in taken):
                return None
        pieces += [(i * piece, (i + 1) * piece, node, (lead + rest, kept)) for i, node in taken]
    return pieces or None


def _rebuild(builder: NodeBuilder, piece: fx.Node, lead: tuple, layout) -> fx.Node:
    """A piece's epilogue output ``(M, F)`` as the reader it replaces had it."""
    if layout is None:
        return builder.call(aten.view.default, piece, [*lead, value(piece).shape[-1]])
    dims, perm = layout
    shaped = builder.call(aten.view.default, piece, list(dims))
    return shaped if perm == sorted(perm) else builder.call(aten.permute.default, shaped, perm)


def _split(graph: fx.Graph, fake_mode, end: fx.Node) -> bool:
    found = _epilogue(end)
    if found is None:
        return False
    product, chain = found
    width = value(end).shape[-1]
    view = _through_views(end, width)
    if not view.users:
        return False
    pieces = _split_pieces(view, width) or _select_pieces(view, width)
    if not pieces or all(stop - start == width for start, stop, _, _ in pieces):
        return False
    builder = NodeBuilder(graph, fake_mode, next(iter(end.users)), end)
    lead = tuple(value(view).shape[:-1])
    for start, stop, reader, layout in pieces:
        node = builder.call(aten.slice.Tensor, product, 1, start, stop)
        for op in chain:
            if _target(op) is prims.convert_element_type.default and op.args[1] == torch.bfloat16:
                node = builder.call(ops.round_to_bf16, node)  # a rounding where it fuses (below)
                continue
            args = [node] + [builder.call(aten.slice.Tensor, a, -1, start, stop)
                             if isinstance(a, fx.Node) and value(a).dim() and value(a).shape[-1] == width > 1 else a
                             for a in op.args[1:]]
            node = builder.call(op.target, *args, **op.kwargs)
        reader.replace_all_uses_with(_rebuild(builder, node, lead, layout))
    return True


def split_epilogues(graph: fx.Graph) -> int:
    """Take each dense GEMM's FP32 epilogue per piece where its output is read only in pieces; the number of
    epilogues split."""
    fake_mode = detect_fake_mode(graph)
    ends = [n for n in graph.nodes if _target(n) in EPILOGUE_OPS and not any(_target(u) in EPILOGUE_OPS
                                                                          for u in n.users)]
    count = sum(_split(graph, fake_mode, end) for end in ends)
    if count:  # the whole epilogues, their splits and views, now read by nobody
        graph.eliminate_dead_code()
        graph.lint()
        log.info("%d dense GEMM epilogue(s) taken per piece of their output", count)
    return count
