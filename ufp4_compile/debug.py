"""Seeing what the ufp4 pass did: readable graph text and dump files, here; explain, logging and the structured
trace, elsewhere (listed below).

- ``ufp4_compile.explain(model, *args, recipe=None, options=None, **kwargs)`` (in ``ufp4_compile/backend.py``,
  beside the AOT backend it runs; the model's inputs as the model takes them, ufp4 options in ``options``)
  returns a :class:`Report`: one row per matmul (module, role, shape, what was done with which recipe
  fields, or kept and why); ``str()`` and ``to_dict()``.

- ``UFP4_DUMP_DIR=DIR`` (or ``options={"dump_dir": DIR}``, or ``TORCH_COMPILE_DEBUG=1``, which dumps into
  ``<torch debug dir>/ufp4``) writes, per compiled graph ``NNN``:
  ``graph_NNN_joint_before.txt`` / ``graph_NNN_joint_after.txt`` (the graph the pass saw, forward and
  backward sections, before and after the rewrite), ``graph_NNN_forward.txt`` / ``graph_NNN_backward.txt``
  (what Inductor compiles after the partitioner: the forward's extra outputs are what backward saves) and
  ``graph_NNN_report.txt``.
- ``TORCH_LOGS="+ufp4_compile"`` logs each decision (logger ``ufp4_compile.passes.rewrite_matmuls``).
- With ``TORCH_TRACE`` set, each graph's report is a structured ``artifact`` (``ufp4_report``) in tlparse
  (written by the pass: ``ufp4_compile.passes.report.trace_report``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.fx as fx

from ufp4_compile.passes.report import Report

log = logging.getLogger("ufp4_compile.debug")
DUMP_ENV = "UFP4_DUMP_DIR"


def _type_text(val) -> str:
    if isinstance(val, torch.Tensor):
        dtype = str(val.dtype).replace("torch.", "")
        return f"{dtype}[{', '.join(str(d) for d in val.shape)}]"
    if isinstance(val, (tuple, list)):
        return "(" + ", ".join(_type_text(v) for v in val) + ")"
    return type(val).__name__ if val is not None else "?"


def _arg_text(arg) -> str:
    if isinstance(arg, fx.Node):
        return arg.name
    if isinstance(arg, (tuple, list)):
        inner = ", ".join(_arg_text(a) for a in arg)
        return f"[{inner}]"
    return repr(arg)


def _target_text(node: fx.Node) -> str:
    target = node.target
    if node.op != "call_function":
        return f"{node.op}"
    name = getattr(target, "__name__", str(target))
    namespace = getattr(target, "namespace", None)
    return f"{namespace}.{name}" if namespace else name


def node_line(node: fx.Node) -> str:
    args = [_arg_text(a) for a in node.args] + [f"{k}={_arg_text(v)}" for k, v in node.kwargs.items()]
    text = f"{node.name}: {_type_text(node.meta.get('val'))} = {_target_text(node)}({', '.join(args)})"
    if node.op == "placeholder":
        text = f"{node.name}: {_type_text(node.meta.get('val'))} = input"
    if node.op == "output":
        text = f"return {_arg_text(node.args[0])}"
    return text


def format_graph(graph: fx.Graph) -> str:
    """One line per node (``name: dtype[shape] = target(args)``), grouped into forward / backward when the
    graph is a joint graph."""
    regions: dict[str, list[str]] = {}
    for node in graph.nodes:
        tag = node.meta.get("partitioner_tag")
        region = {"is_forward": "forward", "is_backward": "backward"}.get(tag, "graph")
        if node.op == "output":
            region = "outputs"
        regions.setdefault(region, []).append(node_line(node))
    parts = []
    for region in ("forward", "backward", "graph", "outputs"):
        if region in regions:
            parts.append(f"# {region}\n" + "\n".join(regions[region]))
    return "\n\n".join(parts) + "\n"


class DumpDir:
    """Writes readable graphs and the report of every compiled graph into one folder."""

    needs_pass = True

    def __init__(self, path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def _write(self, graph_id: int, what: str, text: str) -> None:
        file = self.path / f"graph_{graph_id:03d}_{what}.txt"
        file.write_text(text)
        log.debug("wrote %s", file)

    def graph_before(self, graph_id: int, graph: fx.Graph) -> None:
        self._write(graph_id, "joint_before", format_graph(graph))

    def graph_after(self, graph_id: int, graph: fx.Graph, rows) -> None:
        self._write(graph_id, "joint_after", format_graph(graph))
        self._write(graph_id, "report", str(Report("", list(rows), 1)) + "\n")

    def compiled(self, graph_id: int, gm: fx.GraphModule, is_backward: bool) -> None:
        self._write(graph_id, "backward" if is_backward else "forward", format_graph(gm.graph))


def default_dump_dir(option: str | None) -> Path | None:
    """``dump_dir`` option, else ``$UFP4_DUMP_DIR``, else ``<debug dir>/ufp4`` under TORCH_COMPILE_DEBUG=1."""
    if option:
        return Path(option)
    if os.environ.get(DUMP_ENV):
        return Path(os.environ[DUMP_ENV])
    if os.environ.get("TORCH_COMPILE_DEBUG", "0") not in ("", "0"):
        from torch._dynamo.utils import get_debug_dir

        return Path(get_debug_dir()) / "ufp4"
    return None
