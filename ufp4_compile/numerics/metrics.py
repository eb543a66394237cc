"""Quantization-quality metrics of the UFP4 paper (arXiv 2606.20381): shrinkage, SQNR, bucket use, bias."""

from __future__ import annotations

import math

import torch

from ufp4_compile.numerics import grids
from ufp4_compile.numerics.formats import Grid


def shrinkage_alpha(x: torch.Tensor, xq: torch.Tensor) -> float:
    """``alpha = <Q(x), x> / ||x||^2`` (FP64 sums); < 1 means quantization shrinks the signal."""
    x64, q64 = x.double(), xq.double()
    return float((q64 * x64).sum() / (x64 * x64).sum())


def sqnr_db(x: torch.Tensor, xq: torch.Tensor) -> float:
    """``10 log10(||x||^2 / ||x - Q(x)||^2)`` in dB (FP64 sums); +inf for an exact reconstruction, -inf for
    a zero signal or an infinite error, NaN when either sum is NaN."""
    x64 = x.double()
    noise = float(((x64 - xq.double()) ** 2).sum())
    signal = float((x64 * x64).sum())
    if math.isnan(noise) or math.isnan(signal):
        return math.nan
    if noise == 0.0:
        return math.inf
    ratio = signal / noise  # inf / inf is NaN: an infinite signal quantized with an infinite error
    if math.isnan(ratio):
        return math.nan
    return 10.0 * math.log10(ratio) if ratio > 0.0 else -math.inf


def effective_bucket_ratio(nibbles: torch.Tensor, grid: Grid) -> float:
    """``exp(H) / 15``, H the entropy (nats) of the occupancy of the 15 distinct values (E2M1 +-0 merged).

    1.0 when every value is used equally often; small when few buckets carry the data.
    """
    level = grids.signed_level(nibbles, grid)
    counts = torch.bincount((level + 7).flatten(), minlength=grids.NUM_VALUES).double()
    p = counts / counts.sum()
    p = p[p > 0]
    entropy = float(-(p * p.log()).sum())
    return math.exp(entropy) / grids.NUM_VALUES


def per_level_bias(grid: Grid) -> list[tuple[float, float]]:
    """``[(q_i, (2 q_i - q_{i-1} - q_{i+1}) / 4)]`` for the interior positive levels (UFP4 paper).

    The mean round-to-nearest error over level q_i's bin under a locally flat density: 0 everywhere on a
    uniform grid; on E2M1 -0.125 at 2 and -0.25 at 4 (the levels where the step widens).
    """
    lv = grids.levels(grid).tolist()
    return [(lv[i], (2 * lv[i] - lv[i - 1] - lv[i + 1]) / 4) for i in range(1, len(lv) - 1)]
