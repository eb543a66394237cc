"""Random Hadamard transform along an axis (docs/numerics.md): ``H_n diag(s) v / sqrt(n)`` per group of n.

The Sylvester product is computed as the fast Walsh-Hadamard butterfly in a fixed order (h = 1, 2, 4, ...,
``(a, b) -> (a + b, a - b)`` for the pairs ``(i, i + h)``) so that a kernel doing the same butterfly gets
the same FP32 bits.
"""

from __future__ import annotations

import math

import torch

from ufp4_compile.numerics.rounding import philox

VALID_RHT_SIZES = (16, 32, 64, 128, 256)


def _check_size(size: int) -> None:
    if size not in VALID_RHT_SIZES:
        raise ValueError(f"rht size={size!r} is not valid; valid values: {VALID_RHT_SIZES}")


def hadamard_matrix(size: int, device=None) -> torch.Tensor:
    """The Sylvester Hadamard matrix of ``size`` (+-1 entries, float32, unnormalized)."""
    _check_size(size)
    h = torch.ones((1, 1), dtype=torch.float32, device=device)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def rht_signs(size: int, seed, device=None) -> torch.Tensor:
    """The random signs ``s_i = 1 - 2 * (philox(seed, i) & 1)`` for i in 0..size-1 (float32)."""
    _check_size(size)
    bits = philox(seed, torch.arange(size, dtype=torch.int64, device=device))
    return (1 - 2 * (bits & 1)).to(torch.float32)


def inv_sqrt(size: int) -> float:
    """``float32(1/sqrt(size))``: exact for 16, 64 and 256."""
    return float(torch.tensor(1.0 / math.sqrt(size), dtype=torch.float32))


def fwht(v: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh-Hadamard transform of the last dim (a power of two) by the fixed butterfly."""
    n = v.shape[-1]
    lead = v.shape[:-1]
    h = 1
    while h < n:
        pairs = v.reshape(*lead, n // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        v = torch.stack([a + b, a - b], dim=-2).reshape(*lead, n)
        h *= 2
    return v


def _groups(x: torch.Tensor, axis: int, size: int) -> tuple[torch.Tensor, int]:
    axis = axis % x.ndim
    length = x.shape[axis]
    if length % size:
        raise ValueError(f"axis {axis} has length {length}, which is not a multiple of the rht size {size}")
    moved = x.float().movedim(axis, -1)
    return moved.reshape(*moved.shape[:-1], length // size, size), axis


def rht(x: torch.Tensor, axis: int, size: int, seed) -> torch.Tensor:
    """Rotate each group of ``size`` consecutive elements along ``axis``: ``H diag(s) v / sqrt(size)`` (FP32)."""
    _check_size(size)
    g, axis = _groups(x, axis, size)
    signs = rht_signs(size, seed, x.device)
    out = fwht(g * signs) * inv_sqrt(size)
    return out.reshape(*out.shape[:-2], -1).movedim(-1, axis)


def rht_inverse(y: torch.Tensor, axis: int, size: int, seed) -> torch.Tensor:
    """Inverse of :func:`rht`: ``diag(s) H v / sqrt(size)`` (FP32)."""
    _check_size(size)
    g, axis = _groups(y, axis, size)
    signs = rht_signs(size, seed, y.device)
    out = (fwht(g) * inv_sqrt(size)) * signs
    return out.reshape(*out.shape[:-2], -1).movedim(-1, axis)
