"""Capturing and reading the graphs the ufp4 backend produces (for tests and snapshots)."""

from __future__ import annotations

import dataclasses
import re

import torch
import torch.fx as fx

from ufp4_compile.passes.fx_utils import MATMUL_TARGETS

aten = torch.ops.aten


@dataclasses.dataclass
class GraphCapture:
    """A debugging sink (see :mod:`ufp4_compile.debug`) that keeps the compiled forward and backward graphs.

    ``forward[i]`` / ``backward[i]``: the GraphModules Inductor (or the AOT test backend) compiled, after the
    partitioner; ``joint_after[i]``: the joint graph's text after the rewrite.
    """

    needs_pass = True
    forward: list = dataclasses.field(default_factory=list)
    backward: list = dataclasses.field(default_factory=list)
    joint_before: list = dataclasses.field(default_factory=list)
    joint_after: list = dataclasses.field(default_factory=list)

    def graph_before(self, graph_id: int, graph: fx.Graph) -> None:
        from ufp4_compile.debug import format_graph

        self.joint_before.append(format_graph(graph))

    def graph_after(self, graph_id: int, graph: fx.Graph, rows) -> None:
        from ufp4_compile.debug import format_graph

        self.joint_after.append(format_graph(graph))

    def compiled(self, graph_id: int, gm: fx.GraphModule, is_backward: bool) -> None:
        (self.backward if is_backward else self.forward).append(gm)


_FREE = re.compile(r";\s+(\w+ = )+None$")  # "; a = b = None": deallocation, not computation
_ITEM = re.compile(r'^(\s*)(\w+): "([^"]+)" = (\w+)\[(\d+)\]$')


_TUPLE = re.compile(r"^(\s*)(\w+) = (.+)$")  # an unannotated assignment: a tuple-valued op


def _fold_getitems(lines: list[str]) -> list[str]:
    """``t = op(...)`` + ``a: "T" = t[0]`` ... -> ``a, b, c = op(...)  # T, ...``: one line per op."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        head = _TUPLE.match(lines[i])
        items, j = [], i + 1
        while head and j < len(lines) and (item := _ITEM.match(lines[j])) and item[4] == head[2]:
            items.append(item)
            j += 1
        if items:
            names, types = ", ".join(it[2] for it in items), ", ".join(it[3] for it in items)
            out.append(f"{head[1]}{names} = {head[3]}  # {types}")
            i = j
        else:
            out.append(lines[i])
            i += 1
    return out


def normalized(gm: fx.GraphModule) -> str:
    """``print_readable`` normalized by ``torch._dynamo.testing.normalize_gm`` (no addresses, paths or
    comments), without deallocation suffixes, and with each multi-output op on one line."""
    from torch._dynamo.testing import normalize_gm

    text = normalize_gm(gm.print_readable(print_output=False, include_stride=False, include_device=False))
    lines = [_FREE.sub("", line.rstrip()) for line in text.strip().splitlines() if line.strip()]
    return "\n".join(_fold_getitems(lines)) + "\n"


def count_calls(gm: fx.GraphModule, target) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)


def ufp4_gemms(gm: fx.GraphModule) -> int:
    return count_calls(gm, torch.ops.ufp4.scaled_mm.default)


def eligible_matmuls(gm: fx.GraphModule) -> list[fx.Node]:
    """High-precision matmuls left in ``gm`` (the pass's own rank-one terms are not eligible)."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in MATMUL_TARGETS
            and not n.meta.get("ufp4_generated")]


def saved_tensors(forward: fx.GraphModule, num_outputs: int) -> list[torch.Tensor]:
    """Fake values of what a partitioned forward saves for backward: its outputs past the user outputs."""
    output = next(n for n in forward.graph.nodes if n.op == "output")
    saved = output.args[0][num_outputs:]
    return [n.meta["val"] for n in saved if isinstance(n, fx.Node) and isinstance(n.meta.get("val"), torch.Tensor)]
