"""The ufp4 pass: rewrite the matmuls of a forward-only or joint graph into ``torch.ops.ufp4`` ops.

For each GEMM the recipe quantizes (docs/pipeline.md)::

    codes_a, scales_a, ts_a = ufp4.quantize(a, axis, fmt_a, rht, rht_seed, seed, offset)
    codes_b, scales_b, ts_b = ufp4.quantize(b, axis, fmt_b, rht, rht_seed, seed, offset)
    out = ufp4.scaled_mm(codes_a, scales_a, ts_a, codes_b, scales_b, ts_b, fmt_a, fmt_b, compute, dtype)

(+ bias, + the rank-one term of a mean split). An operand seen transposed is quantized along the other
axis of its tensor and its codes and scales are transposed views. A backward GEMM's operand that the
forward computes (X for Wgrad) is quantized in the forward, next to its Fprop, so the partitioner saves
packed codes and scales for the backward instead of the high-precision tensor. Everything not rewritten
stays as it was, and the returned rows say why.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.fx as fx

from ufp4_compile import ops
from ufp4_compile.numerics.formats import OperandFormat, Rounding
from ufp4_compile.passes.classify import Gemm, Operand, Site, classify
from ufp4_compile.passes.fx_utils import NodeBuilder, detect_fake_mode, module_name, root_placeholder, value
from ufp4_compile.passes.graph_inputs import GraphInputs, input_index
from ufp4_compile.passes.policy import (SiteFacts, block_ranges, gemm_keep_reason, head_by_name,
                                        site_keep_reason)
from ufp4_compile.passes.report import MatmulRow
from ufp4_compile.passes.seeds import philox_offset, rank_salt, rht_seed_for
from ufp4_compile.recipes import MeanSplit, Recipe, Role, SRSeedPolicy

log = logging.getLogger("ufp4_compile.passes.rewrite_matmuls")
aten = torch.ops.aten
prims = torch.ops.prims
SEED_HIGH = 1 << 62  # PER_STEP seeds are drawn uniformly from [0, 2**62)


@dataclasses.dataclass(frozen=True)
class Quantized:
    codes: fx.Node
    scales: fx.Node
    tensor_scale: fx.Node


def step_seed(graph: fx.Graph, fake_mode, recipe: Recipe, device: torch.device, is_joint: bool,
              salt: int) -> fx.Node:
    """A 0-d int64 stochastic-rounding seed at the graph's start: ``sr_seed`` or a draw per graph call,
    XORed with the rank's salt (seeds.rank_salt)."""
    first = next(n for n in graph.nodes if n.op != "placeholder")
    builder = NodeBuilder(graph, fake_mode, first, {"partitioner_tag": "is_forward"} if is_joint else {})
    if recipe.sr_seed_policy is SRSeedPolicy.FIXED:
        return builder.call(aten.scalar_tensor.default, recipe.sr_seed ^ salt, dtype=torch.int64, device=device)
    node = builder.call(aten.randint.low, 0, SEED_HIGH, [], dtype=torch.int64, device=device)
    return builder.call(aten.bitwise_xor.Scalar, node, salt) if salt else node


