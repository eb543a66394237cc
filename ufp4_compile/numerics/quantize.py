"""``quantize`` / ``dequantize`` / ``gemm_reference``: the reference semantics of docs/numerics.md."""

from __future__ import annotations

import dataclasses
import functools

import torch

from ufp4_compile.numerics import grids, hadamard, scales
from ufp4_compile.numerics.formats import OperandFormat, Rounding, ScaleFormat
from ufp4_compile.numerics.packing import pack_codes, unpack_codes
from ufp4_compile.numerics.rounding import element_bits, seed_to_int

VALID_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
VALID_RHT = (0,) + hadamard.VALID_RHT_SIZES
TILE_2D = 16


@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
    """Packed 4-bit codes with their block scales; see docs/numerics.md for the layout.

    Along ``axis`` the codes and scales cover whole blocks: ``P = ceil(shape[axis] / block) * block``
    elements, the last block padded with zeros when the length is not a multiple of the block.
    ``codes``: uint8, ``shape`` with ``shape[axis]`` replaced by ``P / 2`` (element 2j in the low nibble).
    ``scales``: ``shape`` with ``P / block`` (float32, float8_e4m3fn or uint8 E8M0 exponents).
    ``tensor_scale``: 0-d float32 (1.0 except for E4M3). ``rht`` / ``rht_seed``: the rotation applied
    before quantization (0 = none); values stay in the rotated domain.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    tensor_scale: torch.Tensor
    axis: int
    fmt: OperandFormat
    rht: int = 0
    rht_seed: int = 0
    shape: tuple[int, ...] = ()

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """``shape`` with the quantized axis rounded up to whole blocks (what codes and scales cover)."""
        shape = list(self.shape)
        shape[self.axis] = padded_length(shape[self.axis], self.fmt.block)
        return tuple(shape)

    def t(self) -> "QuantizedTensor":
        """The transposed view of a 2-D quantized tensor (codes and scales swap dims, the axis flips)."""
        if self.codes.ndim != 2:
            raise ValueError(f"QuantizedTensor.t() needs a 2-D tensor, got shape {tuple(self.shape)}")
        return dataclasses.replace(self, codes=self.codes.t(), scales=self.scales.t(), axis=1 - self.axis,
                                   shape=(self.shape[1], self.shape[0]))


def padded_length(length, block: int):
    """``length`` rounded up to a multiple of ``block`` (ints and SymInts)."""
    return (length + block - 1) // block * block


@functools.lru_cache(maxsize=256)
def _parse_spec(spec: str) -> OperandFormat:
    return OperandFormat.from_spec(spec)  # OperandFormat is frozen: one parsed value is shared safely


def as_format(fmt) -> OperandFormat:
    if isinstance(fmt, OperandFormat):
        return fmt
    if isinstance(fmt, str):
        return _parse_spec(fmt)  # launchers take spec strings from the graph on every call
    raise ValueError(f"fmt={fmt!r} is not valid; pass an OperandFormat or a spec such as 'int4/16/fp32/nearest'")


def check_quantize_inputs(x, axis, fmt: OperandFormat, rht: int, seed) -> int:
    """Validate quantize's arguments (shared by the kernels, so both reject the same inputs); the axis, normalized."""
    if not isinstance(x, torch.Tensor) or x.dtype not in VALID_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x.dtype={got} is not valid; valid values: float32, bfloat16, float16")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension to quantize along, got a 0-d tensor")
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis!r} is not valid for a {x.ndim}-d tensor; valid values: "
                         f"{-x.ndim}..{x.ndim - 1}")
    axis %= x.ndim
    if rht not in VALID_RHT:
        raise ValueError(f"rht={rht!r} is not valid; valid values: {VALID_RHT}")
    if fmt.block_2d:
        if x.ndim != 2:
            raise ValueError(f"block_2d=True needs a 2-D tensor, got shape {tuple(x.shape)}")
        other = x.shape[1 - axis]
        if other % TILE_2D:
            raise ValueError(f"block_2d=True: axis {1 - axis} has length {other}, which is not a multiple "
                             f"of the tile {TILE_2D}")
    if fmt.rounding is Rounding.STOCHASTIC and seed is None:
        raise ValueError("seed is required when fmt.rounding is 'stochastic' (an int or a 0-d int64 tensor)")
    return axis


