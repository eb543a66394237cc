"""results.png: smoothed loss curves (mean over seeds, min-max band) and the BF16-relative gap vs step."""

from __future__ import annotations

import math
import pathlib

from ufp4_compile.training.analysis import BASELINE
from ufp4_compile.training.metrics import per_step_gap


def smooth(values: list[float], span: int) -> list[float]:
    """Trailing mean over ``span`` steps (span >= 1); NaNs propagate."""
    out, total = [], 0.0
    for t, v in enumerate(values):
        total += v
        if t >= span:
            total -= values[t - span]
        out.append(total / min(t + 1, span))
    return out


def _stack(curves: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    length = min(len(c) for c in curves)
    cols = [[c[t] for c in curves] for t in range(length)]
    return ([sum(col) / len(col) for col in cols], [min(col) for col in cols], [max(col) for col in cols])


def write_png(path: pathlib.Path, results: list[dict], analysis: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    main = [r for r in results if r["tag"] == "" and r["losses"]]
    steps = max((r["steps_expected"] for r in main), default=1)
    span = max(1, steps // 50)
    baselines = {r["seed"]: r["losses"] for r in main if r["recipe"] == BASELINE}
    fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name in dict.fromkeys(r["recipe"] for r in main):
        runs = [r for r in main if r["recipe"] == name]
        mean, low, high = _stack([smooth(r["losses"], span) for r in runs])
        x = range(len(mean))
        (line,) = ax_loss.plot(x, mean, label=f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", lw=1.2)
        if len(runs) > 1:
            ax_loss.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
        gaps = [smooth(per_step_gap(r["losses"], baselines[r["seed"]]), span) for r in runs
                if name != BASELINE and r["seed"] in baselines]
        if gaps:
            g_mean, g_low, g_high = _stack(gaps)
            ax_gap.plot(range(len(g_mean)), [100 * v for v in g_mean], color=line.get_color(), label=name, lw=1.2)
            if len(gaps) > 1:
                ax_gap.fill_between(range(len(g_mean)), [100 * v for v in g_low], [100 * v for v in g_high],
                                    color=line.get_color(), alpha=0.2, lw=0)
    seeds = sorted(baselines)
    if len(seeds) > 1:  # what a different seed alone does, on the same scale
        pair = smooth(per_step_gap(baselines[seeds[1]], baselines[seeds[0]]), span)
        ax_gap.plot(range(len(pair)), [100 * v for v in pair], color="gray", lw=0.8,
                    label=f"bf16 seed {seeds[1]} vs seed {seeds[0]}")
    floor = analysis["noise_floor"]["floor"]
    if floor is not None and math.isfinite(floor):
        ax_gap.axhline(100 * floor, color="gray", ls="--", lw=1, label="bf16 noise floor (window)")
    for ax in (ax_loss, ax_gap):
        ax.axvspan(steps - analysis["last_n"], steps, color="gray", alpha=0.08, lw=0)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_ylabel(f"training loss (trailing mean over {span} steps)")
    ax_loss.set_yscale("log")
    ax_loss.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_loss.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax_gap.set_ylabel("|L − L_bf16| / L_bf16 (%)")
    ax_gap.set_title(f"BF16-relative gap; shaded: last {analysis['last_n']} steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
