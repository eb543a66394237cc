"""From run results to the report's figures: per-recipe spread, BF16-relative gaps, noise floor, flags."""

from __future__ import annotations

import math
import statistics

from ufp4_compile.training import metrics

BASELINE = "bf16"


def _finite(values):
    return [v for v in values if v is not None and math.isfinite(v)]


def _pairwise_rel(values: list[float]) -> float | None:
    """Mean |a - b| / mean over all pairs (None with fewer than two values)."""
    pairs = [(a, b) for i, a in enumerate(values) for b in values[i + 1:]]
    if not pairs:
        return None
    mean = statistics.fmean(values)
    return statistics.fmean(abs(a - b) for a, b in pairs) / mean


def run_metrics(result: dict, baseline: dict | None, last_n: int) -> dict:
    """Window mean, gaps to the same seed's bf16 run, validation gap and instability of one run."""
    losses = result["losses"]
    finite = result["complete"]
    entry = {"last_n_mean": metrics.window_mean(losses, last_n) if finite else float("nan")}
    ref = baseline["losses"] if baseline is not None and baseline["complete"] else None
    if ref is not None and result["recipe"] != BASELINE:
        entry["gap"] = metrics.relative_gap(losses, ref, last_n)
        val, val_ref = result.get("val_loss"), baseline.get("val_loss")
        entry["val_gap"] = (val - val_ref) / val_ref if val is not None and val_ref else float("nan")
    entry["instability"] = metrics.instability(losses, result["steps_expected"],
                                               ref if result["recipe"] != BASELINE else None)
    return entry


def noise_floor(results: list[dict], last_n: int) -> dict:
    """The bf16 noise floor: the first seed run twice, and runs with different seeds (docs/train.md)."""
    bf16 = {r["seed"]: r for r in results if r["recipe"] == BASELINE and r["tag"] != "repeat" and r["complete"]}
    repeat = next((r for r in results if r["recipe"] == BASELINE and r["tag"] == "repeat" and r["complete"]), None)
    floor = metrics.noise_floor({s: r["losses"] for s, r in bf16.items()},
                                repeat["losses"] if repeat else None, last_n)
    vals = [bf16[s]["val_loss"] for s in sorted(bf16)]
    same_val = None
    if repeat is not None and bf16:
        first = bf16[min(bf16)]["val_loss"]
        same_val = abs(repeat["val_loss"] - first) / first
    diff_val = _pairwise_rel(vals)
    floor["val_same_seed"], floor["val_different_seeds"] = same_val, diff_val
    candidates = _finite([same_val, diff_val])
    floor["val_floor"] = max(candidates) if candidates else None
    means = [metrics.window_mean(r["losses"], last_n) for r in bf16.values()]
    floor["bf16_last_n_std"] = metrics.spread(means)["std"] if means else None
    floor["bf16_last_n_mean"] = statistics.fmean(means) if means else None
    return floor


def _recipe_summary(name: str, runs: list[dict], per_run: dict[str, dict]) -> dict:
    summary = {"recipe": name, "seeds": [r["seed"] for r in runs]}
    summary["last_n_mean"] = metrics.spread([per_run[r["run_id"]]["last_n_mean"] for r in runs])
    summary["val_loss"] = metrics.spread([r["val_loss"] if r["val_loss"] is not None else float("nan")
                                          for r in runs])
    for key in ("tokens_per_s", "step_time_s"):
        summary[key] = metrics.spread(_finite(r[key] for r in runs))
    compiled = [r for r in runs if not r.get("compilation_reused")] or runs  # later seeds reuse the graphs
    summary["compile_time_s"] = metrics.spread(_finite(r["compile_time_s"] for r in compiled))
    summary["peak_memory_bytes"] = metrics.spread(_finite(r["peak_memory"]["bytes"] for r in runs))
    summary["peak_memory_kind"] = runs[0]["peak_memory"]["label"]
    gaps = [per_run[r["run_id"]]["gap"] for r in runs if "gap" in per_run[r["run_id"]]]
    if name != BASELINE:
        for key in ("abs", "signed", "of_means"):
            summary[f"gap_{key}"] = metrics.spread([g[key] for g in gaps])
        summary["val_gap"] = metrics.spread([per_run[r["run_id"]].get("val_gap", float("nan")) for r in runs])
    summary["unstable_runs"] = {r["run_id"]: per_run[r["run_id"]]["instability"]["reasons"] for r in runs
                                if per_run[r["run_id"]]["instability"]["unstable"]}
    return summary


def _flags(summary: dict, floor: dict) -> list[str]:
    flags = [f"{run}: {'; '.join(reasons)}" for run, reasons in summary["unstable_runs"].items()]
    bf16_std, mean = floor.get("bf16_last_n_std"), floor.get("bf16_last_n_mean")
    floor_loss = floor["floor"] * mean if floor.get("floor") is not None and mean else None
    std = summary["last_n_mean"]["std"]
    if summary["recipe"] != BASELINE and summary["last_n_mean"]["n"] > 1 and bf16_std is not None \
            and metrics.large_seed_spread(std, bf16_std, floor_loss):
        flags.append(f"large seed spread: std {std:.4g} of the last-N mean loss vs bf16 {bf16_std:.4g}")
    return flags


def analyze(results: list[dict], last_n: int) -> dict:
    """Per-run and per-recipe figures, the noise floor, recipe comparisons and flags."""
    main = [r for r in results if r["tag"] == ""]
    baselines = {r["seed"]: r for r in main if r["recipe"] == BASELINE}
    per_run = {r["run_id"]: run_metrics(r, baselines.get(r["seed"]), last_n) for r in results}
    floor = noise_floor(results, last_n)
    recipes = list(dict.fromkeys(r["recipe"] for r in main))
    summaries = {}
    for name in recipes:
        summaries[name] = _recipe_summary(name, [r for r in main if r["recipe"] == name], per_run)
        summaries[name]["flags"] = _flags(summaries[name], floor)
        gap = summaries[name].get("gap_abs")
        summaries[name]["gap_exceeds_floor"] = (gap is not None and floor["floor"] is not None
                                                and math.isfinite(gap["mean"]) and gap["mean"] > floor["floor"])
    signed = {name: {r["seed"]: per_run[r["run_id"]]["gap"]["signed"] for r in main
                     if r["recipe"] == name and "gap" in per_run[r["run_id"]]}
              for name in recipes if name != BASELINE}
    val = {name: {r["seed"]: per_run[r["run_id"]]["val_gap"] for r in main
                  if r["recipe"] == name and "val_gap" in per_run[r["run_id"]]}
           for name in recipes if name != BASELINE}
    return {"last_n": last_n, "per_run": per_run, "recipes": summaries, "noise_floor": floor,
            "comparisons": metrics.compare_recipes(signed, floor["floor"]),
            "val_comparisons": metrics.compare_recipes(val, floor["val_floor"])}
