"""Data-parallel ``ufp4 train`` runs against a one-process run of the same arguments (docs/train.md).

Reads the ``results.json`` of each run directory given as ``LABEL=DIR`` (the first is the reference) and
writes a Markdown table: per recipe, step time and tokens/s (global) against the reference run and against
bf16 under the same parallelism, the largest per-step loss difference from the reference run's curve, the
validation loss, peak memory per rank, and whether the ranks' parameters ended identical.

    python benchmarks/parallel_report.py one=out/one ddp2=out/ddp fsdp2=out/fsdp2 --out parallel.md
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def load(directory: str) -> tuple[dict, dict]:
    """(runs by id, meta) of one run directory's results.json."""
    with open(pathlib.Path(directory) / "results.json") as f:
        payload = json.load(f)
    return {run["run_id"]: run for run in payload["runs"]}, payload.get("meta", {})


def gib(value) -> str:
    return "n/a" if value is None else f"{value / 2 ** 30:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=DIR, the reference (one process) first")
    p.add_argument("--out", help="write the table here as well as to stdout")
    args = p.parse_args(argv)
    sets = []
    for item in args.runs:
        label, _, directory = item.partition("=")
        if not directory:
            p.error(f"{item!r} is not LABEL=DIR")
        runs, meta = load(directory)
        sets.append((label, runs, meta))
    ref_label, ref_runs, _ = sets[0]
    lines = [f"Reference: `{ref_label}`. Step ms: median wall time per step after the first; tokens/s: global. "
             f"max |Δloss|: largest difference of a step's training loss (mean over ranks) from the reference "
             f"run's at the same step (same seed, same global batch).", "",
             "| run | recipe | ranks | step ms | × ref | × bf16 same run | tokens/s | max abs Δloss vs ref | val loss "
             "| ref val loss | peak GiB per rank | ranks identical |", "|" + "---|" * 12]
    for label, runs, _ in sets:
        for run_id, run in sorted(runs.items()):
            ref = ref_runs.get(run_id)
            bf16 = next((r for k, r in runs.items() if r["recipe"] == "bf16" and r["seed"] == run["seed"]), None)
            step = run.get("step_time_s")
            diffs = [abs(a - b) for a, b in zip(run["losses"], ref["losses"])] if ref else []
            per_rank = run.get("peak_memory_per_rank") or [run.get("peak_memory", {}).get("bytes")]
            cells = [label, run["recipe"], str(run.get("world_size", 1)),
                     f"{step * 1e3:.1f}" if step else "n/a",
                     f"{step / ref['step_time_s']:.2f}" if step and ref and ref.get("step_time_s") else "n/a",
                     f"{step / bf16['step_time_s']:.2f}" if step and bf16 and bf16.get("step_time_s") else "n/a",
                     f"{run['tokens_per_s']:,.0f}" if run.get("tokens_per_s") else "n/a",
                     f"{max(diffs):.4f}" if diffs else "n/a",
                     f"{run['val_loss']:.4f}" if run.get("val_loss") is not None else "n/a",
                     f"{ref['val_loss']:.4f}" if ref and ref.get("val_loss") is not None else "n/a",
                     " / ".join(gib(b) for b in per_rank), str(run.get("ranks_identical", "n/a"))]
            lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
