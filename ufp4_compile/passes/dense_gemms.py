"""The dense-GEMM pass: where a GPU has no 4-bit tensor cores, a ufp4 GEMM is a dense GEMM of dequantized operands.

After :func:`~ufp4_compile.passes.rewrite_matmuls.rewrite_matmuls`, each rewritten GEMM reads codes::

    codes_a, scales_a, ts_a = ufp4.quantize(a, ...)          codes_b, ... = ufp4.quantize(b, ...)
    out = ufp4.scaled_mm(codes_a, scales_a, ts_a, codes_b, scales_b, ts_b, fmt_a, fmt_b, compute, dtype)

On Hopper (and wherever the dispatch offers no native block-scaled MMA for the formats) the GEMM is
``code x scale`` in the compute dtype fed to cuBLAS, so this pass writes that operand directly::

    values_a, ts_a = ufp4.quantize_dequantize(a, ..., compute)     (values_b likewise)
    out = mm(values_a, values_b^T)          [FP32 product x ts_a ts_b, then the output dtype, when needed]

Exactly the reference GEMM (docs/numerics.md), without writing codes and reading them back. A quantization
whose codes cross from the forward to the backward (X for Wgrad, quantized next to its Fprop so that the
partitioner saves 4-bit codes, not X) keeps its codes: the backward dequantizes them where the GEMM reads
them. One quantization shared by several GEMMs (X of q/k/v) stays one kernel.
"""

from __future__ import annotations

import dataclasses
import logging
import operator

import torch
import torch.fx as fx

from ufp4_compile import ops
from ufp4_compile.ops import compute_dtype_of
from ufp4_compile.numerics.formats import ScaleFormat
from ufp4_compile.numerics.quantize import as_format
from ufp4_compile.passes.fx_utils import NodeBuilder, detect_fake_mode, value

log = logging.getLogger("ufp4_compile.passes.dense_gemms")
aten = torch.ops.aten
prims = torch.ops.prims


@dataclasses.dataclass(frozen=True)
class _Operand:
    values: fx.Node  # (rows, K) in the compute dtype, as the scaled_mm operand is laid out
    tensor_scale: fx.Node


def _behind_transposes(node: fx.Node) -> tuple[fx.Node, bool]:
    """The node a chain of 2-D transposes starts from, and whether the chain flips it."""
    flip = False
    while node.op == "call_function" and node.target is aten.permute.default and list(node.args[1]) == [1, 0]:
        node, flip = node.args[0], not flip
    return node, flip


def _quantize_of(node: fx.Node) -> fx.Node | None:
    if node.op == "call_function" and node.target is operator.getitem:
        producer = node.args[0]
        if producer.op == "call_function" and producer.target is ops.quantize:
            return producer
    return None


def _users_through_transposes(node: fx.Node) -> list[fx.Node]:
    users = []
    for user in node.users:
        if user.op == "call_function" and user.target is aten.permute.default:
            users += _users_through_transposes(user)
        else:
            users.append(user)
    return users


def _round_to_bf16(builder: NodeBuilder, x: fx.Node) -> fx.Node:
    """``x`` (FP32) rounded to the nearest bfloat16, ties to even, as bfloat16 (NaN stays NaN).

    The codes path's GEMM writes its low-precision output rounded; a ``convert_element_type`` to bfloat16 is
    not enough to get the same here: Inductor keeps a low-precision value in FP32 inside a fused kernel, so a
    consumer that upcasts it (autocast's backward, an activation) would read the unrounded product.
    ``ufp4.round_to_bf16`` is the conversion that Inductor's lowering of it keeps a rounding
    (``lowering/rounding.py``), in two ops where the same rounding in integer bit operations took a dozen."""
    return builder.call(ops.round_to_bf16, x)


