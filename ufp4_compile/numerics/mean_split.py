"""Mean-residual split (Averis, arXiv 2603.10444): quantize ``x - 1 mu^T`` and add ``1 (mu W^T)`` back.

``mu`` is the per-channel *median* of the finite values over a fixed sample of the tokens (every
``sample_stride(T)``-th, about 500 of them), not Averis's mean (docs/numerics.md): any ``mu`` keeps
``x W^T = (x - 1 mu^T) W^T + 1 (mu W^T)`` exact, and the median

- is robust: one outlier token (x1000) moves a mean, hence every other token's residual and its block
  scales, while a median moves by at most one rank;
- ignores NaN and +-Inf, which a mean spreads to every token (a NaN token stays NaN in its own rows only);
- is an element of ``x``, so eager code, Inductor and every device give the same bits (a mean's sum
  depends on the reduction order).

Plain traceable torch ops (the rewrite pass inlines this into the graph): no data-dependent control flow.
"""

from __future__ import annotations

import torch

SAMPLE_TOKENS = 512


def sample_stride(tokens):
    """The token stride of the median's sample: odd, ``2 * (tokens // 1024) + 1``. Every token below 1024;
    from 1024 up, between 342 and 1023 of them (482 of 8192; toward ``SAMPLE_TOKENS`` as the count grows).
    ``tokens`` is an int or a SymInt: floor division only, so a symbolic token count traces without a guard.
    Odd, so the sample walks through every position of sequences whose length is a power of two."""
    return 2 * (tokens // (2 * SAMPLE_TOKENS)) + 1


def check_split_input(x) -> None:
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x.dtype={got} is not valid; valid values: a floating-point dtype")
    if x.ndim < 1:
        raise ValueError("mean_split needs a token dimension (dim 0), got a 0-d tensor")


def sample_median(x: torch.Tensor) -> torch.Tensor:
    """``mu`` of :func:`mean_split` (FP32, shape ``(1, ...)``): per channel, the median of the finite values of
    the sampled tokens ``x[::sample_stride(T)]`` (dim 0; the lower one of the two middle values for an even
    count), ``+0.0`` where that median is a zero of either sign, where a channel has no finite value there, or
    where there are no tokens. The ``ufp4::sample_median`` op's reference (``kernels/median.py`` selects the
    same element on GPUs)."""
    check_split_input(x)
    if x.shape[0] == 0:  # a shape, not data: no tokens (an MoE expert that received none)
        return x.new_zeros((1, *x.shape[1:]), dtype=torch.float32)
    # A sample of the tokens: the selection over all 8192 tokens of a (8192, 1024) operand, with the copy
    # that lays them out for it, took 47 of a 91 ms ufp4-mean training step on an H200. Tokens last and
    # contiguous: CUDA's selection kernel walks each channel's values with unit stride (along dim 0 it took
    # 1.27 ms per call at 8192 tokens). A median is a selection, so the layout cannot change it.
    sample = x[::sample_stride(x.shape[0])].float()  # only the sampled tokens are converted
    finite_or_nan = torch.where(torch.isfinite(sample), sample, float("nan")).movedim(0, -1).contiguous()
    median = finite_or_nan.nanmedian(dim=-1).values.unsqueeze(0)
    # -0.0 and +0.0 tie in the selection, so which one it returns is the sort's business: +0.0 always, which
    # also leaves the residual x - mu equal to x bit for bit (-0.0 - +0.0 is -0.0; -0.0 - -0.0 would be +0.0).
    return torch.where(torch.isfinite(median) & (median != 0), median, 0.0)


def mean_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, residual)``, both FP32: ``mu`` is :func:`sample_median` of ``x`` and
    ``residual = x.float() - mu`` over every token."""
    mu = sample_median(x)
    return mu, x.float() - mu


def mean_correction(mu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The rank-one term ``mu W^T`` (shape (1, out), FP32); broadcasting adds it to every token's output."""
    return mu.float() @ w.float().t()
