"""Loss-curve metrics: the BF16-relative gap, seed spread, the noise floor and instability flags.

Pure functions on lists of floats (per-step training losses); docs/train.md defines each quantity.
"""

from __future__ import annotations

import itertools
import math
import statistics

SPIKE_WINDOW = 50  # trailing steps whose median a loss (or loss ratio) is compared with
SPIKE_MIN_HISTORY = 10  # no spike test before this many trailing steps exist
SPIKE_TOLERANCE = 0.25  # a spike: more than 25% above the trailing median
SEED_SPREAD_FACTOR = 3.0  # a recipe's seed spread is "large" above 3x the bf16 spread (and above the floor)


def window(values: list[float], last_n: int) -> list[float]:
    """The last ``last_n`` values (all of them when there are fewer)."""
    if last_n <= 0:
        raise ValueError(f"last_n={last_n!r} is not valid; it must be a positive integer")
    return list(values[-last_n:])


def window_mean(values: list[float], last_n: int) -> float:
    return statistics.fmean(window(values, last_n))


def relative_gap(losses: list[float], ref: list[float], last_n: int) -> dict[str, float]:
    """Gap of ``losses`` to the reference curve ``ref`` (same steps) over the last ``last_n`` steps.

    ``abs``: mean over the window of |L_t - R_t| / R_t (the UFP4 paper's BF16-relative gap);
    ``signed``: mean of (L_t - R_t) / R_t (positive = worse than the reference);
    ``of_means``: (mean L - mean R) / mean R over the window.
    A curve shorter than its reference (a run stopped on a non-finite loss) has NaN gaps.
    """
    if len(losses) != len(ref):
        nan = float("nan")
        return {"abs": nan, "signed": nan, "of_means": nan}
    lw, rw = window(losses, last_n), window(ref, last_n)
    per_step = [(a - b) / b for a, b in zip(lw, rw)]
    return {
        "abs": statistics.fmean(abs(g) for g in per_step),
        "signed": statistics.fmean(per_step),
        "of_means": (statistics.fmean(lw) - statistics.fmean(rw)) / statistics.fmean(rw),
    }


def per_step_gap(losses: list[float], ref: list[float]) -> list[float]:
    """|L_t - R_t| / R_t for every common step (the gap-vs-step curve)."""
    return [abs(a - b) / b for a, b in zip(losses, ref)]


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max; all NaN if any value is not finite."""
    values = [float(v) for v in values]
    nan = float("nan")
    if not values:
        return {"n": 0, "mean": nan, "std": nan, "min": nan, "max": nan}
    if not all(math.isfinite(v) for v in values):  # a diverged run: no meaningful mean or spread
        return {"n": len(values), "mean": nan, "std": nan, "min": nan, "max": nan}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": statistics.fmean(values), "std": std, "min": min(values),
            "max": max(values)}


def find_spikes(series: list[float], tolerance: float = SPIKE_TOLERANCE, span: int = SPIKE_WINDOW) -> list[int]:
    """Steps t where series[t] > (1 + tolerance) * median(series[t-span:t]) (needs SPIKE_MIN_HISTORY steps)."""
    spikes = []
    for t in range(SPIKE_MIN_HISTORY, len(series)):
        if series[t] > (1 + tolerance) * statistics.median(series[max(0, t - span): t]):
            spikes.append(t)
    return spikes


def instability(losses: list[float], steps: int, ref: list[float] | None = None,
                tolerance: float = SPIKE_TOLERANCE) -> dict:
    """Flags of one run: a non-finite loss (the run stopped there) and loss spikes.

    With a reference curve (bf16, same seed, same batches) spikes are searched in the ratio L_t / R_t, so
    a batch that is hard for every recipe is not counted; without one, in the loss itself.
    """
    non_finite = next((t for t, v in enumerate(losses) if not math.isfinite(v)), None)
    if non_finite is None and len(losses) < steps:
        non_finite = len(losses)  # stopped early: the first unrecorded step was not finite
    finite = losses[:non_finite] if non_finite is not None else losses
    series = [a / b for a, b in zip(finite, ref)] if ref is not None else finite
    spikes = find_spikes(series, tolerance)
    reasons = []
    if non_finite is not None:
        reasons.append(f"non-finite loss at step {non_finite}")
    if spikes:
        reasons.append(f"{len(spikes)} loss spike(s), first at step {spikes[0]}")
    return {"non_finite_step": non_finite, "spike_steps": spikes, "unstable": bool(reasons), "reasons": reasons}


def pairwise_gaps(curves: list[list[float]], last_n: int) -> list[float]:
    """Absolute relative gap between every pair of curves (each direction averaged)."""
    gaps = []
    for a, b in itertools.combinations(curves, 2):
        gaps.append(0.5 * (relative_gap(a, b, last_n)["abs"] + relative_gap(b, a, last_n)["abs"]))
    return gaps


def noise_floor(bf16_by_seed: dict[int, list[float]], repeat: list[float] | None, last_n: int) -> dict:
    """How much bf16 differs from itself: the same seed run twice, and different seeds.

    ``same_seed``: the gap between the first seed's bf16 run and its repeat (0 when the run is
    bit-reproducible). ``different_seeds``: the mean pairwise gap between bf16 runs of different seeds
    (same batches, different initialization). ``floor`` is the larger of the two available figures.
    """
    seeds = sorted(bf16_by_seed)
    same = None
    if repeat is not None and seeds:
        first = bf16_by_seed[seeds[0]]
        same = 0.5 * (relative_gap(repeat, first, last_n)["abs"] + relative_gap(first, repeat, last_n)["abs"])
    pairs = pairwise_gaps([bf16_by_seed[s] for s in seeds], last_n)
    different = statistics.fmean(pairs) if pairs else None
    candidates = [v for v in (same, different) if v is not None and math.isfinite(v)]
    return {"same_seed": same, "different_seeds": different, "different_seed_pairs": len(pairs),
            "floor": max(candidates) if candidates else None}


def compare_recipes(signed_gaps: dict[str, dict[int, float]], floor: float | None) -> list[dict]:
    """Every pair of recipes: the seed-paired difference of their signed gaps, resolved only above the floor.

    ``signed_gaps[recipe][seed]`` is the recipe's signed gap to bf16 of that seed; the difference
    ``delta = mean_s (gap_A,s - gap_B,s)`` is (L_A - L_B) / L_bf16 averaged over the common seeds.
    """
    rows = []
    for a, b in itertools.combinations(sorted(signed_gaps), 2):
        common = sorted(set(signed_gaps[a]) & set(signed_gaps[b]))
        if not common:
            continue
        diffs = [signed_gaps[a][s] - signed_gaps[b][s] for s in common]
        delta = statistics.fmean(diffs)
        resolved = floor is not None and math.isfinite(delta) and abs(delta) > floor
        better = (a if delta < 0 else b) if resolved else None
        rows.append({"a": a, "b": b, "seeds": common, "delta": delta, "floor": floor, "resolved": resolved,
                     "lower_loss": better})
    return rows


def large_seed_spread(recipe_std: float, bf16_std: float, floor_loss: float | None,
                      factor: float = SEED_SPREAD_FACTOR) -> bool:
    """A recipe's seed spread (std of last-N mean loss) is large: above factor x bf16's and above the floor."""
    if not math.isfinite(recipe_std):
        return True
    threshold = factor * bf16_std
    if floor_loss is not None:
        threshold = max(threshold, floor_loss)
    return recipe_std > threshold > 0
