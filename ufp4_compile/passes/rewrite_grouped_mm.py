"""The grouped-GEMM pass: rewrite ``aten._grouped_mm`` (mixture-of-experts layers) per the recipe.

A grouped GEMM computes one product per expert over that expert's rows (``offs`` holds each expert's end
row). In the joint graph of ``y = _grouped_mm(x, W, offs)`` (x: tokens x K, W: experts x K x N):

- Fprop ``_grouped_mm(x, W, offs)``: blocks along K, which no expert boundary crosses;
- Dgrad ``_grouped_mm(dY, W^T, offs)``: blocks along N, likewise;
- Wgrad ``_grouped_mm(x^T, dY, offs)`` (experts x K x N; ``_grouped_mm(dY^T, x, offs)``, experts x N x K, when
  the forward read the expert weight transposed): the reduction runs over each expert's tokens, and
  blocks along the tokens must not straddle experts, whose boundaries only ``offs`` knows at run time. So x
  and dY are first copied into a padded layout where each expert's rows start at a multiple of the block
  and its last block is filled with zero rows (zeros change no amax, and add nothing to the product), of
  static size ``T + E (block - 1)`` rounded up to the block; the padded operands are quantized along the
  tokens and multiplied with the padded offsets. ("Each group's tokens padded to the block.")

A rewritten grouped GEMM reads operands that the quantize kernel writes dequantized
(``ufp4.quantize_dequantize``: ``code x block scale`` in the compute dtype, exactly the reference GEMM's
operand), the same rotation on both along the reduction axis, and runs as ``_grouped_mm`` in that dtype
with FP32 accumulation. This is the exact reference on every device (on GPUs with native 4-bit grouped MMA
it leaves speed on the table). Two-level (E4M3 x FP32 tensor) scales would need the FP32 product before the
tensor scales, which torch's grouped GEMM does not write (bf16 out only): those recipes keep the grouped
GEMMs in bf16, with that reason.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import torch
import torch.fx as fx

from ufp4_compile import ops
from ufp4_compile.ops import compute_dtype_of
from ufp4_compile.numerics.formats import OperandFormat, Rounding, ScaleFormat
from ufp4_compile.passes.fx_utils import NodeBuilder, detect_fake_mode, module_name, transpose_source, value
from ufp4_compile.passes.policy import SiteFacts, block_ranges, gemm_keep_reason, site_keep_reason
from ufp4_compile.passes.report import MatmulRow
from ufp4_compile.passes.rewrite_matmuls import step_seed
from ufp4_compile.passes.seeds import philox_offset, rank_salt, rht_seed_for
from ufp4_compile.recipes import Recipe, Role

log = logging.getLogger("ufp4_compile.passes.rewrite_grouped_mm")
aten = torch.ops.aten
_PADDED_TOKENS = 1024  # stands for a padded token count in policy checks: a multiple of every block and RHT size



def pad_groups(x: torch.Tensor, dy: torch.Tensor, offs: torch.Tensor, block: int):
    """``x`` and ``dy`` (tokens sorted by expert, ``offs`` each expert's end row) with every expert's rows
    moved to start at a multiple of ``block`` and zero rows after them; the padded offsets (int32). Rows past
    ``offs[-1]`` (which a grouped GEMM ignores) become zeros outside every group. Static shapes only."""
    tokens, experts = x.shape[0], offs.shape[0]
    ends = offs.to(torch.int64)
    counts = ends - torch.cat([ends.new_zeros(1), ends[:-1]])
    padded_ends = ((counts + block - 1) // block * block).cumsum(0)
    shift = (padded_ends - (counts + block - 1) // block * block) - (ends - counts)  # padded start - start
    rows = torch.arange(tokens, device=x.device)
    expert = torch.searchsorted(ends, rows, right=True).clamp(max=experts - 1)
    position = rows + shift[expert]
    valid = (rows < ends[-1])[:, None]
    size = -(-(tokens + experts * (block - 1)) // block) * block
    x_pad = x.new_zeros(size, x.shape[1]).index_copy(0, position, torch.where(valid, x, 0))
    dy_pad = dy.new_zeros(size, dy.shape[1]).index_copy(0, position, torch.where(valid, dy, 0))
    return x_pad, dy_pad, padded_ends.to(torch.int32)


@dataclasses.dataclass
class _GroupedSite:
    name: str
    call_index: int
    fprop: fx.Node
    dgrad: fx.Node | None = None
    wgrad: fx.Node | None = None
    wgrad_operands: tuple = (None, None, False)  # (x, dY, flipped), read before any node is rewritten

    @property
    def key(self) -> str:
        return f"{self.name or '<root>'}#{self.call_index}"


def _is_grouped(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is aten._grouped_mm.default


def _sites(graph: fx.Graph) -> list[_GroupedSite]:
    sites, by_seq, calls = [], {}, {}
    for node in graph.nodes:
        if not _is_grouped(node):
            continue
        if node.meta.get("partitioner_tag") != "is_backward":
            name = module_name(node)
            site = _GroupedSite(name, calls.get(name, 0), node)
            calls[name] = site.call_index + 1
            sites.append(site)
            by_seq[node.meta.get("seq_nr")] = site
            continue
        site = by_seq.get(node.meta.get("seq_nr"))
        if site is None:
            continue
        if value(node).dim() == 3:
            site.wgrad = node
            site.wgrad_operands = wgrad_operands(site)
        else:
            site.dgrad = node
    return sites


class _Rewriter:
    def __init__(self, graph: fx.Graph, recipe: Recipe):
        self.graph, self.recipe = graph, recipe
        self.fake_mode = detect_fake_mode(graph)
        self.is_joint = any(n.meta.get("partitioner_tag") == "is_backward" for n in graph.nodes)
        self.seed_node: fx.Node | None = None

    def seed(self, device) -> fx.Node:
        """The stochastic-rounding seed node, as the matmul rewrite makes it (rank salt included)."""
        if self.seed_node is None:
            self.seed_node = step_seed(self.graph, self.fake_mode, self.recipe, device, self.is_joint, rank_salt())
        return self.seed_node

    def operand(self, builder: NodeBuilder, x: fx.Node, axis: int, fmt: OperandFormat, rht: int, rht_seed: int,
                offset_key: tuple) -> tuple[fx.Node, fx.Node]:
        seed, offset = None, 0
        if fmt.rounding is Rounding.STOCHASTIC:
            seed, offset = self.seed(value(x).device), philox_offset(*offset_key)
        values, tensor_scale = builder.call_multi(ops.quantize_dequantize, x, axis, fmt.spec, rht, rht_seed, seed,
                                                  offset, compute_dtype_of(self.recipe.compute_dtype.value))
        return values, tensor_scale

    def product(self, builder: NodeBuilder, node: fx.Node, a, b, offs: fx.Node | None = None):
        """The grouped GEMM of the dequantized operands: bf16 in, FP32 accumulation, bf16 out (what the
        reference computes for one-level scales; two-level formats are kept, see :func:`grouped_role_reason`)."""
        if offs is None:
            offs = node.args[2] if len(node.args) > 2 else node.kwargs.get("offs")
        return builder.call(aten._grouped_mm.default, a[0], b[0], offs)

    def fprop(self, site: _GroupedSite) -> None:
        node = site.fprop
        x, w = node.args[:2]
        gemm = self.recipe.gemm(Role.FPROP)
        rht_seed = rht_seed_for(self.recipe, site.name) if gemm.rht else 0
        builder = NodeBuilder(self.graph, self.fake_mode, node, node)
        a = self.operand(builder, x, 1, gemm.a, gemm.rht, rht_seed, (site.key, Role.FPROP, "a"))
        b = self.operand(builder, w, 1, gemm.b, gemm.rht, rht_seed, (site.key, Role.FPROP, "b"))
        self._replace(node, self.product(builder, node, a, b))

    def dgrad(self, site: _GroupedSite) -> None:
        node = site.dgrad
        dy, wt = node.args[:2]
        w = transpose_source(wt)
        gemm = self.recipe.gemm(Role.DGRAD)
        rht_seed = rht_seed_for(self.recipe, site.name) if gemm.rht else 0
        builder = NodeBuilder(self.graph, self.fake_mode, node, node)
        a = self.operand(builder, dy, 1, gemm.a, gemm.rht, rht_seed, (site.key, Role.DGRAD, "a"))
        values, tensor_scale = self.operand(builder, w, 2, gemm.b, gemm.rht, rht_seed, (site.key, Role.DGRAD, "b"))
        b = (builder.call(aten.permute.default, values, [0, 2, 1]), tensor_scale)
        self._replace(node, self.product(builder, node, a, b))

    def wgrad(self, site: _GroupedSite) -> None:
        node = site.wgrad
        offs = node.args[2] if len(node.args) > 2 else node.kwargs["offs"]
        x, dy, flipped = site.wgrad_operands
        gemm = self.recipe.gemm(Role.WGRAD)
        rht_seed = rht_seed_for(self.recipe, site.name) if gemm.rht else 0
        block = math.lcm(gemm.a.block, gemm.b.block, gemm.rht or 1)
        builder = NodeBuilder(self.graph, self.fake_mode, node, node)
        x_pad, dy_pad, padded_offs = builder.inline(functools.partial(pad_groups, block=block), x, dy, offs)
        dy_values, dy_scale = self.operand(builder, dy_pad, 0, gemm.a, gemm.rht, rht_seed, (site.key, Role.WGRAD, "a"))
        x_values, x_scale = self.operand(builder, x_pad, 0, gemm.b, gemm.rht, rht_seed, (site.key, Role.WGRAD, "b"))
        if flipped:  # dW[e]^T = dY_e^T x_e: the gradient of a transposed expert weight, as autograd forms it
            first = (builder.call(aten.permute.default, dy_values, [1, 0]), dy_scale)
            out = self.product(builder, node, first, (x_values, x_scale), offs=padded_offs)
        else:  # dW[e] = x_e^T dY_e
            first = (builder.call(aten.permute.default, x_values, [1, 0]), x_scale)
            out = self.product(builder, node, first, (dy_values, dy_scale), offs=padded_offs)
        self._replace(node, out)

    def _replace(self, node: fx.Node, out: fx.Node) -> None:
        node.replace_all_uses_with(out)
        self.graph.erase_node(node)


def wgrad_operands(site: _GroupedSite) -> tuple[fx.Node | None, fx.Node | None, bool]:
    """``(x, dY, flipped)`` of a grouped Wgrad. Autograd writes it ``_grouped_mm(x^T, dY)`` (experts x K x N),
    or, for an expert weight the forward read transposed, ``_grouped_mm(dY^T, x)`` (experts x N x K, the
    gradient of the stored weight): which operand is the forward's x decides which one is dY."""
    first, second = site.wgrad.args[0], site.wgrad.args[1]
    if second is site.fprop.args[0]:
        return second, transpose_source(first), True
    return transpose_source(first), second, False


def _facts(site: _GroupedSite) -> SiteFacts:
    x, w = site.fprop.args[:2]
    xv, wv = value(x), value(w)
    note = None
    if xv is None or wv is None or xv.dim() != 2 or wv.dim() != 3:
        note = "grouped GEMM other than tokens x K by experts x K x N"
    m = xv.shape[0] if xv is not None else None
    k = xv.shape[1] if xv is not None else None
    n = wv.shape[-1] if wv is not None else None
    return SiteFacts(site.name, "_grouped_mm", value(site.fprop).dtype, None, m, k, n, note=note)


def grouped_role_reason(recipe: Recipe, role: Role, facts: SiteFacts, structure: str | None = None) -> str | None:
    """Why ``role`` of the grouped GEMM ``facts`` stays in its original precision under ``recipe`` (None: it is
    rewritten). ``structure``: what the graph says against rewriting it (the pass's checks of the Wgrad's
    operands and of the weight the Dgrad reads; an eager call has none)."""
    gemm = recipe.gemm(role)
    if gemm is not None:
        if ScaleFormat.E4M3 in (gemm.a.scale, gemm.b.scale):
            return ("two-level (E4M3 x FP32 tensor) scales need an FP32 grouped product; torch's grouped GEMM "
                    "writes bf16 only")
        if recipe.compute_dtype.value != "bf16" or facts.dtype != torch.bfloat16:
            return "torch's grouped GEMM takes bf16 only"
        if role is Role.WGRAD:
            # The padded token axis is whole blocks whatever the token count: check the rest of the recipe.
            return structure or gemm_keep_reason(role, recipe, _PADDED_TOKENS, facts.k, facts.n, facts.dtype)
        if gemm.b.block_2d or gemm.a.block_2d:
            return "16x16 weight blocks of a stacked (experts x K x N) weight are not built; 1x16 blocks are"
    if role is Role.DGRAD and structure:
        return structure
    return gemm_keep_reason(role, recipe, facts.m, facts.k, facts.n, facts.dtype)


def _structure_reason(role: Role, site: _GroupedSite) -> str | None:
    """What the joint graph says against rewriting ``role`` of ``site`` (see :func:`grouped_role_reason`)."""
    if role is Role.WGRAD:
        x, dy, _ = site.wgrad_operands
        if any(t is None or value(t) is None or value(t).dim() != 2 for t in (x, dy)):
            return "Wgrad's operands are not the forward's (tokens x K) input and a (tokens x N) gradient"
        if value(x).shape[0] != value(dy).shape[0]:
            return "Wgrad's operands have different token counts"
    if role is Role.DGRAD and transpose_source(site.dgrad.args[1]) is not site.fprop.args[1]:
        return "Dgrad does not read the forward's expert weight transposed"
    return None


def _row(graph_index: int, site: _GroupedSite, node: fx.Node, role: Role, facts: SiteFacts, recipe: Recipe,
         reason: str | None) -> MatmulRow:
    experts = value(site.fprop.args[1]).shape[0] if value(site.fprop.args[1]) is not None else None
    rows, red, cols = {Role.FPROP: (facts.m, facts.k, facts.n), Role.DGRAD: (facts.m, facts.n, facts.k),
                       Role.WGRAD: (facts.k, facts.m, facts.n)}[role]
    shape = tuple(d if isinstance(d, int) or d is None else str(d) for d in (experts, rows, red, cols))
    if reason:
        return MatmulRow(graph_index, node.name, site.name, role.value, "_grouped_mm", shape, str(facts.dtype),
                         "kept", reason)
    gemm = recipe.gemm(role)
    sr = [name for name, fmt in (("a", gemm.a), ("b", gemm.b)) if fmt.rounding is Rounding.STOCHASTIC]
    return MatmulRow(graph_index, node.name, site.name, role.value, "_grouped_mm", shape, str(facts.dtype),
                     "rewritten", a_fmt=gemm.a.spec, b_fmt=gemm.b.spec, rht=gemm.rht,
                     rht_seed=rht_seed_for(recipe, site.name) if gemm.rht else None,
                     sr=f"{'+'.join(sr)} (seed {recipe.sr_seed_policy.value})" if sr else None)


def rewrite_grouped_mm(graph: fx.Graph, recipe: Recipe, *, graph_index: int = 0,
                       dry_run: bool = False) -> list[MatmulRow]:
    """Rewrite the grouped GEMMs of ``graph`` per ``recipe`` (Fprop and Dgrad); one row per grouped GEMM."""
    sites = _sites(graph)
    if not sites:
        return []
    blocks = block_ranges(site.name for site in sites)
    rows, todo = [], []
    for site in sites:
        facts = _facts(site)
        keep_site = site_keep_reason(facts, recipe.layers, blocks)
        for role, node in ((Role.FPROP, site.fprop), (Role.DGRAD, site.dgrad), (Role.WGRAD, site.wgrad)):
            if node is None:
                continue
            reason = keep_site or grouped_role_reason(recipe, role, facts, _structure_reason(role, site))
            rows.append(_row(graph_index, site, node, role, facts, recipe, reason))
            if reason is None:
                todo.append((site, role))
    for row in rows:
        log.debug("graph %d %s %s %s %s: %s", graph_index, row.module or "(top)", row.role, row.node,
                  row.shape_text(), row.detail())
    if dry_run or not todo:
        return rows
    rewriter = _Rewriter(graph, recipe)
    for site, role in todo:
        getattr(rewriter, role.value)(site)
    graph.eliminate_dead_code()
    graph.lint()
    return rows
