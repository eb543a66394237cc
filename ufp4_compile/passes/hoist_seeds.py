"""Stochastic-rounding seeds moved to the start of the graph Inductor lowers.

A graph's seed is a small input-free computation: ``aten.randint`` (``sr_seed_policy="per_step"``; Inductor's
random decompositions make it ``inductor_seeds`` -> ``inductor_lookup_seed`` -> ``inductor_randint``), maybe
XORed with the rank's salt, or a constant (``fixed``: ``scalar_tensor``, ``full`` after decomposition).
AOTAutograd's partitioner places it in the backward just before its first user. In a ufp4-mean backward that
user is dY's first quantization, which comes after dY's ``sample_median``: when Inductor lowers the selection (in
graph order) the seed does not exist yet, so the selection launch cannot also quantize mu
(``lowering.median._fused_quantization``) and mu takes a launch of its own.

Moving the chain next to the placeholders changes no value: its nodes read no tensor, and every random node
keeps its arguments (the graph's one ``inductor_seeds`` draw and each lookup's index). Only nodes of the listed
ops with at most ``MAX_NUMEL`` elements move, so no large tensor lives longer.
"""

from __future__ import annotations

import torch
import torch._inductor.inductor_prims  # noqa: F401  (registers prims.inductor_seeds and its kin)
import torch.fx as fx

aten, prims = torch.ops.aten, torch.ops.prims
SEED_OPS = (aten.full.default, aten.scalar_tensor.default, aten.randint.low, aten.bitwise_xor.Scalar,
            prims.inductor_seeds.default, prims.inductor_lookup_seed.default, prims.inductor_randint.default)
MAX_NUMEL = 64  # inductor_seeds holds one seed per random node of the graph


def _small(node: fx.Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.numel() <= MAX_NUMEL


def hoist_seeds(gm: fx.GraphModule) -> int:
    """Move the input-free seed computations that feed ufp4 ops to just after the last placeholder, in their
    order; returns how many nodes moved."""
    graph = gm.graph
    free: set[fx.Node] = set()
    for node in graph.nodes:
        if (node.op == "call_function" and node.target in SEED_OPS and _small(node)
                and all(arg in free for arg in node.all_input_nodes)):
            free.add(node)
    wanted, stack = set(), [n for n in free if any(getattr(u.target, "namespace", None) == "ufp4" for u in n.users)]
    while stack:
        node = stack.pop()
        if node not in wanted:
            wanted.add(node)
            stack.extend(node.all_input_nodes)
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    anchor = placeholders[-1] if placeholders else None
    moved = 0
    for node in [n for n in graph.nodes if n in wanted]:
        if anchor is None:  # no placeholders: before the graph's first node
            first = next(iter(graph.nodes))
            if first is not node:
                first.prepend(node)
                moved += 1
        elif anchor.next is not node:
            anchor.append(node)
            moved += 1
        anchor = node
    if moved:
        graph.lint()
        gm.recompile()
    return moved
