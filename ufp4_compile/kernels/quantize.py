"""Fused RHT + block-scale + round + pack: one pass over the input, along any axis (docs/numerics.md).

The input is viewed as ``x[page, l, o]`` (column-wise: the quantized axis ``l`` is not the last one) or
``x[o, l]`` (row-wise: it is the last one); a program loads a ``BLOCK_O x BLOCK_L`` tile with ``l`` on its
second dim whatever the memory order, so the Wgrad operands (quantized along the token axis) need no
transpose pass. E4M3 two-level scales need the amax of the whole (rotated) tensor first: a small
pre-pass (:func:`_amax_kernel`, one extra read of the input) computes it with an integer atomic max.

Every formula is the reference's (``ufp4_compile.numerics.quantize``), bit for bit; the tests compare
codes and scales for equality.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl

from ufp4_compile.kernels.common import (
    EXACT_LAUNCH, abs_bits, e4m3_round, format_constants, is_finite, pow2, round_half_even)
from ufp4_compile.numerics.formats import OperandFormat, ScaleFormat
from ufp4_compile.numerics.hadamard import inv_sqrt
from ufp4_compile.numerics.quantize import as_format, check_quantize_inputs
from ufp4_compile.numerics import scales as _ref_scales

_E4M3_MAX = tl.constexpr(_ref_scales.E4M3_MAX)
_FP32_MAX = tl.constexpr(_ref_scales.FP32_MAX)

_OUT_SCALE_DTYPES = (torch.float32, torch.uint8, torch.uint8)  # FP32, E4M3 (stored bytes), E8M0
_RESULT_SCALE_DTYPES = (torch.float32, torch.float8_e4m3fn, torch.uint8)


# ---- tile pieces ------------------------------------------------------------------------------------

@triton.jit
def _load_tile(x_ptr, page, pid_o, pid_l, O, L, s_page, s_o, s_l, BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr):
    """The FP32 tile x[page, o, l] (zeros outside), with its o and l indices."""
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = (offs_o < O)[:, None] & (offs_l < L)[None, :]
    ptrs = (x_ptr + page.to(tl.int64) * s_page + offs_o.to(tl.int64)[:, None] * s_o
            + offs_l.to(tl.int64)[None, :] * s_l)
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return x, offs_o, offs_l


@triton.jit
def _butterfly(v, rows: tl.constexpr, R: tl.constexpr, h: tl.constexpr):
    """One butterfly stage of stride h over each row of R: (a, b) -> (a + b, a - b) on pairs (i, i + h)."""
    if h < R:
        pairs = tl.permute(tl.reshape(v, (rows, R // (2 * h), 2, h)), (0, 1, 3, 2))
        a, b = tl.split(pairs)
        v = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), (rows, R))
    return v


@triton.jit
def _rht(x, rht_seed, inv_sqrt_n, BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr, R: tl.constexpr):
    """``H_R diag(s) v / sqrt(R)`` on each group of R consecutive elements along dim 1 (numerics.hadamard).

    The butterfly runs in the reference's order: h = 1, 2, 4, ...; (a, b) -> (a + b, a - b) on (i, i + h).
    """
    idx = tl.arange(0, R)
    zero = tl.zeros((R,), tl.uint32)
    bits, _, _, _ = tl.philox(rht_seed, idx.to(tl.uint32), zero, zero, zero)
    signs = 1.0 - 2.0 * (bits & 1).to(tl.float32)
    rows: tl.constexpr = BLOCK_O * (BLOCK_L // R)
    v = tl.reshape(x, (rows, R)) * signs[None, :]
    v = _butterfly(v, rows, R, 1)
    v = _butterfly(v, rows, R, 2)
    v = _butterfly(v, rows, R, 4)
    v = _butterfly(v, rows, R, 8)
    v = _butterfly(v, rows, R, 16)
    v = _butterfly(v, rows, R, 32)
    v = _butterfly(v, rows, R, 64)
    v = _butterfly(v, rows, R, 128)
    return tl.reshape(v * inv_sqrt_n, (BLOCK_O, BLOCK_L))


@triton.jit
def _block_amax(x, BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK: tl.constexpr, BLOCK_2D: tl.constexpr):
    """Per-block max |x| (BLOCK_O, BLOCK_L // BLOCK) as FP32; NaN if the block holds a NaN, Inf an Inf."""
    NB: tl.constexpr = BLOCK_L // BLOCK
    amax_bits = tl.max(tl.reshape(abs_bits(x), (BLOCK_O, NB, BLOCK)), axis=2)
    if BLOCK_2D:  # 16 x 16 tiles: also the max over 16 consecutive o
        tiles = tl.max(tl.reshape(amax_bits, (BLOCK_O // 16, 16, NB)), axis=1)
        amax_bits = tl.reshape(tl.broadcast_to(tiles[:, None, :], (BLOCK_O // 16, 16, NB)), (BLOCK_O, NB))
    return amax_bits.to(tl.float32, bitcast=True)


@triton.jit
def _e4m3_encode(g, Q_MAX: tl.constexpr):
    """Tensor encode scale ``enc`` from the global amax (numerics.scales.e4m3_tensor_encode)."""
    enc = tl.minimum(tl.math.div_rn(tl.full(g.shape, _E4M3_MAX * Q_MAX, tl.float32), g), _FP32_MAX)
    return tl.where(g == 0.0, 1.0, enc)


@triton.jit
def _scales(amax, g, SCALE: tl.constexpr, Q_MAX: tl.constexpr, E8M0_FLOOR: tl.constexpr):
    """(stored scale, per-block multiplier or divisor, ok) from the block amax (numerics.quantize._scale_blocks).

    FP32: stored = amax / q, divisor s. E4M3: stored byte, multiplier 1 / (s * tensor_scale). E8M0: stored
    biased exponent, multiplier 2**-e. ``ok`` False: the block's values become 0.
    """
    finite = is_finite(amax)
    if SCALE == 0:
        s = tl.math.div_rn(amax, tl.full(amax.shape, Q_MAX, tl.float32))
        s = tl.where(finite, s, float("nan"))
        return s, s, finite & (s != 0.0)
    elif SCALE == 1:
        enc = _e4m3_encode(g, Q_MAX)
        tensor_scale = tl.math.div_rn(tl.full(g.shape, 1.0, tl.float32), enc)
        inv_q = tl.math.div_rn(tl.full(g.shape, 1.0, tl.float32), tl.full(g.shape, Q_MAX, tl.float32))
        s = tl.minimum(tl.minimum(amax * (enc * inv_q), _FP32_MAX), _E4M3_MAX)
        ok = finite & is_finite(g)
        byte, value = e4m3_round(tl.where(ok, s, 0.0))
        byte = tl.where(ok, byte, 0x7F)
        mult = tl.minimum(tl.math.div_rn(tl.full(amax.shape, 1.0, tl.float32), value * tensor_scale), _FP32_MAX)
        return byte, mult, ok
    else:
        safe = tl.where(finite, amax, 0.0)
        if E8M0_FLOOR:
            bits = safe.to(tl.int32, bitcast=True)
            e = tl.where((bits >> 23) > 0, (bits >> 23) - 127, -127) - 2
        else:
            v = tl.math.div_rn(safe, tl.full(amax.shape, Q_MAX, tl.float32))
            bits = v.to(tl.int32, bitcast=True)
            expo = bits >> 23
            mant = bits & 0x7FFFFF
            normal = expo - 127 + (mant != 0).to(tl.int32)
            e = tl.where(expo > 0, normal, tl.where(mant > 0x400000, -126, -127))
        e = tl.minimum(tl.maximum(e, -127), 127)
        stored = tl.where(finite, e + 127, 255)
        return stored, pow2(-e), finite


@triton.jit
def _level_nearest(a, GRID: tl.constexpr):
    """Level index (int32, 0..7) nearest to ``a = |y|``, ties to the even index (numerics.grids)."""
    if GRID == 0:
        k, _ = round_half_even(a)
        return k
    return ((a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
            + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32) + (a > 5.0).to(tl.int32))


@triton.jit
def _level_stochastic(a, rand, GRID: tl.constexpr):
    """Level index after stochastic rounding of ``a = |y|`` with 32 random bits (numerics.grids)."""
    u = (rand >> 8).to(tl.float32) * 5.9604644775390625e-08  # 2**-24, exact
    if GRID == 0:
        lo = a.to(tl.int32)  # floor, a >= 0
        p = tl.where(lo < 7, a - lo.to(tl.float32), 0.0)
        return lo + (u < p).to(tl.int32)
    lo = ((a >= 0.5).to(tl.int32) + (a >= 1.0).to(tl.int32) + (a >= 1.5).to(tl.int32) + (a >= 2.0).to(tl.int32)
          + (a >= 3.0).to(tl.int32) + (a >= 4.0).to(tl.int32) + (a >= 6.0).to(tl.int32))
    lof = lo.to(tl.float32)
    lo_val = tl.where(lo < 4, lof * 0.5, tl.where(lo == 7, 6.0, lof - 2.0))
    inv_gap = tl.where(lo < 4, 2.0, tl.where(lo < 6, 1.0, 0.5))  # gaps are powers of two: exact
    p = tl.where(lo < 7, (a - lo_val) * inv_gap, 0.0)
    return lo + (u < p).to(tl.int32)


@triton.jit
def _random_bits(seed_ptr, offset, flat):
    """``philox(seed, lo32(n), hi32(n), 0, 0)[0]`` with ``n = offset + flat`` (numerics.rounding.philox)."""
    seed = tl.load(seed_ptr)
    n = offset + flat
    zero = tl.zeros(flat.shape, tl.uint32)
    r, _, _, _ = tl.philox(seed, (n & 0xFFFFFFFF).to(tl.uint32), (n >> 32).to(tl.uint32), zero, zero)
    return r


@triton.jit
def _pack(nib, BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr):
    """Two nibbles per byte along dim 1: element 2j in the low nibble (numerics.packing)."""
    lo, hi = tl.split(tl.reshape(nib, (BLOCK_O, BLOCK_L // 2, 2)))
    return (lo | (hi << 4)).to(tl.uint8)


@triton.jit
def _pid_offsets(pid, WIDTH: tl.constexpr):
    return pid.to(tl.int64) * WIDTH + tl.arange(0, WIDTH)


# ---- kernels -------------------------------------------------------------------------------------------

@triton.jit
def _amax_kernel(x_ptr, gamax_ptr, O, L, s_page, s_o, s_l, rht_seed, inv_sqrt_n,
                 RHT: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr):
    """Global max |RHT(x)| as int32 FP32 bits, by atomic max (NaN-propagating: NaN bits sort above Inf)."""
    x, _, _ = _load_tile(x_ptr, tl.program_id(2), tl.program_id(0), tl.program_id(1), O, L, s_page, s_o, s_l,
                         BLOCK_O, BLOCK_L)
    if RHT > 0:
        x = _rht(x, rht_seed, inv_sqrt_n, BLOCK_O, BLOCK_L, RHT)
    tl.atomic_max(gamax_ptr, tl.max(tl.max(abs_bits(x), axis=1), axis=0))


@triton.jit
def _quantize_kernel(x_ptr, codes_ptr, scales_ptr, ts_ptr, gamax_ptr, seed_ptr,
                     O, L, s_page, s_o, s_l, offset, rht_seed, inv_sqrt_n,
                     GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_2D: tl.constexpr,
                     STOCHASTIC: tl.constexpr, E8M0_FLOOR: tl.constexpr, Q_MAX: tl.constexpr,
                     RHT: tl.constexpr, ROWWISE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr):
    page = tl.program_id(2)
    x, offs_o, offs_l = _load_tile(x_ptr, page, tl.program_id(0), tl.program_id(1), O, L, s_page, s_o, s_l,
                                   BLOCK_O, BLOCK_L)
    if RHT > 0:
        x = _rht(x, rht_seed, inv_sqrt_n, BLOCK_O, BLOCK_L, RHT)
    NB: tl.constexpr = BLOCK_L // BLOCK
    amax = _block_amax(x, BLOCK_O, BLOCK_L, BLOCK, BLOCK_2D)
    g = 0.0
    first = (tl.program_id(0) == 0) & (tl.program_id(1) == 0) & (page == 0)
    if SCALE == 1:
        g = tl.load(gamax_ptr).to(tl.float32, bitcast=True)
        if first:
            tl.store(ts_ptr, tl.math.div_rn(tl.full(g.shape, 1.0, tl.float32), _e4m3_encode(g, Q_MAX)))
    else:
        if first:  # one-level scales: the tensor scale is 1 (written here, saving the host a fill launch)
            tl.store(ts_ptr, 1.0)
    stored, factor, ok = _scales(amax, g, SCALE, Q_MAX, E8M0_FLOOR)

    blocks = tl.reshape(x, (BLOCK_O, NB, BLOCK))
    if SCALE == 0:
        y = tl.math.div_rn(blocks, tl.broadcast_to(tl.where(ok, factor, 1.0)[:, :, None], (BLOCK_O, NB, BLOCK)))
    else:
        y = blocks * factor[:, :, None]
    y = tl.reshape(tl.where(ok[:, :, None], y, 0.0), (BLOCK_O, BLOCK_L))
    y = tl.minimum(tl.maximum(y, -Q_MAX), Q_MAX)

    # Flat row-major index of each element in x's logical shape (drives the Philox counters).
    o64 = offs_o.to(tl.int64)[:, None]
    l64 = offs_l.to(tl.int64)[None, :]
    if ROWWISE:
        flat = o64 * L + l64
    else:
        flat = page.to(tl.int64) * L * O + l64 * O + o64
    a = tl.abs(y)
    if STOCHASTIC:
        level = _level_stochastic(a, _random_bits(seed_ptr, offset, flat), GRID)
    else:
        level = _level_nearest(a, GRID)
    neg = y < 0.0
    if GRID == 0:
        nib = tl.where(neg, -level, level) & 0xF
    else:
        nib = (neg.to(tl.int32) << 3) | level
    packed = _pack(nib, BLOCK_O, BLOCK_L)

    L2 = L // 2
    LB = L // BLOCK
    c_l = _pid_offsets(tl.program_id(1), BLOCK_L // 2)
    sc_l = _pid_offsets(tl.program_id(1), NB)
    o_mask = (offs_o < O)[:, None]
    if ROWWISE:
        c_off = o64 * L2 + c_l[None, :]
        s_off = o64 * LB + sc_l[None, :]
    else:
        c_off = page.to(tl.int64) * L2 * O + c_l[None, :] * O + o64
        s_off = page.to(tl.int64) * LB * O + sc_l[None, :] * O + o64
    tl.store(codes_ptr + c_off, packed, mask=o_mask & (c_l < L2)[None, :])
    tl.store(scales_ptr + s_off, stored.to(scales_ptr.dtype.element_ty), mask=o_mask & (sc_l < LB)[None, :])


# ---- launcher ------------------------------------------------------------------------------------------

def _view3(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, bool]:
    """x as (pages, L, O) (column-wise) or (1, O, L) viewed as rows (row-wise), with the row-wise flag."""
    shape = x.shape
    if axis == x.ndim - 1:
        return x.reshape(1, -1, shape[axis]), True
    pages = 1
    for d in shape[:axis]:
        pages *= d
    return x.reshape(pages, shape[axis], -1), False


def _tile(length: int, other: int, unit: int, rowwise: bool) -> tuple[int, int]:
    """(BLOCK_O, BLOCK_L): BLOCK_L a power of two and a multiple of ``unit`` (block and RHT size)."""
    block_l = max(unit, min(triton.next_power_of_2(length), 128 if rowwise else 64))
    block_o = max(16, min(triton.next_power_of_2(other), max(16, 4096 // block_l)))
    return block_o, block_l


def _seed_tensor(seed, device) -> torch.Tensor:
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1).to(device=device, dtype=torch.int64)
    value = int(seed) & 0xFFFFFFFFFFFFFFFF
    if value >= 1 << 63:
        value -= 1 << 64
    return torch.tensor([value], dtype=torch.int64, device=device)


@dataclasses.dataclass(frozen=True)
class _Launch:
    """Everything about one quantize launch that follows from (shape, strides, dtype, axis, format, RHT,
    config): computed once per distinct call site, so a training step's hundreds of launches pay only for
    the allocations and the kernel launch (the host cost is what limits small and mid-size GEMMs)."""

    args: tuple  # O, L, s_page, s_o, s_l
    codes_shape: tuple
    scales_shape: tuple
    scale_dtype: torch.dtype
    result_scale_dtype: torch.dtype
    grid: tuple
    two_level: bool  # E4M3 scales: the global-amax pre-pass and its accumulator
    stochastic: bool
    inv_sqrt_n: float
    amax_kwargs: dict
    kwargs: dict


@functools.lru_cache(maxsize=4096)  # bounded: shapes that never repeat (dynamic shapes) must not grow it
def _launch(shape: tuple, shape3: tuple, stride3: tuple, rowwise: bool, axis: int, fmt: OperandFormat, rht: int,
            config_items: tuple | None) -> _Launch:
    """The launch of ``x`` (``shape``) viewed as ``x3`` (``shape3``, ``stride3``); all arguments hashable."""
    config = dict(config_items) if config_items else None
    c = format_constants(fmt)
    if rowwise:
        pages, O, L = 1, shape3[1], shape3[2]
        s_page, s_o, s_l = 0, stride3[1], stride3[2]
    else:
        pages, L, O = shape3
        s_page, s_l, s_o = stride3
    codes_shape, scales_shape = list(shape), list(shape)
    codes_shape[axis] //= 2
    scales_shape[axis] //= fmt.block
    unit = max(fmt.block, rht, 2)
    block_o, block_l = _tile(L, O, unit, rowwise)
    num_warps = 4
    if config:
        block_o, block_l = config.get("BLOCK_O", block_o), config.get("BLOCK_L", block_l)
        num_warps = config.get("num_warps", num_warps)
        if block_l % unit or block_l & (block_l - 1) or block_o % 16 or block_o & (block_o - 1):
            raise ValueError(f"config={config!r} is not valid: BLOCK_L must be a power of two multiple of "
                             f"{unit}, BLOCK_O a power of two multiple of 16")
    kwargs = dict(GRID=c.grid, SCALE=c.scale, BLOCK=fmt.block, BLOCK_2D=c.block_2d, STOCHASTIC=c.stochastic,
                  E8M0_FLOOR=c.e8m0_floor, Q_MAX=c.q_max, RHT=rht, ROWWISE=rowwise, BLOCK_O=block_o,
                  BLOCK_L=block_l, num_warps=num_warps, **EXACT_LAUNCH)
    amax_kwargs = dict(RHT=rht, BLOCK_O=block_o, BLOCK_L=block_l, num_warps=num_warps, **EXACT_LAUNCH)
    return _Launch(args=(O, L, s_page, s_o, s_l), codes_shape=tuple(codes_shape), scales_shape=tuple(scales_shape),
                   scale_dtype=_OUT_SCALE_DTYPES[c.scale], result_scale_dtype=_RESULT_SCALE_DTYPES[c.scale],
                   grid=(triton.cdiv(O, block_o), triton.cdiv(L, block_l), pages), two_level=c.scale == 1,
                   stochastic=c.stochastic, inv_sqrt_n=inv_sqrt(rht) if rht else 1.0, amax_kwargs=amax_kwargs,
                   kwargs=kwargs)


def quantize(x: torch.Tensor, axis: int, fmt: OperandFormat | str, rht: int = 0, rht_seed: int = 0,
             seed=None, offset: int = 0, *, config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scales, tensor_scale) of ``x`` quantized along ``axis``: ``numerics.quantize``'s, bit for bit.

    ``config`` (benchmarks): ``{"BLOCK_O": .., "BLOCK_L": .., "num_warps": ..}`` overrides the tile.
    """
    fmt = as_format(fmt)
    axis = check_quantize_inputs(x, axis, fmt, rht, seed)
    x3, rowwise = _view3(x, axis)
    plan = _launch(tuple(x.shape), tuple(x3.shape), x3.stride(), rowwise, axis, fmt, rht,
                   tuple(sorted(config.items())) if config else None)
    device = x.device
    codes = torch.empty(plan.codes_shape, dtype=torch.uint8, device=device)
    scales = torch.empty(plan.scales_shape, dtype=plan.scale_dtype, device=device)
    if x.numel() == 0:
        return codes, scales.view(plan.result_scale_dtype), torch.ones((), dtype=torch.float32, device=device)
    tensor_scale = torch.empty((), dtype=torch.float32, device=device)  # the kernel writes it
    seed_t = _seed_tensor(seed, device) if plan.stochastic else codes  # unused when not stochastic
    rht_seed = int(rht_seed)
    if plan.two_level:
        gamax = torch.zeros(1, dtype=torch.int32, device=device)
        _amax_kernel[plan.grid](x3, gamax, *plan.args, rht_seed, plan.inv_sqrt_n, **plan.amax_kwargs)
    else:
        gamax = codes  # not read: one-level scales have no global amax
    _quantize_kernel[plan.grid](x3, codes, scales, tensor_scale, gamax, seed_t, *plan.args, int(offset), rht_seed,
                                plan.inv_sqrt_n, **plan.kwargs)
    return codes, scales.view(plan.result_scale_dtype), tensor_scale


# ---- compile-only variants (ufp4_compile.kernels.targets protocol) --------------------------------------

_SCALE_POINTERS = ("*fp32", "*u8", "*u8")  # by format_constants().scale, as _OUT_SCALE_DTYPES stores them
_VARIANT_SIZE = 4096  # variants use the launcher's tile for a 4096 x 4096 bf16 operand


def _variant_layout(rowwise: bool) -> tuple[dict, dict, tuple[str, ...]]:
    """(argument types, unit strides as constexprs, 16-aligned arguments) of a launch on a contiguous x."""
    types = dict(x_ptr="*bf16", O="i32", L="i32", s_page="i32", s_o="i32", s_l="i32", rht_seed="i32",
                 inv_sqrt_n="fp32")
    unit = {"s_l": 1} if rowwise else {"s_o": 1}
    aligned = ("x_ptr", "O", "L", "s_o" if rowwise else "s_l")
    return {k: v for k, v in types.items() if k not in unit}, unit, aligned


def compile_variants():
    """One ``_quantize_kernel`` per distinct quantize launch of the presets (format, RHT, row- or
    column-wise; bf16 input), and the ``_amax_kernel`` instances the E4M3 formats launch first."""
    from ufp4_compile.kernels.targets import KernelVariant, preset_quantize_calls

    variants, amax = [], {}
    for (fmt, rht, rowwise), presets in preset_quantize_calls().items():
        c = format_constants(fmt)
        block_o, block_l = _tile(_VARIANT_SIZE, _VARIANT_SIZE, max(fmt.block, rht, 2), rowwise)
        types, unit, aligned = _variant_layout(rowwise)
        types |= dict(codes_ptr="*u8", scales_ptr=_SCALE_POINTERS[c.scale], ts_ptr="*fp32", gamax_ptr="*i32",
                      seed_ptr="*i64" if c.stochastic else "*u8", offset="i64")
        constexprs = unit | dict(GRID=c.grid, SCALE=c.scale, BLOCK=fmt.block, BLOCK_2D=c.block_2d,
                                 STOCHASTIC=c.stochastic, E8M0_FLOOR=c.e8m0_floor, Q_MAX=c.q_max, RHT=rht,
                                 ROWWISE=rowwise, BLOCK_O=block_o, BLOCK_L=block_l)
        orientation = "row-wise" if rowwise else "column-wise"
        variants.append(KernelVariant.build(
            f"quantize[{fmt.spec} rht{rht} {orientation}]", presets, _quantize_kernel, types, constexprs,
            aligned=aligned + ("codes_ptr", "scales_ptr"), options=dict(EXACT_LAUNCH, num_warps=4)))
        if fmt.scale is ScaleFormat.E4M3:  # two-level scales: the global-amax pre-pass first
            names = amax.setdefault((rht, rowwise, block_o, block_l), {})
            names.update(dict.fromkeys(presets.split(", ")))
    for (rht, rowwise, block_o, block_l), names in amax.items():
        types, unit, aligned = _variant_layout(rowwise)
        orientation = "row-wise" if rowwise else "column-wise"
        variants.append(KernelVariant.build(
            f"quantize_amax[rht{rht} {orientation}]", ", ".join(names), _amax_kernel, types | {"gamax_ptr": "*i32"},
            unit | dict(RHT=rht, BLOCK_O=block_o, BLOCK_L=block_l), aligned=aligned,
            options=dict(EXACT_LAUNCH, num_warps=4)))
    return variants