def _block_amax(blocks: torch.Tensor, block_2d: bool) -> torch.Tensor:
    """Max |x| per block (NaN if the block holds NaN, +Inf if it holds +-Inf); 16x16 tiles if block_2d."""
    amax = blocks.abs().amax(dim=-1)  # (..., n_blocks); amax propagates NaN
    if block_2d:
        rows, nb = amax.shape
        tiles = amax.reshape(rows // TILE_2D, TILE_2D, nb).amax(dim=1)
        amax = tiles.repeat_interleave(TILE_2D, dim=0)
    return amax


def _scale_blocks(blocks, amax, fmt: OperandFormat, global_amax):
    """(y = scaled blocks, stored scales, decoded scales, tensor_scale). Blocks with a non-finite or zero
    scale give y = 0, except E4M3 zero scales, which follow NVIDIA's ``x * FP32_MAX`` (docs/numerics.md)."""
    q = fmt.q_max
    one = torch.ones((), dtype=torch.float32, device=blocks.device)
    if fmt.scale is ScaleFormat.FP32:
        s = scales.fp32_scales(amax, q)
        ok = torch.isfinite(s) & (s != 0)
        lift, recip = scales.fp32_encode(torch.where(ok, s, one))
        y = (blocks * lift[..., None]) * recip[..., None]
        return torch.where(ok[..., None], y, 0.0), s, s, one
    if fmt.scale is ScaleFormat.E4M3:
        enc = scales.e4m3_tensor_encode(global_amax, q)
        tensor_scale = one / enc
        s = scales.e4m3_block_scales(amax, enc, q)
        mult = scales.e4m3_block_encode(s, tensor_scale)
        ok = torch.isfinite(s.float())
        y = blocks * torch.where(ok, mult, one)[..., None]
        return torch.where(ok[..., None], y, 0.0), s, s.float(), tensor_scale
    e = scales.e8m0_exponents(amax, q, fmt.e8m0_rounding)
    stored = scales.e8m0_encode_exponents(amax, e)
    ok = torch.isfinite(amax)
    y = blocks * scales.pow2(-e)[..., None]
    return torch.where(ok[..., None], y, 0.0), stored, scales.decode_scales(stored, fmt.scale), one


def _level_limit(decoded: torch.Tensor, tensor_scale: torch.Tensor, fmt: OperandFormat) -> torch.Tensor:
    """Per block, the largest grid level whose dequantized value ``(level * scale) * tensor_scale`` is finite
    (q_max except at the top of FP32's range; 0 for a non-finite scale, whose block is zeros anyway)."""
    limit = torch.zeros_like(decoded)
    for level in grids.levels(fmt.grid).tolist():  # ascending: the last finite one wins
        limit = torch.where(torch.isfinite((level * decoded) * tensor_scale), level, limit)
    return limit


def _finite_amax(xf: torch.Tensor) -> torch.Tensor:
    """max |x| over the finite elements (0 for an empty or all non-finite tensor): the E4M3 global amax."""
    a = xf.abs()
    a = torch.where(torch.isfinite(a), a, 0.0)
    return a.amax() if a.numel() else torch.zeros((), dtype=torch.float32, device=xf.device)


def check_shift(x: torch.Tensor, axis: int, shift) -> None:
    """``shift`` (or None) must be FP32 with ``x``'s dimensions, ``x.shape[axis]`` along the quantized axis and
    1 along every other: one value per position along the axis (a mean split's ``mu``)."""
    if shift is None:
        return
    want = [1] * x.ndim
    want[axis] = x.shape[axis]
    if not isinstance(shift, torch.Tensor) or shift.dtype != torch.float32 or list(shift.shape) != want:
        got = (f"{shift.dtype} of shape {tuple(shift.shape)}" if isinstance(shift, torch.Tensor)
               else type(shift).__name__)
        raise ValueError(f"shift must be a torch.float32 tensor of shape {tuple(want)} (one value per position "
                         f"along axis {axis}), got {got}")


def quantize(x: torch.Tensor, axis: int, fmt, *, rht: int = 0, rht_seed: int = 0, seed=None,
             offset: int = 0, shift: torch.Tensor | None = None) -> QuantizedTensor:
    """Block-quantize ``x`` along ``axis`` (docs/numerics.md): optional RHT, scales, rounding, packing.

    ``seed`` (an int or a 0-d int64 tensor, read with ``.item()``) drives stochastic rounding together
    with ``offset``; it is required for ``Rounding.STOCHASTIC`` and ignored otherwise. ``shift``
    (:func:`check_shift`) quantizes ``x.float() - shift`` instead, the FP32 difference taken first: a mean
    split's residual without writing it.
    """
    fmt = as_format(fmt)
    axis = check_quantize_inputs(x, axis, fmt, rht, seed)
    check_shift(x, axis, shift)
    xf = x.float() if shift is None else x.float() - shift
    if rht:
        xf = hadamard.rht(xf, axis, rht, rht_seed)
    axis_last = xf.movedim(axis, -1)
    moved = _pad_last(axis_last, fmt.block)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // fmt.block, fmt.block)
    amax = _block_amax(blocks, fmt.block_2d)
    global_amax = _finite_amax(xf) if fmt.scale is ScaleFormat.E4M3 else None
    y, stored, decoded, tensor_scale = _scale_blocks(blocks, amax, fmt, global_amax)
    limit = _level_limit(decoded, tensor_scale, fmt)[..., None]
    y = torch.maximum(torch.minimum(y, limit), -limit)
    if fmt.rounding is Rounding.STOCHASTIC:
        # The counter runs along the quantized axis (the axis-last order), whatever the axis.
        bits = _pad_last(element_bits(seed_to_int(seed), offset, tuple(axis_last.shape), x.device), fmt.block)
        level = grids.round_stochastic(y, fmt.grid, bits.reshape(blocks.shape))
    else:
        level = grids.round_nearest(y, fmt.grid)
    nibbles = grids.encode_nibbles(level, y < 0, fmt.grid).reshape(moved.shape)
    codes = pack_codes(nibbles, -1).movedim(-1, axis).contiguous()
    return QuantizedTensor(codes=codes, scales=stored.movedim(-1, axis).contiguous(),
                           tensor_scale=tensor_scale.reshape(()).float(), axis=axis, fmt=fmt, rht=rht,
                           rht_seed=int(rht_seed), shape=tuple(x.shape))


def _pad_last(t: torch.Tensor, block: int) -> torch.Tensor:
    """``t`` with its last dim padded with zeros to a multiple of ``block``."""
    extra = padded_length(t.shape[-1], block) - t.shape[-1]
    return torch.nn.functional.pad(t, (0, extra)) if extra else t


def _values_times_scales(q: QuantizedTensor) -> torch.Tensor:
    """``grid_value(code) * float(scale)`` in FP32, in the shape of the original tensor (``q.shape``)."""
    values = grids.decode(unpack_codes(q.codes, q.axis), q.fmt.grid)
    s = scales.decode_scales(q.scales, q.fmt.scale).repeat_interleave(q.fmt.block, dim=q.axis)
    out = values * s
    length = q.shape[q.axis] if q.shape else out.shape[q.axis]
    return out if length == out.shape[q.axis] else out.narrow(q.axis, 0, length)  # drop the padding


def quantize_dequantize(x: torch.Tensor, axis: int, fmt, *, rht: int = 0, rht_seed: int = 0, seed=None,
                        offset: int = 0, dtype: torch.dtype = torch.bfloat16,
                        shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, tensor_scale)``: the GEMM operand of ``quantize(x, ...)`` as the reference GEMM reads it,
    ``grid_value * scale`` in FP32 rounded to ``dtype`` (the tensor scale is the GEMM epilogue's)."""
    q = quantize(x, axis, fmt, rht=rht, rht_seed=rht_seed, seed=seed, offset=offset, shift=shift)
    return _values_times_scales(q).to(dtype), q.tensor_scale


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(grid_value * scale) * tensor_scale`` in FP32, cast to ``dtype``; rotated domain (no inverse RHT)."""
    return (_values_times_scales(q) * q.tensor_scale).to(dtype)


def _compute_dtype(compute_dtype) -> torch.dtype:
    if isinstance(compute_dtype, torch.dtype) and compute_dtype in (torch.bfloat16, torch.float32):
        return compute_dtype
    value = getattr(compute_dtype, "value", compute_dtype)
    table = {"bf16": torch.bfloat16, "fp32": torch.float32}
    if value in table:
        return table[value]
    raise ValueError(f"compute_dtype={compute_dtype!r} is not valid; valid values: torch.bfloat16, "
                     f"torch.float32, 'bf16', 'fp32'")


def gemm_reference(a: QuantizedTensor, b: QuantizedTensor, compute_dtype=torch.bfloat16) -> torch.Tensor:
    """``C[m, n] = sum_k A[m, k] B[n, k]`` (FP32, shape (M, N)) for operands quantized along dim 1.

    Each operand is ``grid_value * scale`` in FP32 rounded to ``compute_dtype``; products accumulate in
    FP32; the result is multiplied by ``tensor_scale_a * tensor_scale_b`` (the epilogue).
    """
    dtype = _compute_dtype(compute_dtype)
    for name, op in (("a", a), ("b", b)):
        if len(op.shape) != 2 or op.axis != 1:
            raise ValueError(f"gemm_reference: operand {name} must be 2-D and quantized along dim 1 "
                             f"(use q.t() for transposed views); got shape {op.shape}, axis {op.axis}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"gemm_reference: reduction lengths differ: a has K={a.shape[1]}, b has K={b.shape[1]}")
    a_mat = _values_times_scales(a).to(dtype).float()
    b_mat = _values_times_scales(b).to(dtype).float()
    return (a_mat @ b_mat.t()) * (a.tensor_scale * b.tensor_scale)
