"""Two 4-bit codes per byte along an axis: element ``2j`` in the low nibble, ``2j+1`` in the high one."""

from __future__ import annotations

import torch


def pack_codes(nibbles: torch.Tensor, axis: int) -> torch.Tensor:
    """Pack nibbles (values 0..15, any integer dtype) two per ``uint8`` along ``axis`` (even length)."""
    axis = axis % nibbles.ndim
    n = nibbles.shape[axis]
    if n % 2:
        raise ValueError(f"pack_codes: axis {axis} has odd length {n}; it must be even")
    v = nibbles.movedim(axis, -1).to(torch.int64)
    packed = (v[..., 0::2] & 0xF) | ((v[..., 1::2] & 0xF) << 4)
    return packed.to(torch.uint8).movedim(-1, axis).contiguous()


def unpack_codes(packed: torch.Tensor, axis: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``uint8`` bytes to nibbles (``uint8``), doubling ``axis``."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_codes: packed.dtype={packed.dtype} is not valid; valid values: torch.uint8")
    axis = axis % packed.ndim
    v = packed.movedim(axis, -1).to(torch.int64)
    out = torch.stack([v & 0xF, v >> 4], dim=-1).flatten(-2)
    return out.to(torch.uint8).movedim(-1, axis).contiguous()
