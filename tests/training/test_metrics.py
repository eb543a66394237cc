import math

import pytest

from ufp4_compile.training import metrics


def test_relative_gap_by_hand():
    losses, ref = [3.0, 1.1, 0.9, 2.2], [3.0, 1.0, 1.0, 2.0]
    gap = metrics.relative_gap(losses, ref, last_n=3)
    assert gap["abs"] == pytest.approx((0.1 + 0.1 + 0.1) / 3)
    assert gap["signed"] == pytest.approx((0.1 - 0.1 + 0.1) / 3)
    assert gap["of_means"] == pytest.approx((4.2 - 4.0) / 4.0)
    assert metrics.relative_gap(ref, ref, 2) == {"abs": 0.0, "signed": 0.0, "of_means": 0.0}
    assert all(math.isnan(v) for v in metrics.relative_gap([1.0], ref, 2).values())  # a curve cut short


def test_window_and_spread():
    assert metrics.window([1, 2, 3, 4], 2) == [3, 4]
    assert metrics.window([1, 2], 5) == [1, 2]
    with pytest.raises(ValueError, match="last_n"):
        metrics.window([1], 0)
    s = metrics.spread([1.0, 2.0, 4.0])
    assert (s["n"], s["mean"], s["min"], s["max"]) == (3, pytest.approx(7 / 3), 1.0, 4.0)
    assert s["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert metrics.spread([5.0])["std"] == 0.0


def test_spikes_and_non_finite():
    flat = [2.0] * 30
    assert metrics.find_spikes(flat) == []
    spiky = flat[:20] + [2.0 * 1.3] + flat[21:]
    assert metrics.find_spikes(spiky) == [20]
    assert metrics.find_spikes(flat[:20] + [2.0 * 1.2] + flat[21:]) == []  # below the 25% tolerance
    flags = metrics.instability(spiky, 30)
    assert flags["unstable"] and flags["spike_steps"] == [20] and flags["non_finite_step"] is None
    # Relative to a reference that spikes on the same batch, the same curve is stable.
    assert not metrics.instability(spiky, 30, ref=spiky)["unstable"]
    nan = metrics.instability(flat[:12] + [float("nan")], 30)
    assert nan["non_finite_step"] == 12 and "non-finite loss at step 12" in nan["reasons"]


def test_noise_floor_and_comparisons():
    a, b = [2.0] * 10, [2.2] * 10
    floor = metrics.noise_floor({0: a, 1: b}, repeat=list(a), last_n=5)
    assert floor["same_seed"] == 0.0
    assert floor["different_seeds"] == pytest.approx(0.5 * (0.2 / 2.0 + 0.2 / 2.2))
    assert floor["floor"] == floor["different_seeds"] and floor["different_seed_pairs"] == 1
    gaps = {"x": {0: 0.10, 1: 0.12}, "y": {0: 0.02, 1: 0.01}, "z": {0: 0.021, 1: 0.012}}
    rows = {(r["a"], r["b"]): r for r in metrics.compare_recipes(gaps, floor=0.05)}
    assert rows[("x", "y")]["resolved"] and rows[("x", "y")]["lower_loss"] == "y"
    assert rows[("x", "y")]["delta"] == pytest.approx(0.095)
    assert not rows[("y", "z")]["resolved"] and rows[("y", "z")]["lower_loss"] is None
    assert not any(r["resolved"] for r in metrics.compare_recipes(gaps, floor=None))


def test_large_seed_spread():
    assert metrics.large_seed_spread(0.04, bf16_std=0.01, floor_loss=0.02)
    assert not metrics.large_seed_spread(0.025, bf16_std=0.01, floor_loss=0.02)
    assert not metrics.large_seed_spread(0.04, bf16_std=0.01, floor_loss=0.05)
    assert metrics.large_seed_spread(float("nan"), bf16_std=0.01, floor_loss=None)
