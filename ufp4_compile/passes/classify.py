"""Find the matmuls of a forward-only or joint graph and classify them as Fprop / Dgrad / Wgrad.

Every matmul is read as the canonical product ``C = a @ b^T`` of two *logical* 2-D operands, each a graph
node possibly seen transposed (:class:`Operand`), with the reduction along the operands' last axis:

- Fprop ``mm(A, B)``: ``a = A`` (M x K), ``b = B^T`` (N x K; for ``nn.Linear`` this is the weight W).
- Dgrad ``dA = dC @ B^T``: ``a = dC`` (M x N), ``b = B`` (K x N, i.e. W^T).
- Wgrad ``dB^T = dC^T @ A``: ``a = dC^T`` (N x M), ``b = A^T`` (K x M).

A backward matmul is linked to its forward matmul through ``meta["seq_nr"]`` (the autograd node that
produced it) and told apart by which forward operand it consumes: the one that reads ``b``'s tensor is
the Dgrad, the one that reads ``a``'s tensor the Wgrad. Autograd sometimes computes the transposed
product (``(dC^T A)^T``, for column-major operands): such a matmul is recorded as ``swapped`` and the
rewrite transposes the result back.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.fx as fx

from ufp4_compile.passes.fx_utils import is_matmul, module_name, transpose_source, value
from ufp4_compile.recipes import Role

log = logging.getLogger("ufp4_compile.passes.classify")
aten = torch.ops.aten
# Matrix products the rewrite does not handle: each still gets a report row, kept with this reason. (With
# Inductor's decompositions a matrix-vector product, ``x @ v`` or ``addmv``, becomes a multiply and a sum:
# no matmul is left to report; without them it is ``mv`` / ``addmv`` here.)
OTHER_MATMULS = {
    aten.mv.default: "matrix-vector product",
    aten.addmv.default: "matrix-vector product",
    aten.baddbmm.default: "baddbmm",
    aten.addbmm.default: "addbmm",
    aten._trilinear.default: "bilinear form (aten._trilinear, nn.Bilinear)",
    aten.dot.default: "dot product",
    aten.vdot.default: "dot product",
}


def _other_matmul(node: fx.Node) -> str | None:
    if node.op != "call_function" or node.target not in OTHER_MATMULS:
        return None
    return f"{OTHER_MATMULS[node.target]} is not rewritten (only mm, addmm and bmm are)"


@dataclasses.dataclass(frozen=True)
class Operand:
    """A logical matrix: ``node``'s value, transposed (last two dims swapped) when ``transposed``."""

    node: fx.Node
    transposed: bool = False

    def flipped(self) -> "Operand":
        return Operand(self.node, not self.transposed)

    @property
    def shape(self) -> tuple:
        shape = tuple(value(self.node).shape)
        return shape[:-2] + shape[-2:][::-1] if self.transposed else shape


def peel(op: Operand) -> Operand:
    """Look through transposes: ``t(t(W))`` seen plain is ``W``; ``t(W)`` seen transposed is ``W``."""
    while (src := transpose_source(op.node)) is not None:
        op = Operand(src, not op.transposed)
    return op


@dataclasses.dataclass
class Gemm:
    """One matmul node read as ``a @ b^T`` (``swapped``: the node holds the transpose of that product)."""

    node: fx.Node
    role: Role | None
    a: Operand | None = None
    b: Operand | None = None
    swapped: bool = False
    bias: fx.Node | None = None
    note: str | None = None  # why this node cannot be rewritten whatever the recipe says

    @property
    def kind(self) -> str:
        return self.node.target.__name__.split(".")[0]

    @property
    def dtype(self) -> torch.dtype | None:
        val = value(self.node)
        return val.dtype if val is not None else None

    @property
    def dims(self) -> tuple:
        """``(batch, rows, reduction, cols)`` of the canonical product (batch ``None`` for 2-D)."""
        if self.a is None:
            shape = tuple(value(self.node).shape) if value(self.node) is not None else (None, None)
            shape = (None,) * (2 - len(shape)) + shape  # a vector or a scalar result (mv, dot)
            return (shape[0] if len(shape) == 3 else None, shape[-2], None, shape[-1])
        a, b = self.a.shape, self.b.shape
        return (a[0] if len(a) == 3 else None, a[-2], a[-1], b[-2])


