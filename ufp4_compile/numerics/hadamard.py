"""Random Hadamard transform along an axis (docs/numerics.md): ``H_n diag(s) v / sqrt(n)`` per group of n.

Only whole groups are rotated: when the axis length is not a multiple of n, its last ``length % n``
elements are left as they are (both operands of a GEMM along that axis get the same treatment, so their
product is still unchanged).

The Sylvester product is computed as the fast Walsh-Hadamard butterfly in a fixed order (h = 1, 2, 4, ...,
``(a, b) -> (a + b, a - b)`` for the pairs ``(i, i + h)``) so that a kernel doing the same butterfly gets
the same FP32 bits.
"""

from __future__ import annotations

import functools
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


MAX_SIGN_MASK_SIZE = 64


@functools.lru_cache(maxsize=1024)
def sign_mask(size: int, seed: int) -> int:
    """The signs of :func:`rht_signs` as the bits of one signed 64-bit integer (bit i set: ``s_i = -1``), for
    ``size <= 64``: what the kernels take instead of computing the Philox words themselves."""
    _check_size(size)
    if size > MAX_SIGN_MASK_SIZE:
        raise ValueError(f"size={size} is not valid for a sign mask; valid values: up to {MAX_SIGN_MASK_SIZE}")
    mask = sum(1 << i for i, s in enumerate(rht_signs(size, int(seed)).tolist()) if s < 0)
    return mask - (1 << 64) if mask >= 1 << 63 else mask


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


# A group whose max |v| reaches 2**64 is rotated as 2**64 * rot(2**-64 * v): the butterfly's partial sums
# grow up to n * max |v| and would overflow FP32 near its limit (Inf - Inf = NaN) although the result, at
# most sqrt(n) * max |v|, often fits. Both scalings are exact (powers of two) except for elements of such a
# group below 2**-62, whose bits are lost when scaled down (they are invisible beside the group's amax).
BIG_GROUP = 2.0 ** 64
FP32_MAX = torch.finfo(torch.float32).max


def _transform_groups(x: torch.Tensor, axis: int, size: int, transform) -> torch.Tensor:
    """Apply ``transform`` to each whole group of ``size`` elements along ``axis`` (FP32); a trailing
    partial group (``length % size`` elements) is left as it is."""
    axis = axis % x.ndim
    moved = x.float().movedim(axis, -1)
    length = moved.shape[-1]
    whole = length - length % size
    head = moved[..., :whole]
    groups = head.reshape(*head.shape[:-1], whole // size, size)
    out = _guarded(groups, transform).reshape(head.shape)
    if whole < length:
        out = torch.cat([out, moved[..., whole:]], dim=-1)
    return out.movedim(-1, axis)


def _guarded(groups: torch.Tensor, transform) -> torch.Tensor:
    """``transform`` of each group (last dim), through ``2**-64`` for groups whose amax is >= 2**64 (or NaN):
    the result is scaled back by ``2**64``, a finite result that overflows saturating at +-FP32_MAX."""
    big = ~(groups.abs().amax(dim=-1, keepdim=True) < BIG_GROUP)  # NaN counts as big, as in the kernels
    down = torch.where(big, 1.0 / BIG_GROUP, 1.0)
    rotated = transform(groups * down)
    out = rotated * torch.where(big, BIG_GROUP, 1.0)
    saturated = torch.copysign(torch.full_like(out, FP32_MAX), rotated)
    return torch.where(torch.isinf(out) & torch.isfinite(rotated), saturated, out)


def rht(x: torch.Tensor, axis: int, size: int, seed) -> torch.Tensor:
    """Rotate each group of ``size`` consecutive elements along ``axis``: ``H diag(s) v / sqrt(size)`` (FP32).

    A trailing partial group (an axis length that is not a multiple of ``size``) is not rotated.
    """
    _check_size(size)
    signs = rht_signs(size, seed, x.device)
    return _transform_groups(x, axis, size, lambda v: fwht(v * signs) * inv_sqrt(size))


def rht_inverse(y: torch.Tensor, axis: int, size: int, seed) -> torch.Tensor:
    """Inverse of :func:`rht`: ``diag(s) H v / sqrt(size)`` (FP32); a trailing partial group is kept."""
    _check_size(size)
    signs = rht_signs(size, seed, y.device)
    return _transform_groups(y, axis, size, lambda v: (fwht(v) * inv_sqrt(size)) * signs)
