"""Mean-residual split (Averis, arXiv 2603.10444): quantize ``x - 1 mu^T`` and add ``1 (mu W^T)`` back."""

from __future__ import annotations

import torch


def mean_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, residual)``: ``mu = x.float().mean(dim=0, keepdim=True)`` (per channel, over tokens) and
    ``residual = x.float() - mu``, both FP32."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x.dtype={got} is not valid; valid values: a floating-point dtype")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"mean_split needs at least one token along dim 0, got shape {tuple(x.shape)}")
    xf = x.float()
    mu = xf.mean(dim=0, keepdim=True)
    return mu, xf - mu


def mean_correction(mu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The rank-one term ``mu W^T`` (shape (1, out), FP32); broadcasting adds it to every token's output."""
    return mu.float() @ w.float().t()
