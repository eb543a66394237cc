"""Counter-based random bits (Philox4x32-10, as Triton's ``tl.philox``) for stochastic rounding.

Everything is int64 torch arithmetic holding uint32 values, so it runs on any device and never overflows:
the 32x32-bit products are split into 16-bit halves.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
# Philox4x32 constants (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the same as
# triton/language/random.py: round multipliers and Weyl key increments.
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUNDS = 10


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high 32 bits, low 32 bits) of the 64-bit product of the uint32 constant ``a`` and uint32 ``b``."""
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    p_lo = a * b_lo  # < 2**48
    p_hi = a * b_hi  # < 2**48
    high = (p_hi + (p_lo >> 16)) >> 16
    low = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return high, low


def seed_to_int(seed) -> int:
    """A Python int from an int or a 0-d integer tensor; ValueError otherwise."""
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool:
            raise ValueError(f"seed must be an int or a 0-d integer tensor, got a {seed.dtype} tensor "
                             f"of shape {tuple(seed.shape)}")
        return int(seed.item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} is not valid; it must be an int or a 0-d int64 tensor")
    return seed


def philox4x32(seed, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
               rounds: int = PHILOX_ROUNDS) -> tuple[torch.Tensor, ...]:
    """All four outputs of Philox4x32 with key ``(lo32(seed), hi32(seed))``; counters are int64 in [0, 2**32)."""
    s = seed_to_int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = s & _MASK32, s >> 32
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def philox(seed, counters: torch.Tensor) -> torch.Tensor:
    """32 random bits per counter ``n`` (int64 tensor holding uint32 values).

    Equals Triton's ``tl.philox(seed, lo32(n), hi32(n), 0, 0)[0]``, i.e. ``tl.randint(seed, n)`` for an
    int64 ``n``.
    """
    if counters.dtype != torch.int64:
        raise ValueError(f"counters.dtype={counters.dtype} is not valid; valid values: torch.int64")
    c0 = counters & _MASK32
    c1 = (counters >> 32) & _MASK32
    zero = torch.zeros_like(counters)
    return philox4x32(seed, c0, c1, zero, zero)[0]


# Stochastic rounding draws 8 random bits per element, so one Philox call (128 bits) serves 16 elements.
SR_BITS = 8
ELEMENTS_PER_CALL = 128 // SR_BITS


def element_bits(seed, offset: int, shape: torch.Size | tuple[int, ...], device=None) -> torch.Tensor:
    """8 random bits (int64, 0..255) for each element of a tensor of ``shape``, 16 per Philox call: the element
    with flat row-major index ``i`` takes byte ``i % 4`` (0: the low byte) of word ``(i % 16) // 4`` of
    ``philox4x32(seed, counter = offset + i // 16)``."""
    numel = 1
    for d in shape:
        numel *= d
    calls = (numel + ELEMENTS_PER_CALL - 1) // ELEMENTS_PER_CALL
    counters = torch.arange(calls, dtype=torch.int64, device=device) + int(offset)
    c0 = counters & _MASK32
    c1 = (counters >> 32) & _MASK32
    zero = torch.zeros_like(counters)
    words = torch.stack(philox4x32(seed, c0, c1, zero, zero), dim=-1)
    shifts = torch.arange(0, 32, SR_BITS, dtype=torch.int64, device=device)
    parts = (words[..., None] >> shifts) & ((1 << SR_BITS) - 1)
    return parts.reshape(-1)[:numel].view(tuple(shape))