class _Rewriter:
    """Inserts the ufp4 nodes for one graph; remembers replaced nodes, shared quantizations and seeds."""

    def __init__(self, graph: fx.Graph, recipe: Recipe):
        self.graph, self.recipe = graph, recipe
        self.fake_mode = detect_fake_mode(graph)
        self.is_joint = any(n.meta.get("partitioner_tag") == "is_backward" for n in graph.nodes)
        self.replaced: dict[fx.Node, fx.Node] = {}
        # Shared round-to-nearest quantizations: key -> (result, graph position it was inserted before).
        self.cache: dict[tuple, tuple[Quantized, int]] = {}
        self.position = {node: i for i, node in enumerate(graph.nodes)}
        self.seeds: dict[torch.device, fx.Node] = {}
        self.salt = rank_salt()  # 0 on rank 0 (seeds.py)
        self.centers: dict[tuple, tuple[fx.Node, fx.Node]] = {}  # (operand, transposed) -> (2-D node, its mu)

    def resolve(self, node: fx.Node) -> fx.Node:
        while node in self.replaced:
            node = self.replaced[node]
        return node

    def builder(self, anchor: fx.Node, template: fx.Node) -> NodeBuilder:
        """Inserts before (the replacement of) ``anchor``, an original node of the graph."""
        builder = NodeBuilder(self.graph, self.fake_mode, self.resolve(anchor), template)
        builder.position = self.position[anchor]
        return builder

    def seed(self, device: torch.device) -> fx.Node:
        """The graph's stochastic-rounding seed (0-d int64), created once per device (:func:`step_seed`)."""
        if device not in self.seeds:
            self.seeds[device] = step_seed(self.graph, self.fake_mode, self.recipe, device, self.is_joint, self.salt)
        return self.seeds[device]

    def center(self, op: Operand, template: fx.Node) -> tuple[fx.Node, fx.Node]:
        """A split operand as a 2-D node and its ``mu`` (``ops.sample_median``), inserted right after the operand
        is made, once per operand: every quantization of it, wherever the pass puts it, then comes after ``mu``.
        The lowering takes a tensor's row-wise and column-wise quantizations from one read (the dual launch)
        only where both jobs' inputs, the shift included, exist before the first; in a backward, dY's Wgrad
        quantization comes before its Dgrad GEMM."""
        key = (op.node, op.transposed)
        if key not in self.centers:
            anchor = op.node.next
            while anchor.op == "placeholder":
                anchor = anchor.next
            early = NodeBuilder(self.graph, self.fake_mode, anchor, template)
            node = early.transpose(op.node) if op.transposed else op.node
            self.centers[key] = (node, early.call(ops.sample_median, node))
        return self.centers[key]

    def _placement(self, site: Site, gemm: Gemm, op: Operand) -> NodeBuilder:
        """Quantize a forward-computed operand of a backward GEMM in the forward (saves codes, not X)."""
        node = op.node
        forward_made = (node.op != "placeholder" and node.meta.get("partitioner_tag") == "is_forward")
        if gemm.role is not Role.FPROP and self.is_joint and forward_made:
            return self.builder(site.fprop.node, site.fprop.node)
        return self.builder(gemm.node, gemm.node)

    def as_2d(self, builder: NodeBuilder, op: Operand) -> Operand:
        node = self.resolve(op.node)
        if value(node).dim() == 3:  # bmm with batch 1 (einsum): quantize the 2-D matrix
            node = builder.call(aten.squeeze.dim, node, 0)
        return Operand(node, op.transposed)

    def quantize(self, builder: NodeBuilder, op: Operand, fmt: OperandFormat, rht: int, rht_seed: int,
                 offset_key: tuple, shift: fx.Node | None = None) -> Quantized:
        """``op`` (less ``shift``, a mean split's ``mu``: the quantize op subtracts it) quantized for one GEMM."""
        op = self.as_2d(builder, op)
        axis = 0 if op.transposed else 1
        stochastic = fmt.rounding is Rounding.STOCHASTIC
        # One tensor quantized the same way for several GEMMs (X of q/k/v or gate/up, a tied W): share it
        # when the earlier node comes first in the graph, so backward saves one set of codes.
        key = (op.node, op.transposed, fmt.spec, rht, rht_seed, shift)
        if not stochastic and key in self.cache and self.cache[key][1] <= builder.position:
            return self.cache[key][0]
        seed, offset = None, 0
        if stochastic:
            seed, offset = self.seed(value(op.node).device), philox_offset(*offset_key)
        extra = () if shift is None else (shift,)
        codes, scales, tensor_scale = builder.call_multi(ops.quantize, op.node, axis, fmt.spec, rht, rht_seed,
                                                         seed, offset, *extra)
        if op.transposed:
            codes, scales = builder.transpose(codes), builder.transpose(scales)
        result = Quantized(codes, scales, tensor_scale)
        if not stochastic and key not in self.cache:
            self.cache[key] = (result, builder.position)
        return result

    def rewrite(self, site: Site, gemm: Gemm) -> None:
        role, recipe = gemm.role, self.recipe
        grecipe = recipe.gemm(role)
        rht_seed = rht_seed_for(recipe, site.name) if grecipe.rht else 0
        here = self.builder(gemm.node, gemm.node)
        out_dtype = gemm.dtype

        a_op = self.as_2d(here, gemm.a)
        split = grecipe.mean_split
        mu = None
        if split is not MeanSplit.OFF:
            # mu (numerics.sample_median: one selection launch on GPUs); the quantize op subtracts it (its
            # shift), so the residual x - mu is never written
            a_node, mu = self.center(a_op, gemm.node)
            a_op = Operand(a_node)
        qa = self.quantize(here, a_op, grecipe.a, grecipe.rht, rht_seed, (site.key, role, "a"), shift=mu)
        qb = self.quantize(self._placement(site, gemm, gemm.b), gemm.b, grecipe.b, grecipe.rht, rht_seed,
                           (site.key, role, "b"))
        # Sums (mean-split term, bias) are taken in FP32 and rounded once, as addmm does.
        extra = split is not MeanSplit.OFF or gemm.bias is not None
        mm_dtype = torch.float32 if extra else out_dtype
        out = self._scaled_mm(here, qa, qb, grecipe, mm_dtype)
        if split is MeanSplit.FP4:
            qmu = self.quantize(here, Operand(mu), grecipe.a, grecipe.rht, rht_seed, (site.key, role, "mu"))
            out = here.call(aten.add.Tensor, out, self._scaled_mm(here, qmu, qb, grecipe, torch.float32))
        elif split is MeanSplit.HIGH:
            b_op = self.as_2d(here, gemm.b)
            b_t = b_op.node if b_op.transposed else here.transpose(b_op.node)  # (reduction, cols)
            b_t = here.call(prims.convert_element_type.default, b_t, torch.float32)
            out = here.call(aten.add.Tensor, out, here.call(aten.mm.default, mu, b_t))
        if gemm.bias is not None:
            out = here.call(aten.add.Tensor, out, self.resolve(gemm.bias))
        if out_dtype != mm_dtype:
            out = here.call(prims.convert_element_type.default, out, out_dtype)
        if gemm.swapped:
            out = here.transpose(out)
        if value(gemm.node).dim() == 3:
            out = here.call(aten.unsqueeze.default, out, 0)
        gemm.node.replace_all_uses_with(out)
        self.graph.erase_node(gemm.node)
        self.replaced[gemm.node] = out

    def _scaled_mm(self, builder, qa: Quantized, qb: Quantized, grecipe, out_dtype) -> fx.Node:
        return builder.call(ops.scaled_mm, qa.codes, qa.scales, qa.tensor_scale, qb.codes, qb.scales,
                            qb.tensor_scale, grecipe.a.spec, grecipe.b.spec, self.recipe.compute_dtype.value,
                            out_dtype)


