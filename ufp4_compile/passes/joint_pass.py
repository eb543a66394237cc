"""The Inductor hook: one composite ``CustomGraphPass`` run on the joint (or inference) graph.

It rewrites the matmuls (:func:`rewrite_matmuls`; then, where the device takes dense GEMMs, :func:`dense_gemms`
and :func:`split_epilogues`), collects the report rows and hands the graph before and
after to the debugging sinks (dump files, structured trace). ``uuid()`` covers everything that changes
the compiled output, so Inductor's FX/AOT caches stay correct: the sources of the pass, the ops, the
numerics, the lowering and the kernels, the recipe and the torch/Triton versions. On a cache hit Inductor
does not call the pass at all (no report rows, no dumps).
"""

from __future__ import annotations

import functools
import itertools
import logging
from pathlib import Path

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from ufp4_compile.passes.dense_gemms import dense_gemms
from ufp4_compile.passes.rewrite_grouped_mm import rewrite_grouped_mm
from ufp4_compile.passes.report import Report, trace_report
from ufp4_compile.passes.rewrite_matmuls import rewrite_matmuls
from ufp4_compile.passes.seeds import rank_salt
from ufp4_compile.passes.split_epilogues import split_epilogues
from ufp4_compile.recipes import Recipe

log = logging.getLogger("ufp4_compile.passes.joint_pass")
_PACKAGE = Path(__file__).resolve().parent.parent
# Sources whose content changes what a compiled graph computes or how it is generated.
_HASHED_DIRS = ("passes", "numerics", "lowering", "kernels")
_HASHED_FILES = ("ops.py", "backend.py", "recipes.py", "dispatch.py")
_GRAPH_IDS = itertools.count()


def hashed_files() -> list[Path]:
    """The package sources ``uuid()`` covers."""
    files = [_PACKAGE / name for name in _HASHED_FILES]
    for folder in _HASHED_DIRS:
        files += sorted((_PACKAGE / folder).rglob("*.py"))
    return [f for f in files if f.is_file()]


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    files = hashed_files()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    extra = f"torch={torch.__version__};triton={triton_version}"
    return get_hash_for_files(tuple(str(f) for f in files), extra).hex()


class Ufp4JointPass(CustomGraphPass):
    """Rewrites matmuls per ``recipe``; ``dry_run`` only decides and reports; ``extra`` runs after it
    (a user's own ``joint_custom_pre_pass``: Inductor takes one callable per hook on torch 2.11)."""

    def __init__(self, recipe: Recipe, *, report: Report | None = None, sinks=(), dry_run: bool = False,
                 dense: bool | str = "auto",
                 extra=None, inputs=None, key_extra: str = ""):
        self.recipe, self.sinks, self.dry_run, self.extra = recipe, tuple(sinks), dry_run, extra
        self.key_extra = key_extra  # settings outside the graph that change its code (the lowering's), for uuid()
        self.inputs = inputs  # GraphInputs of the Dynamo graph (passes/graph_inputs.py), or None
        self.dense = dense  # "auto": dense GEMMs where the device has no native 4-bit MMA; True: always; False: never
        self.report = report if report is not None else Report(recipe.name)
        self.last_graph_id: int | None = None

    def __call__(self, graph: fx.Graph) -> None:
        graph_id = self.last_graph_id = next(_GRAPH_IDS)
        for sink in self.sinks:
            sink.graph_before(graph_id, graph)
        rows = rewrite_matmuls(graph, self.recipe, graph_index=graph_id, dry_run=self.dry_run, inputs=self.inputs)
        rows += rewrite_grouped_mm(graph, self.recipe, graph_index=graph_id, dry_run=self.dry_run)
        if not self.dry_run and self.dense is not False:
            if dense_gemms(graph, force=self.dense is True):
                split_epilogues(graph)
        self.report.extend(rows)
        self.report.graphs += 1
        done = sum(r.rewritten for r in rows)
        log.info("graph %d: %d matmul(s), %d rewritten, %d kept (recipe %r)", graph_id, len(rows), done,
                 len(rows) - done, self.recipe.name)
        for sink in self.sinks:
            sink.graph_after(graph_id, graph, rows)
        trace_report(graph_id, rows)
        if self.extra is not None:
            self.extra(graph)

    def uuid(self) -> str | None:
        """None (no caching) while graphs are dumped or when the extra pass has no uuid of its own."""
        if any(getattr(sink, "needs_pass", True) for sink in self.sinks):
            return None
        extra_uuid = ""
        if self.extra is not None:
            extra_uuid = self.extra.uuid() if hasattr(self.extra, "uuid") else None
            if not extra_uuid:
                return None
        inputs = self.inputs.fingerprint() if self.inputs is not None else "none"
        return (f"ufp4-{source_hash()}-{self.recipe.fingerprint()}-dry{int(self.dry_run)}-dense{self.dense}-"
                f"{extra_uuid}-salt{rank_salt()}-inputs{inputs}-{self.key_extra}")