@dataclasses.dataclass
class Site:
    """One call of a linear layer (or any forward matmul) with the backward matmuls linked to it."""

    name: str
    call_index: int
    fprop: Gemm
    dgrad: Gemm | None = None
    wgrad: Gemm | None = None

    @property
    def key(self) -> str:
        """Stable identity of this call: seeds and Philox offsets are derived from it."""
        return f"{self.name or '<root>'}#{self.call_index}"

    def gemm(self, role: Role) -> Gemm | None:
        return getattr(self, role.value)

    def gemms(self) -> list[Gemm]:
        return [g for g in (self.fprop, self.dgrad, self.wgrad) if g is not None]

    @property
    def mkn(self) -> tuple:
        _, m, k, n = self.fprop.dims
        return m, k, n


@dataclasses.dataclass
class Classification:
    sites: list[Site]
    orphans: list[Gemm]  # backward matmuls that could not be linked to a forward matmul
    is_joint: bool


def _has_shapes(node: fx.Node) -> bool:
    return all(value(n) is not None for n in (node, *node.args[:3]) if isinstance(n, fx.Node))


def _canonical(node: fx.Node, role: Role | None) -> Gemm:
    if not _has_shapes(node):
        return Gemm(node, role, note="no shape metadata (meta['val']) on the matmul or its operands")
    if node.target is aten.addmm.default:
        bias, mat1, mat2 = node.args[:3]
        gemm = Gemm(node, role, peel(Operand(mat1)), peel(Operand(mat2, True)), bias=bias)
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            gemm.note = "addmm with alpha/beta other than 1"
        return gemm
    mat1, mat2 = node.args[:2]
    return Gemm(node, role, peel(Operand(mat1)), peel(Operand(mat2, True)))


def _link_backward(node: fx.Node, fprop: Gemm) -> Gemm:
    """Classify a backward matmul of ``fprop`` as its Dgrad or Wgrad (or explain why it cannot)."""
    raw = _canonical(node, None)
    if raw.a is None or fprop.a is None:
        raw.note = raw.note or fprop.note
        return raw
    fa, fb = fprop.a.node, fprop.b.node
    if fa is fb:
        raw.note = "both operands of the forward matmul are one tensor: Dgrad and Wgrad are ambiguous"
        return raw
    for role, forward in ((Role.DGRAD, fprop.b), (Role.WGRAD, fprop.a)):
        for swapped, (grad, fwd) in ((False, (raw.a, raw.b)), (True, (raw.b, raw.a))):
            if fwd.node is forward.node and grad.node not in (fa, fb):
                gemm = Gemm(node, role, grad, fwd, swapped=swapped)
                if fwd.transposed == forward.transposed:
                    gemm.note = f"{role.value} operand layout not recognized"
                return gemm
    raw.note = "backward matmul reads neither forward operand directly"
    return raw


def _is_backward(node: fx.Node) -> bool:
    return node.meta.get("partitioner_tag") == "is_backward"


def classify(graph: fx.Graph) -> Classification:
    """All matmuls of ``graph`` grouped into sites (one per forward matmul) plus unlinked orphans."""
    is_joint = any(_is_backward(n) for n in graph.nodes)
    sites: list[Site] = []
    by_seq: dict[int, Site] = {}
    orphans: list[Gemm] = []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        other = _other_matmul(node)
        if other is not None:
            if not _is_backward(node):
                name = module_name(node)
                site = Site(name, calls.get(name, 0), Gemm(node, Role.FPROP, note=other))
                calls[name] = site.call_index + 1
                sites.append(site)
                if isinstance(node.meta.get("seq_nr"), int) and node.meta["seq_nr"] >= 0:
                    by_seq[node.meta["seq_nr"]] = site
            else:
                linked = by_seq.get(node.meta.get("seq_nr"))
                orphans.append(Gemm(node, None, note=linked.fprop.note if linked else other))
            continue
        if not is_matmul(node):
            continue
        if not _is_backward(node):
            name = module_name(node)
            site = Site(name, calls.get(name, 0), _canonical(node, Role.FPROP))
            calls[name] = site.call_index + 1
            sites.append(site)
            seq = node.meta.get("seq_nr")
            if isinstance(seq, int) and seq >= 0:
                by_seq[seq] = site
            continue
        site = by_seq.get(node.meta.get("seq_nr"))
        if site is None:
            orphans.append(_canonical(node, None))
            orphans[-1].note = "backward matmul not linked to a forward matmul (seq_nr)"
            continue
        gemm = _link_backward(node, site.fprop)
        if gemm.role is None or site.gemm(gemm.role) is not None:
            gemm.note = gemm.note or f"a second {gemm.role.value} for one forward matmul"
            gemm.role = None
            orphans.append(gemm)
            continue
        setattr(site, gemm.role.value, gemm)
    for gemm in orphans:
        log.debug("matmul %s: %s", gemm.node.name, gemm.note)
    return Classification(sites, orphans, is_joint)