def _site_facts(site: Site, sites: list[Site], embeddings: dict) -> SiteFacts:
    gemm = site.fprop
    batch, m, k, n = gemm.dims
    if gemm.a is None:  # no shape metadata: the note says so and the site is kept
        return SiteFacts(site.name, gemm.kind, gemm.dtype, batch, m, k, n, note=gemm.note)
    weight = root_placeholder(gemm.b.node)
    head = head_by_name(site.name)
    if weight is not None and weight in embeddings:
        head = "output head: weight tied to an input embedding"
    elif head is None and n in embeddings.values():
        last = [s for s in sites if s.fprop.kind != "bmm"][-1:]
        if last and last[0] is site:
            head = f"output head: last matmul, N={n} equals the embedding vocabulary"
    attention = gemm.kind == "bmm" and weight is None and root_placeholder(gemm.a.node) is None
    return SiteFacts(site.name, gemm.kind, gemm.dtype, batch, m, k, n, head, attention, gemm.note)


def _row(graph_index: int, site_name: str, gemm: Gemm, action: str, reason=None, **fields) -> MatmulRow:
    batch, rows, red, cols = gemm.dims
    shape = (rows, red, cols) if batch is None else (batch, rows, red, cols)
    shape = tuple(d if isinstance(d, int) or d is None else str(d) for d in shape)  # SymInts as text
    return MatmulRow(graph_index, gemm.node.name, site_name, gemm.role.value if gemm.role else None, gemm.kind,
                     shape, str(gemm.dtype), action, reason, **fields)


