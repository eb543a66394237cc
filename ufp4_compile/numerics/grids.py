"""The two 4-bit grids: levels, nibble encodings and rounding onto the grid (docs/numerics.md).

A value on a grid is described by its *level index* ``k`` (0..7, into :func:`levels`) and a sign. The
nibble layouts:

- ``INT4``: the signed code ``c`` in -7..7 as 4-bit two's complement (``c & 0xF``); ``0x8`` is never
  produced (it decodes to -8).
- ``E2M1``: OCP E2M1, bit 3 the sign, bits 2..0 the level index into (0, .5, 1, 1.5, 2, 3, 4, 6). The sign
  bit is ``y < 0`` of the scaled value, so a negative value that rounds to zero is ``0x8`` (-0), as in
  NVIDIA's NVFP4 reference quantizer (TransformerEngine ``cast_to_fp4x2``).
"""

from __future__ import annotations

import torch

from ufp4_compile.numerics.formats import Q_MAX, Grid

_LEVELS = {
    Grid.INT4: (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0),
    Grid.E2M1: (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
}
NUM_VALUES = 15  # distinct values per grid: +-7 levels and zero


def q_max(grid: Grid) -> float:
    return Q_MAX[grid]


def levels(grid: Grid, device=None) -> torch.Tensor:
    """The 8 non-negative levels of ``grid`` (float32, ascending)."""
    return torch.tensor(_LEVELS[grid], dtype=torch.float32, device=device)


def grid_values(grid: Grid, device=None) -> torch.Tensor:
    """The 15 distinct values of ``grid`` (float32, ascending)."""
    pos = levels(grid, device)
    return torch.cat([-pos[1:].flip(0), pos])


def decode_table(grid: Grid, device=None) -> torch.Tensor:
    """The value of each of the 16 nibbles (float32, indexed by nibble)."""
    pos = levels(grid, device)
    if grid is Grid.INT4:
        table = torch.arange(16, dtype=torch.float32, device=device)
        return torch.where(table < 8, table, table - 16)  # two's complement; 0x8 decodes to -8
    return torch.cat([pos, -pos])


def round_nearest(y: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Level index (int64, 0..7) of the grid level nearest to ``|y|``, ties to the even index.

    ``y`` must already be clamped to ``[-q_max, q_max]``. For INT4 this is round-half-even; for E2M1 the
    thresholds are the midpoints (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) and a tie goes to the even index.
    """
    a = y.abs()
    if grid is Grid.INT4:
        return torch.round(a).to(torch.int64)  # torch.round is round-half-to-even
    lv = _LEVELS[grid]
    idx = torch.zeros(a.shape, dtype=torch.int64, device=a.device)
    for k in range(7):
        mid = (lv[k] + lv[k + 1]) / 2  # exact in FP32
        # A tie between index k and k+1 goes to whichever is even.
        idx += (a > mid) if k % 2 == 0 else (a >= mid)
    return idx


def stochastic_offset(bits: torch.Tensor) -> torch.Tensor:
    """``v = (2r + 1) / 512 - 1/2`` (FP32, exact) for 8 random bits ``r``: a centred uniform draw on
    (-1/2, 1/2) in steps of 1/256 (its mean is exactly 0)."""
    return (bits.to(torch.float32) * 2 + 1) * 2.0**-9 - 0.5


def round_stochastic(y: torch.Tensor, grid: Grid, bits: torch.Tensor) -> torch.Tensor:
    """Level index (int64, 0..7) after stochastic rounding of ``|y|`` (``<= q_max``) with 8 random bits ``r``
    per element (docs/numerics.md, "Rounding onto the grid").

    INT4: ``round-half-even(fl32(|y| + v))`` with ``v = (2r + 1)/512 - 1/2``: rounds up with probability
    ``p`` (the position of |y| in its gap) to within 1/512.
    E2M1: on the FP32 bit pattern ``b`` of ``|y|`` (``|y| >= 1``, one mantissa bit kept) or of
    ``fl32(|y| + 1)`` (``|y| < 1``, where the levels 0, .5, 1 sit at 1, 1.5, 2): add ``(2r + 1) << 13`` below
    the kept bit and truncate, ``((b + ((2r + 1) << 13)) >> 22) - 252`` (``- 254`` below 1). The carry into
    the kept bit happens with probability ``p`` to within 1/512.
    """
    a = y.abs().float()
    r = bits.to(torch.int64)
    if grid is Grid.INT4:
        return torch.round(a + stochastic_offset(r)).to(torch.int64)
    big = a >= 1.0
    lifted = torch.where(big, a, a + 1.0)
    pattern = lifted.view(torch.int32).to(torch.int64)
    return ((pattern + ((2 * r + 1) << 13)) >> 22) - torch.where(big, 252, 254)


def encode_nibbles(level_idx: torch.Tensor, negative: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Nibbles (uint8, 0..15) from level indices and signs (``negative`` = the scaled value was < 0)."""
    k = level_idx.to(torch.int64)
    if grid is Grid.INT4:
        code = torch.where(negative, -k, k)
        return (code & 0xF).to(torch.uint8)
    return ((negative.to(torch.int64) << 3) | k).to(torch.uint8)


def encode(y: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Nibbles of ``y`` rounded to nearest (ties to even) after clamping to ``[-q_max, q_max]``."""
    y = y.float().clamp(-q_max(grid), q_max(grid))
    return encode_nibbles(round_nearest(y, grid), y < 0, grid)


def decode(nibbles: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Values (float32) of nibbles (any integer dtype, 0..15)."""
    return decode_table(grid, nibbles.device)[nibbles.to(torch.int64)]


def signed_level(nibbles: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Signed level index in -7..7 (int64) of each nibble; E2M1's -0 maps to 0."""
    n = nibbles.to(torch.int64)
    if grid is Grid.INT4:
        return torch.where(n < 8, n, n - 16)
    k = n & 7
    return torch.where(n >= 8, -k, k)