class _Densifier:
    def __init__(self, graph: fx.Graph):
        self.graph = graph
        self.fake_mode = detect_fake_mode(graph)
        # (quantize, compute dtype, partition of the reader or None) -> (values, tensor scale)
        self.done: dict[tuple, tuple[fx.Node, fx.Node]] = {}

    def _stays_in_its_partition(self, quantize: fx.Node) -> bool:
        """Whether every GEMM reading these codes runs in the quantization's own partition (forward or
        backward): codes that cross into the backward are what the partitioner saves."""
        tag = quantize.meta.get("partitioner_tag")
        readers = [u for item in quantize.users for u in _users_through_transposes(item)]
        return all(r.op == "call_function" and r.target is ops.scaled_mm and r.meta.get("partitioner_tag") == tag
                   for r in readers)

    def _dense_values(self, quantize: fx.Node, compute: str) -> tuple[fx.Node, fx.Node]:
        """Dequantized values (in the quantized tensor's own layout) and tensor scale, written by the
        quantize kernel itself in place of codes."""
        key = (quantize, compute, None)
        if key not in self.done:
            builder = NodeBuilder(self.graph, self.fake_mode, quantize, quantize)
            args = quantize.args  # quantize's (x, axis, fmt, rht, rht_seed, seed, offset[, shift]): dtype before shift
            values, tensor_scale = builder.call_multi(ops.quantize_dequantize, *args[:7], compute_dtype_of(compute),
                                                      *args[7:])
            self.done[key] = (values, tensor_scale)
        return self.done[key]

    def _saved_values(self, reader: fx.Node, quantize: fx.Node, compute: str) -> tuple[fx.Node, fx.Node]:
        """Saved codes dequantized where ``reader`` runs (one dequantize per partition that reads them)."""
        tag = reader.meta.get("partitioner_tag")
        key = (quantize, compute, tag)
        if key not in self.done:
            axis, fmt = quantize.args[1], quantize.args[2]
            items = {item.args[1]: item for item in quantize.users if item.target is operator.getitem}
            builder = NodeBuilder(self.graph, self.fake_mode, reader, reader)
            # Two-level scales: the operand leaves its tensor scale out (the GEMM's epilogue takes it). One-level:
            # the quantization's tensor scale is exactly 1, so the constant takes its place too and it is not
            # saved for the backward (CUDA's lowering passes a dequantize no pointer for this constant and
            # launches no fill for it: lowering/kernel_calls.py).
            one = self._one(builder, tag, value(items[0]).device)
            values = builder.call(ops.dequantize, items[0], items[1], one, axis, fmt, compute_dtype_of(compute))
            length, padded = value(quantize.args[0]).shape[axis], value(values).shape[axis]
            if not (isinstance(length, int) and length == padded):  # codes cover whole blocks: crop the last
                end = length if isinstance(length, int) else builder.call(aten.sym_size.int, quantize.args[0], axis)
                values = builder.call(aten.slice.Tensor, values, axis, 0, end)
            two_level = as_format(fmt).scale is ScaleFormat.E4M3
            self.done[key] = (values, items[2] if two_level else one)
        return self.done[key]

    def _one(self, builder: NodeBuilder, tag, device) -> fx.Node:
        """A 0-d FP32 1.0, one per partition (a ``full`` node is a kernel launch in Inductor's code where a
        reader needs it as a tensor), made at the first reader of the partition in graph order, so it comes
        before every later one."""
        key = ("one", tag, device)
        if key not in self.done:
            self.done[key] = builder.call(aten.full.default, [], 1.0, dtype=torch.float32, device=device)
        return self.done[key]

    def operand(self, mm: fx.Node, codes: fx.Node, scales: fx.Node, tensor_scale: fx.Node, fmt: str,
                compute: str) -> _Operand:
        source, flip = _behind_transposes(codes)
        quantize = _quantize_of(source)
        builder = NodeBuilder(self.graph, self.fake_mode, mm, mm)
        if quantize is None:  # codes from elsewhere (a graph input): dequantize them as laid out
            one = self._one(builder, mm.meta.get("partitioner_tag"), value(codes).device)
            values = builder.call(ops.dequantize, codes, scales, one, 1, fmt, compute_dtype_of(compute))
            return _Operand(values, tensor_scale)
        if self._stays_in_its_partition(quantize):
            values, ts = self._dense_values(quantize, compute)
        else:
            values, ts = self._saved_values(mm, quantize, compute)
        if flip:
            values = builder.transpose(values)
        return _Operand(values, ts)

    def rewrite(self, mm: fx.Node) -> None:
        a_codes, a_scales, a_ts, b_codes, b_scales, b_ts, a_fmt, b_fmt, compute, out_dtype = mm.args
        a = self.operand(mm, a_codes, a_scales, a_ts, a_fmt, compute)
        b = self.operand(mm, b_codes, b_scales, b_ts, b_fmt, compute)
        builder = NodeBuilder(self.graph, self.fake_mode, mm, mm)
        bt = builder.transpose(b.values)
        two_level = any(as_format(f).scale is ScaleFormat.E4M3 for f in (a_fmt, b_fmt))
        dtype = compute_dtype_of(compute)
        if not two_level and out_dtype == dtype:
            out = builder.call(aten.mm.default, a.values, bt)  # FP32 accumulation, rounded once
        else:
            if dtype == torch.float32:
                product = builder.call(aten.mm.default, a.values, bt)
            elif value(mm).device.type == "cuda":
                product = builder.call(aten.mm.dtype, a.values, bt, torch.float32)
            else:  # CPU has no mm.dtype: the same FP32 products from FP32 copies of exact values
                product = builder.call(aten.mm.default, builder.call(prims.convert_element_type.default, a.values,
                                                                     torch.float32),
                                       builder.call(prims.convert_element_type.default, bt, torch.float32))
            if two_level:
                product = builder.call(aten.mul.Tensor, product, builder.call(aten.mul.Tensor, a.tensor_scale,
                                                                              b.tensor_scale))
            out = product
            if out_dtype == torch.bfloat16:
                out = _round_to_bf16(builder, product)
            elif out_dtype != torch.float32:
                out = builder.call(prims.convert_element_type.default, product, out_dtype)
        mm.replace_all_uses_with(out)
        self.graph.erase_node(mm)


def dense_gemms(graph: fx.Graph, *, force: bool = False) -> int:
    """Rewrite each ``ufp4.scaled_mm`` of ``graph`` whose operands' formats have no native MMA on its device
    (every one with ``force``) into a dense GEMM of dequantized operands; the number rewritten."""
    from ufp4_compile.dispatch import GemmPath, current_target, gemm_paths

    mms = [n for n in graph.nodes if n.op == "call_function" and n.target is ops.scaled_mm]
    densifier, count = _Densifier(graph), 0
    for mm in mms:
        device = value(mm).device
        if not force:
            if device.type != "cuda":
                continue
            a_fmt, b_fmt, compute = as_format(mm.args[6]), as_format(mm.args[7]), mm.args[8]
            if gemm_paths(a_fmt, b_fmt, compute, current_target(device))[0].path is GemmPath.NATIVE:
                continue
        densifier.rewrite(mm)
        count += 1
    if count:
        graph.eliminate_dead_code()
        graph.lint()
        log.info("%d ufp4 GEMM(s) run as dense GEMMs of dequantized operands", count)
    return count