def _done_row(graph_index: int, site: Site, gemm: Gemm, recipe: Recipe) -> MatmulRow:
    grecipe = recipe.gemm(gemm.role)
    stochastic = [name for name, fmt in (("a", grecipe.a), ("b", grecipe.b)) if fmt.rounding is Rounding.STOCHASTIC]
    if grecipe.mean_split is MeanSplit.FP4 and grecipe.a.rounding is Rounding.STOCHASTIC:
        stochastic.append("mu")
    sr = f"{'+'.join(stochastic)} (seed {recipe.sr_seed_policy.value})" if stochastic else None
    return _row(graph_index, site.name, gemm, "rewritten", a_fmt=grecipe.a.spec, b_fmt=grecipe.b.spec,
                rht=grecipe.rht, rht_seed=rht_seed_for(recipe, site.name) if grecipe.rht else None, sr=sr,
                mean_split=None if grecipe.mean_split is MeanSplit.OFF else grecipe.mean_split.value)


def _embedding_weights(graph: fx.Graph, inputs: GraphInputs | None) -> dict:
    """Weight node -> vocabulary size, for the weights an embedding reads: in this graph, or (``inputs``) in
    an earlier graph of the process, as when a DDP graph split puts the embedding and a tied head apart."""
    embeddings = {root_placeholder(n.args[0]): value(n.args[0]).shape[0] for n in graph.nodes
                  if n.op == "call_function" and n.target is aten.embedding.default and value(n.args[0]) is not None}
    if inputs is not None:
        for node in graph.nodes:
            if node.op == "placeholder" and value(node) is not None and value(node).dim() == 2 \
                    and inputs.is_embedding(input_index(node)):
                embeddings[node] = value(node).shape[0]
    return embeddings


def rewrite_matmuls(graph: fx.Graph, recipe: Recipe, *, graph_index: int = 0, dry_run: bool = False,
                    inputs: GraphInputs | None = None) -> list[MatmulRow]:
    """Rewrite the eligible matmuls of ``graph`` in place per ``recipe``; one row per matmul found.

    ``dry_run`` decides and reports without touching the graph (what :func:`ufp4_compile.explain` uses).
    ``inputs`` (from the Dynamo graph, :mod:`~ufp4_compile.passes.graph_inputs`) adds what the joint graph
    does not show: embedding weights of other graphs and the traced frame's modules (block counts).
    """
    found = classify(graph)
    embeddings = _embedding_weights(graph, inputs)
    blocks = block_ranges([site.name for site in found.sites] + list(inputs.modules if inputs else ()))
    rows, todo = [], []
    for site in found.sites:
        keep_site = site_keep_reason(_site_facts(site, found.sites, embeddings), recipe.layers, blocks)
        m, k, n = site.mkn
        for gemm in site.gemms():
            reason = keep_site or gemm.note or gemm_keep_reason(gemm.role, recipe, m, k, n, gemm.dtype)
            if reason:
                rows.append(_row(graph_index, site.name, gemm, "kept", reason))
            else:
                rows.append(_done_row(graph_index, site, gemm, recipe))
                todo.append((site, gemm))
    for gemm in found.orphans:
        rows.append(_row(graph_index, module_name(gemm.node), gemm, "kept", gemm.note))
    for row in rows:
        log.debug("graph %d %s %s %s %s: %s", graph_index, row.module or "(top)", row.role, row.node,
                  row.shape_text(), row.detail())
    dynamic = [row for row in rows if not row.rewritten and row.reason and "dynamic" in row.reason]
    if dynamic:  # silently training part of a model in high precision is what a user must not miss
        log.warning("graph %d: %d matmul(s) kept in high precision because of dynamic shapes, e.g. %s %s: %s",
                    graph_index, len(dynamic), dynamic[0].module or "(top)", dynamic[0].role, dynamic[0].reason)
    if dry_run or not todo:
        return rows
    rewriter = _Rewriter(graph, recipe)
    # Forward GEMMs first: backward GEMMs place quantize nodes next to (the replacement of) their Fprop.
    for site, gemm in sorted(todo, key=lambda item: item[1].role is not Role.FPROP):
        rewriter.rewrite(site, gemm)
    graph.eliminate_dead_code()
    graph.lint()
    return rows
