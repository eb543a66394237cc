"""What the pass did to each matmul: one :class:`MatmulRow` per matmul node, gathered in a :class:`Report`;
:func:`trace_report` writes one graph's report into the structured trace (``TORCH_TRACE``, read by tlparse)."""

from __future__ import annotations

import dataclasses
import json

import torch


@dataclasses.dataclass
class MatmulRow:
    """One matmul: where it is, which GEMM it is, and what was done with it (or why it was kept)."""

    graph: int  # index of the compiled graph (several with graph breaks)
    node: str  # FX node name in the graph the pass saw
    module: str  # qualified module name ("" at the top level)
    role: str | None  # "fprop", "dgrad", "wgrad"; None for a matmul that could not be classified
    kind: str  # "mm", "addmm", "bmm"
    shape: tuple  # (rows, reduction, cols) of this GEMM, with a leading batch for bmm
    dtype: str
    action: str  # "rewritten" or "kept"
    reason: str | None = None  # why it was kept
    a_fmt: str | None = None  # OperandFormat.spec of operand a (X for Fprop, dY for Dgrad and Wgrad)
    b_fmt: str | None = None  # ... of operand b (W for Fprop and Dgrad, X for Wgrad)
    rht: int = 0  # Hadamard size along the reduction axis (0: none)
    rht_seed: int | None = None
    sr: str | None = None  # which operands round stochastically and where the seed comes from
    mean_split: str | None = None  # "fp4" / "high" when the mean-residual split is applied

    @property
    def rewritten(self) -> bool:
        return self.action == "rewritten"

    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.shape)

    def detail(self) -> str:
        if not self.rewritten:
            return f"kept: {self.reason}"
        parts = [f"a={self.a_fmt}", f"b={self.b_fmt}"]
        if self.rht:
            parts.append(f"rht={self.rht} (seed {self.rht_seed})")
        if self.sr:
            parts.append(f"sr={self.sr}")
        if self.mean_split:
            parts.append(f"mean_split={self.mean_split}")
        return " ".join(parts)


@dataclasses.dataclass
class Report:
    """The decisions of the ufp4 pass over every graph it saw, readable (``str``) and JSON-ready."""

    recipe: str
    rows: list[MatmulRow] = dataclasses.field(default_factory=list)
    graphs: int = 0
    cached_graphs: int = 0  # graphs Inductor's caches served: compiled by the pass earlier, no rows here

    def extend(self, rows: list[MatmulRow]) -> None:
        self.rows.extend(rows)

    @property
    def rewritten(self) -> list[MatmulRow]:
        return [r for r in self.rows if r.rewritten]

    @property
    def kept(self) -> list[MatmulRow]:
        return [r for r in self.rows if not r.rewritten]

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "graphs": self.graphs, "cached_graphs": self.cached_graphs,
                "counts": {"matmuls": len(self.rows), "rewritten": len(self.rewritten), "kept": len(self.kept)},
                "rows": [dataclasses.asdict(r) for r in self.rows]}

    def __str__(self) -> str:
        head = (f"ufp4 report: recipe {self.recipe!r}, {self.graphs} graph(s), {len(self.rows)} matmul(s): "
                f"{len(self.rewritten)} rewritten, {len(self.kept)} kept")
        if self.cached_graphs:
            head += (f"; {self.cached_graphs} more graph(s) served from Inductor's cache without rows (the pass "
                     "ran when they were cached; torch._inductor.config.force_disable_caches=True lists them)")
        table = [("module", "role", "shape (rows x red x cols)", "dtype", "what")]
        for r in self.rows:
            table.append((r.module or "(top)", r.role or "?", r.shape_text(), r.dtype.replace("torch.", ""),
                          r.detail()))
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        lines = [head]
        for row in table:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Report(recipe={self.recipe!r}, matmuls={len(self.rows)}, rewritten={len(self.rewritten)})"


def trace_report(graph_id: int, rows) -> None:
    """The report of one graph as a structured-trace artifact (tlparse lists it as ``ufp4_report``)."""
    report = Report("", list(rows), 1)
    torch._logging.trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": f"ufp4_report_graph_{graph_id}", "encoding": "json"},
        payload_fn=lambda: json.dumps(report.to_dict()),
    )
