"""Fused RHT + block-scale + round (+ pack, + dequantize): one pass over the input, along any axis.

The input is viewed as ``x[page, l, o]`` (column-wise: the quantized axis ``l`` is not the last one) or
``x[o, l]`` (row-wise: it is the last one). A program owns ``U = max(block, rht)`` consecutive elements
along ``l`` for ``B`` values of ``o``: the tile ``t[i, j] = x[l0 + i, o0 + j]``. It is loaded so that each
thread holds whole groups along ``l`` (row-wise as ``(U // 8, B, 8)``: 16-byte vectors along ``l``;
column-wise as ``(U, B)`` with ``B`` a multiple of the threads' vector width, so the ``U`` rows are register
repetitions), which keeps the Hadamard butterfly, the block amax, the packing of code pairs and the
grouping of random words in registers: no shuffles, no shared memory.

One kernel writes any of the two results a quantization has consumers for:

- ``WRITE_CODES``: packed codes and block scales (saved for the backward, or read by a 4-bit GEMM);
- ``WRITE_VALUES``: the dequantized operand ``code x block scale`` rounded to the output dtype, what a
  bf16 GEMM consumes on GPUs without 4-bit tensor cores (the tensor scale stays out, for the epilogue).

The pieces a program is built from (tile loads and stores, the RHT, scales, rounding, random bits, packing)
are ``kernels.quantize_tile``'s; this module holds the kernels, their launch plans and launchers. Two
quantizations can share a launch (the lowering pairs them): ``kernels.quantize_pair`` runs the tiles of this
module for two jobs in one grid, or one 2-D tensor's two axes from one read of it.

E4M3 two-level scales need the amax of the whole (rotated) tensor first: :func:`_amax_kernel`, one extra
read over the finite values, run by a fixed number of programs (``AMAX_PROGRAMS``) that each walk their share
of the tiles and write one partial maximum; the quantize kernel reduces the partials. Every slot is written,
so the buffer needs no zero fill (an atomic max into one zeroed word did: a fill kernel per quantization).

An axis length ``L`` that is not a multiple of ``U`` (a token count in Wgrad) launches ``ceil(L / U)`` tiles
with the constexpr ``PARTIAL``: the last tile loads zeros past ``L``, leaves a trailing partial RHT group
unrotated, and masks its stores (codes and scales cover whole blocks, values stop at ``L``). Without it the
kernel is the same code as before: no masks along ``l``.

Every formula is the reference's (``ufp4_compile.numerics``), bit for bit, whatever the compiler does:
products that feed an addition are exact (the Hadamard signs, powers of two), so FMA contraction cannot
change a result, and IEEE divisions (one per block) are ``div.rn.f32`` itself on NVIDIA GPUs, so libdevice's
flush-to-zero reflection does not apply. That is what lets Inductor launch these kernels with its own
compile options (``kernel_launch``) and still give the eager launcher's bits.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
import triton
import triton.language as tl

from ufp4_compile.kernels.common import format_constants
from ufp4_compile.kernels.quantize_tile import (_RNE_MAGIC, _abs_max_nan, _below_guard, _chunk_mask,
                                                _e2m1_nearest, _e2m1_stochastic, _e4m3_encode, _finite_bits,
                                                _from_rows, _load_tile, _max_nan, _pack, _random_bits, _rht_known,
                                                _rotated_blocks, _rotated_tile, _scaled_blocks, _scales,
                                                _stochastic_offset, _unclamped_blocks,
                                                _store_chunks, _tile_index, _whole_groups, div_rn)
from ufp4_compile.numerics.formats import OperandFormat, ScaleFormat
from ufp4_compile.numerics.hadamard import MAX_SIGN_MASK_SIZE, inv_sqrt, sign_mask
from ufp4_compile.numerics.quantize import as_format, check_quantize_inputs, check_shift, padded_length

AMAX_PROGRAMS = 512  # programs of the global-amax pre-pass, and partial maxima the quantize kernel reduces
AMAX_WARPS = 8  # warps per pre-pass program: a few programs per SM, each with many loads in flight
_AMAX_PROGRAMS = tl.constexpr(AMAX_PROGRAMS)
RHT_KEYS = ("RHT", "INV_SQRT", "SIGN_MASK")  # a launch plan's RHT constexprs: each job's own in a launch of two
# One 2-D tensor's two quantizations from one read (kernels.quantize_pair's dual launch, kernels.prepass's dual
# pre-pass) run in U x B tiles whose row-wise pass holds ROW_SEGMENTS row segments of U at a time. The spans U
# (max of block and RHT group) they take: a program holds U rows of the tensor, so a span of 32 (MXFP4's
# blocks) takes B * 16 / 32 columns, the same elements per thread as a span of 16, at two columns per thread. On
# the H200 step (MXFP4) its launches took 10.45 ms per step against 9.97 for the single and pair launches they
# replace, for 144 launches fewer (the step's total kernel time 35.01 against 35.09 ms); at one column per
# thread they took 16.84 ms.
DUAL_SPANS = (16, 32)
ROW_SEGMENTS = 128

_OUT_SCALE_DTYPES = (torch.float32, torch.uint8, torch.uint8)  # FP32, E4M3 (stored bytes), E8M0
_RESULT_SCALE_DTYPES = (torch.float32, torch.float8_e4m3fn, torch.uint8)
_VALUE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# ---- kernels -------------------------------------------------------------------------------------------

@triton.jit
def _amax_at(x_ptr, gamax_ptr, pid, O, L, s_page, s_o, s_l, pages, rht_key,
             RHT: tl.constexpr, INV_SQRT: tl.constexpr, SIGN_MASK: tl.constexpr, ROWWISE: tl.constexpr,
             U: tl.constexpr, B: tl.constexpr, COLS: tl.constexpr, PARTIAL: tl.constexpr,
             ROUND: tl.constexpr = False):
    """Program ``pid`` of the global-amax pre-pass (:func:`_amax_kernel`; ``ROUND``: of an FP32 input rounded to
    bf16 first, ``quantize_tile._loaded``).

    Its tiles are first read on the common path, without the RHT's guard and with NaN-propagating float
    maxima of ``|RHT(x)|``. Where every maximum is below 2**59 (:func:`_below_guard`: no NaN, no Inf, and
    no RHT group that reached 2**64, the rotation keeping each group's 2-norm), the common path's values
    are exact and their maximum is the maximum finite magnitude. Only where that check fails does the
    program read its tiles again with the finite-only bit maximum and the guarded RHT
    (:func:`_amax_maxima`): the same word either way."""
    tiles_l, tiles_o = tl.cdiv(L, U), tl.cdiv(O, B)
    if ROWWISE:
        first = tiles_l
    else:
        first = tiles_o
    tiles = tiles_l * tiles_o * pages
    if pid < tiles:  # a program without tiles writes 0 (the interpreter runs every one of them)
        best = _amax_maxima(x_ptr, pid, tiles, first, tiles_l, tiles_o, O, L, s_page, s_o, s_l, rht_key, RHT,
                            INV_SQRT, SIGN_MASK, ROWWISE, U, B, COLS, PARTIAL, False, ROUND)
        if _below_guard(best):
            tl.store(gamax_ptr + pid, tl.max(best, axis=0).to(tl.int32, bitcast=True))
        else:
            exact = _amax_maxima(x_ptr, pid, tiles, first, tiles_l, tiles_o, O, L, s_page, s_o, s_l, rht_key, RHT,
                                 INV_SQRT, SIGN_MASK, ROWWISE, U, B, COLS, PARTIAL, True, ROUND)
            tl.store(gamax_ptr + pid, tl.max(exact, axis=0))
    else:
        tl.store(gamax_ptr + pid, pid * 0)


@triton.jit
def _amax_maxima(x_ptr, pid, tiles, first, tiles_l, tiles_o, O, L, s_page, s_o, s_l, rht_key,
                 RHT: tl.constexpr, INV_SQRT: tl.constexpr, SIGN_MASK: tl.constexpr, ROWWISE: tl.constexpr,
                 U: tl.constexpr, B: tl.constexpr, COLS: tl.constexpr, PARTIAL: tl.constexpr, EXACT: tl.constexpr,
                 ROUND: tl.constexpr = False):
    """:func:`_amax_at`'s read of its tiles, as per-column maxima (:func:`_column_max`: ``EXACT``, the
    guarded RHT and finite-only bits; else the common path, NaN-propagating float maxima)."""
    best = _column_max(tl.zeros((U, B), tl.float32), EXACT)  # zeros of the maxima's type
    for t in range(pid, tiles, _AMAX_PROGRAMS):
        page, l0, o0 = _amax_tile(t, first, tiles_l, tiles_o, U, B, ROWWISE)
        if EXACT:
            x, _ = _rotated_tile(x_ptr, page, l0, o0, o0 + tl.arange(0, B), O, L, s_page, s_o, s_l, rht_key, RHT,
                                 INV_SQRT, SIGN_MASK, U, B, ROWWISE, COLS, PARTIAL, ROUND=ROUND)
        else:
            x, _ = _load_tile(x_ptr, page, l0, o0, o0 + tl.arange(0, B), O, L, s_page, s_o, s_l, U, B, ROWWISE,
                              COLS, ROUND=ROUND)
            if RHT > 0:
                HALF: tl.constexpr = x_ptr.dtype.element_ty.primitive_bitwidth == 16 or ROUND  # x as loaded
                x = _whole_groups(_rht_known(x, True, rht_key, U, B, RHT, INV_SQRT, SIGN_MASK, HALF), x, l0, L, RHT,
                                  U, PARTIAL)
        best = _max_into(best, _column_max(x, EXACT), EXACT)
    return best


@triton.jit
def _column_max(v, EXACT: tl.constexpr):
    """Per column of the 2-D tile ``v``: the maximum finite ``|v|`` as int32 FP32 bits (``EXACT``), else the
    float maximum ``|v|``, NaN if one is NaN: the same value where every element is finite (the pre-passes'
    common path, which :func:`_below_guard` checks by these maxima themselves)."""
    if EXACT:
        m = tl.max(_finite_bits(v), axis=0)
    else:
        m = _abs_max_nan(v)
    return m


@triton.jit
def _max_into(best, m, EXACT: tl.constexpr):
    """``best`` and the maxima ``m`` of :func:`_column_max` combined (NaN kept on the common path)."""
    if EXACT:
        best = tl.maximum(best, m)
    else:
        best = _max_nan(best, m)
    return best


@triton.jit
def _amax_tile(t, first, tiles_l, tiles_o, U: tl.constexpr, B: tl.constexpr, ROWWISE: tl.constexpr):
    """(page, l0, o0) of the pre-pass's tile ``t`` (row-wise, consecutive tiles walk along the rows)."""
    i0, rest = t % first, t // first
    if ROWWISE:
        pid_l, pid_o, page = i0, rest % tiles_o, rest // tiles_o
    else:
        pid_o, pid_l, page = i0, rest % tiles_l, rest // tiles_l
    return page, pid_l * U, pid_o * B


@triton.jit
def _amax_kernel(x_ptr, gamax_ptr, O, L, s_page, s_o, s_l, pages, rht_key,
                 RHT: tl.constexpr, INV_SQRT: tl.constexpr, SIGN_MASK: tl.constexpr, ROWWISE: tl.constexpr,
                 U: tl.constexpr, B: tl.constexpr, COLS: tl.constexpr, PARTIAL: tl.constexpr,
                 ROUND: tl.constexpr = False):
    """Max |RHT(x)| over the finite elements as int32 FP32 bits (numerics.quantize._finite_amax: NaN and +-Inf
    count as 0, so they poison only their own blocks): ``AMAX_PROGRAMS`` programs, program p takes the tiles
    p, p + AMAX_PROGRAMS, ... of the ``U x B`` tiling (its own ``B``, wider than the quantize kernel's) and
    writes its maximum to ``gamax_ptr[p]``."""
    _amax_at(x_ptr, gamax_ptr, tl.program_id(0), O, L, s_page, s_o, s_l, pages, rht_key, RHT, INV_SQRT, SIGN_MASK,
             ROWWISE, U, B, COLS, PARTIAL, ROUND)


@triton.jit
def _place(pid_0, pid_1, U: tl.constexpr, B: tl.constexpr, ROWWISE: tl.constexpr):
    """``(l0, o0)`` of the tile of the program at ``(pid_0, pid_1)`` of a quantize grid: row-wise, consecutive
    programs walk along the rows (one row segment of U elements each)."""
    if ROWWISE:
        l0, o0 = pid_0 * U, pid_1 * B
    else:
        l0, o0 = pid_1 * U, pid_0 * B
    return l0, o0


@triton.jit
def _quantize_at(x_ptr, codes_ptr, scales_ptr, values_ptr, ts_ptr, gamax_ptr, seed_ptr,
                 O, L, s_page, s_o, s_l, offset, rht_key, l0, o0, rows, page, first,
                 GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_2D: tl.constexpr,
                 STOCHASTIC: tl.constexpr, SR_GROUPED: tl.constexpr, E8M0_FLOOR: tl.constexpr,
                 Q_MAX: tl.constexpr, RHT: tl.constexpr, INV_SQRT: tl.constexpr, SIGN_MASK: tl.constexpr,
                 ROWWISE: tl.constexpr, COLS: tl.constexpr, WRITE_CODES: tl.constexpr,
                 WRITE_VALUES: tl.constexpr, ASM: tl.constexpr, U: tl.constexpr, B: tl.constexpr,
                 PARTIAL: tl.constexpr, shift_ptr=None, shift_period=1, SHIFT: tl.constexpr = False,
                 SINGLE: tl.constexpr = False, ROUND: tl.constexpr = False):
    """The tile at ``l0`` along the quantized axis and ``o0 .. o0 + B`` along the other (row-wise: the rows
    ``rows``, ``o0 + arange(B)`` or any others); ``first``: the program that writes the tensor scale;
    ``SHIFT``: of ``x - shift`` (:func:`_shifted`); ``SINGLE``: a program of a single (or pair) launch, not of
    a dual one; ``ROUND``: of an FP32 input rounded to bf16 first (``quantize_tile._loaded``)."""
    x, flat, amax = _rotated_blocks(x_ptr, page, l0, o0, rows, O, L, s_page, s_o, s_l, rht_key, RHT, INV_SQRT,
                                    SIGN_MASK, U, B, ROWWISE, COLS, PARTIAL, BLOCK, BLOCK_2D, shift_ptr, shift_period,
                                    SHIFT, ROUND)
    NB: tl.constexpr = U // BLOCK
    g = 0.0
    if SCALE == 1:
        g = tl.max(tl.load(gamax_ptr + tl.arange(0, _AMAX_PROGRAMS)), axis=0).to(tl.float32, bitcast=True)
    # ts_ptr None (a constant): nobody reads this quantization's tensor scale, and it is not written
    if ts_ptr is not None:
        if first:
            if SCALE == 1:
                tl.store(ts_ptr, div_rn(tl.full(g.shape, 1.0, tl.float32), _e4m3_encode(g, Q_MAX, ASM), ASM))
            else:  # one-level scales: the tensor scale is 1 (written here, saving the host a fill launch)
                tl.store(ts_ptr, 1.0)
    stored, lift, mult, ok, decoded, limit = _scales(amax, g, GRID, SCALE, Q_MAX, E8M0_FLOOR, ASM)

    blocks = tl.reshape(x, (NB, BLOCK, B))
    if GRID == 0:
        # y: the scaled tile clamped to +-limit, as is where the scales leave it within the limit anyway (FP32
        # scales in ordinary tiles), except in a single row-wise launch writing values with round to nearest,
        # which got slower with that shortcut on the H200 (docs/kernels.md)
        SHORTCUT: tl.constexpr = not (SINGLE and ROWWISE and WRITE_VALUES and not STOCHASTIC)
        y = _scaled_blocks(blocks, amax, lift, mult, ok, limit, SCALE, Q_MAX, U, B, SHORTCUT)
        # INT4: y + 1.5 * 2**23 rounds y to the nearest integer, ties to even (|y| <= 7, so the sum is exact up
        # to that rounding); its low bits are the two's-complement code, and subtracting the constant back
        # gives the level (+0.0 for 0). No float-to-int conversion (a quarter-rate instruction). Stochastic
        # rounding first adds the random offset with y's sign: sign(y) * round(|y| + v), rounding being odd.
        if STOCHASTIC:
            v = _stochastic_offset(_random_bits(seed_ptr, offset, flat, U, B, SR_GROUPED, SELECT=True))
            sign = y.to(tl.uint32, bitcast=True) & 0x80000000
            y = y + (v.to(tl.uint32, bitcast=True) ^ sign).to(tl.float32, bitcast=True)
        shifted = y + _RNE_MAGIC
        nib = shifted.to(tl.int32, bitcast=True) & 0xF
        level_value = shifted - _RNE_MAGIC
    else:
        # E2M1 (GRID == 1): the index for the codes, the level itself for the values, with y's sign (-0.0
        # for a negative y that rounds to 0, as decoding the code gives); the clamp to +-limit taken on |y|
        # (the shortcut of the INT4 grid made E2M1's launches slower on the H200)
        y = _unclamped_blocks(blocks, lift, mult, ok)
        a = tl.reshape(tl.minimum(tl.abs(y), limit[:, None, :]), (U, B))
        y = tl.reshape(y, (U, B))
        if STOCHASTIC:
            bits = _random_bits(seed_ptr, offset, flat, U, B, SR_GROUPED, SELECT=False)
            level, magnitude = _e2m1_stochastic(a, bits)
        else:
            level, magnitude = _e2m1_nearest(a)
        neg = (y < 0.0).to(tl.int32)
        nib = (neg << 3) | level
        level_value = (magnitude.to(tl.int32, bitcast=True) | (neg << 31)).to(tl.float32, bitcast=True)

    if ROWWISE:
        o64 = rows.to(tl.int64)
    else:
        o64 = (o0 + tl.arange(0, B)).to(tl.int64)
    if WRITE_CODES:
        # Codes and scales cover whole blocks: L rounded up to the block (the zero padding gives code 0).
        if PARTIAL:
            LP = (L + BLOCK - 1) // BLOCK * BLOCK
        else:
            LP = L
        L2 = LP // 2
        LB = LP // BLOCK
        packed = _pack(nib, U, B)
        if ROWWISE:  # each row's U // 2 bytes sit in one thread: store them as (B, U // 2)
            o = o64[:, None]
            r = l0 // 2 + tl.arange(0, U // 2)[None, :]
            tl.store(codes_ptr + o * L2 + r, tl.permute(packed, (1, 0)), mask=_chunk_mask(o, O, r, L2, PARTIAL))
        else:
            r, o = _tile_index(l0 // 2, o0, U // 2, B, ROWWISE, COLS)
            tl.store(codes_ptr + (page.to(tl.int64) * L2 + r) * O + o, packed,
                     mask=_chunk_mask(o, O, r, L2, PARTIAL))
        lb = (l0 // BLOCK + tl.arange(0, NB)).to(tl.int64)[:, None]
        if ROWWISE:
            s_off = o64[None, :] * LB + lb
        else:
            s_off = (page.to(tl.int64) * LB + lb) * O + o64[None, :]
        if SCALE == 1:  # E4M3 bytes, into a uint8 or a float8_e4m3fn buffer
            stored = stored.to(tl.uint8).to(scales_ptr.dtype.element_ty, bitcast=True)
        tl.store(scales_ptr + s_off, stored.to(scales_ptr.dtype.element_ty),
                 mask=_chunk_mask(o64[None, :], O, lb, LB, PARTIAL))
    if WRITE_VALUES:
        v = tl.reshape(level_value, (NB, BLOCK, B)) * decoded[:, None, :]
        v = tl.reshape(v, (U, B)).to(values_ptr.dtype.element_ty)
        if ROWWISE and (U == 16 or U == 32):
            _store_chunks(values_ptr, v, l0, rows, O, L, U, B, PARTIAL)
        else:
            r, o = _tile_index(l0, o0, U, B, ROWWISE, COLS)
            if ROWWISE:
                v_off = o.to(tl.int64) * L + r
            else:
                v_off = (page.to(tl.int64) * L + r) * O + o
            tl.store(values_ptr + v_off, _from_rows(v, U, B, ROWWISE), mask=_chunk_mask(o, O, r, L, PARTIAL))


@triton.jit
def _program_at(x_ptr, codes_ptr, scales_ptr, values_ptr, ts_ptr, gamax_ptr, seed_ptr, O, L, s_page, s_o, s_l,
                offset, rht_key, pid_0, pid_1, page,
                GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_2D: tl.constexpr,
                STOCHASTIC: tl.constexpr, SR_GROUPED: tl.constexpr, E8M0_FLOOR: tl.constexpr, Q_MAX: tl.constexpr,
                RHT: tl.constexpr, INV_SQRT: tl.constexpr, SIGN_MASK: tl.constexpr, ROWWISE: tl.constexpr,
                COLS: tl.constexpr, WRITE_CODES: tl.constexpr, WRITE_VALUES: tl.constexpr, ASM: tl.constexpr,
                U: tl.constexpr, B: tl.constexpr, PARTIAL: tl.constexpr, shift_ptr=None, shift_period=1,
                SHIFT: tl.constexpr = False, ROUND: tl.constexpr = False):
    """The program at ``(pid_0, pid_1, page)`` of a quantize launch's grid: its tile, and the tensor scale
    written by the first program (:func:`_quantize_kernel`; the pair kernel's jobs)."""
    l0, o0 = _place(pid_0, pid_1, U, B, ROWWISE)
    _quantize_at(x_ptr, codes_ptr, scales_ptr, values_ptr, ts_ptr, gamax_ptr, seed_ptr, O, L, s_page, s_o, s_l,
                 offset, rht_key, l0, o0, o0 + tl.arange(0, B), page, (pid_0 == 0) & (pid_1 == 0) & (page == 0),
                 GRID, SCALE, BLOCK, BLOCK_2D, STOCHASTIC, SR_GROUPED, E8M0_FLOOR, Q_MAX, RHT, INV_SQRT, SIGN_MASK,
                 ROWWISE, COLS, WRITE_CODES, WRITE_VALUES, ASM, U, B, PARTIAL, shift_ptr, shift_period, SHIFT,
                 SINGLE=True, ROUND=ROUND)


@triton.jit
def _quantize_kernel(x_ptr, codes_ptr, scales_ptr, values_ptr, ts_ptr, gamax_ptr, seed_ptr, shift_ptr,
                     O, L, s_page, s_o, s_l, offset, rht_key, shift_period,
                     GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_2D: tl.constexpr,
                     STOCHASTIC: tl.constexpr, SR_GROUPED: tl.constexpr, E8M0_FLOOR: tl.constexpr,
                     Q_MAX: tl.constexpr, RHT: tl.constexpr, INV_SQRT: tl.constexpr, SIGN_MASK: tl.constexpr,
                     ROWWISE: tl.constexpr, COLS: tl.constexpr, WRITE_CODES: tl.constexpr,
                     WRITE_VALUES: tl.constexpr, ASM: tl.constexpr, U: tl.constexpr, B: tl.constexpr,
                     PARTIAL: tl.constexpr, SHIFT: tl.constexpr, TILES: tl.constexpr, STAGES: tl.constexpr,
                     ROUND: tl.constexpr):
    """``TILES > 1``: each program runs ``TILES`` consecutive tiles along grid axis 1 (the launch plan divides
    that axis by it), in a loop whose loads are software-pipelined ``STAGES`` deep (``tl.range``: the next
    tiles' loads go to shared memory while this one is computed). Each tile is computed as its own program
    computes it, so the bits do not depend on either. Every plan names both (1, 1 unless configured): a
    constexpr that Inductor's generated launch does not pass compiles as None, not as a Python default."""
    if TILES == 1:
        _program_at(x_ptr, codes_ptr, scales_ptr, values_ptr, ts_ptr, gamax_ptr, seed_ptr, O, L, s_page, s_o, s_l,
                    offset, rht_key, tl.program_id(0), tl.program_id(1), tl.program_id(2), GRID, SCALE, BLOCK,
                    BLOCK_2D, STOCHASTIC, SR_GROUPED, E8M0_FLOOR, Q_MAX, RHT, INV_SQRT, SIGN_MASK, ROWWISE, COLS,
                    WRITE_CODES, WRITE_VALUES, ASM, U, B, PARTIAL, shift_ptr, shift_period, SHIFT, ROUND)
    else:
        for i in tl.range(0, TILES, num_stages=STAGES):
            _program_at(x_ptr, codes_ptr, scales_ptr, values_ptr, ts_ptr, gamax_ptr, seed_ptr, O, L, s_page, s_o,
                        s_l, offset, rht_key, tl.program_id(0), tl.program_id(1) * TILES + i, tl.program_id(2), GRID,
                        SCALE, BLOCK, BLOCK_2D, STOCHASTIC, SR_GROUPED, E8M0_FLOOR, Q_MAX, RHT, INV_SQRT, SIGN_MASK,
                        ROWWISE, COLS, WRITE_CODES, WRITE_VALUES, ASM, U, B, PARTIAL, shift_ptr, shift_period,
                        SHIFT, ROUND)


# ---- launch plans --------------------------------------------------------------------------------------

def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _columns_per_thread(u: int, itemsize: int) -> int:
    """Column-wise, each thread holds all ``u`` rows of this many consecutive columns: 64 values for u = 16
    with bf16 (8-byte vectors; with 16-byte ones, 128 values per thread spilled registers on sm_90)."""
    return max(1, (8 if u <= 16 else 4) // itemsize)


def _tile(unit: int, other: int, itemsize: int, rowwise: bool, two_level: bool, config: dict | None):
    """(U, B, num_warps). Row-wise, a thread loads 8 consecutive elements of a group, holds 32 elements (two
    row segments for U = 16, one for U = 32), and the warps tile ``o`` (2 warps for FP32 scales, 4 for E4M3 /
    E8M0 ones: the fastest tiles of benchmarks/quantize_sweep.py on an H200; 64 elements per thread made the
    U = 32 MXFP4 launch 1.4x slower); column-wise, ``B`` spans one 16-byte vector per thread times every
    thread of the program, so each thread holds all U rows of its columns."""
    u = max(unit, 8)
    if rowwise:
        warps = 4 if two_level else 2
        b = 32 * warps * max(1, 32 // u) if u <= 32 else 16
    else:
        warps = 2 if u <= 32 else 4
        b = _columns_per_thread(u, itemsize) * 32 * warps if u <= 32 else 32
    b = max(16, min(b, triton.next_power_of_2(other)))
    if config:
        b, warps = config.get("B", b), config.get("num_warps", warps)
        if set(config) - {"B", "num_warps", "fold", "amax_B", "amax_warps", "cols", "tiles", "stages"}:
            raise ValueError(f"config={config!r} is not valid: its keys are B, num_warps, fold, amax_B, amax_warps, "
                             "cols, tiles, stages")
        if b % 16 or b & (b - 1):
            raise ValueError(f"config={config!r} is not valid: B must be a power of two multiple of 16")
        cols = config.get("cols", 1)
        if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1 or cols & (cols - 1):
            raise ValueError(f"config={config!r} is not valid: cols (column-wise: columns per thread) is a power "
                             "of two")
    return u, b, warps


_MAX_GRID_Y = 65535  # CUDA's limit on grid dimension 1, where row-wise launches put the rows


def _folds(segments: int, b: int, block_2d: bool, enabled: bool) -> bool:
    """Row-wise, a contiguous ``(rows, length)`` input with ``length % unit == 0`` is the same memory, the same
    flat (stochastic rounding) indices and the same codes and scales layout as ``(segments, unit)`` with
    ``segments = rows * length // unit``: one segment of ``unit`` elements per "row". Launched that way, the
    threads of a warp hold consecutive segments, so each load and store instruction covers one contiguous span
    (unfolded, the 32 threads touch 32 rows ``length`` apart). Not for 16 x 16 blocks (their amax spans 16
    consecutive rows), a partial last tile (the caller's divisibility check), or more programs of ``b``
    segments than the grid allows."""
    return enabled and not block_2d and triton.cdiv(segments, b) <= _MAX_GRID_Y


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """Everything about one quantize launch that follows from (shape, dtype, axis, format, RHT, outputs):
    computed once per call site; the eager launcher and the Inductor lowering both read it."""

    rowwise: bool
    args: dict  # the scalar arguments: O, L, s_page, s_o, s_l
    constexprs: dict
    num_warps: int
    grid: tuple
    amax_constexprs: dict | None  # E4M3 scales: the global-amax pre-pass
    amax_num_warps: int
    codes_shape: tuple
    scales_shape: tuple
    scale_dtype: torch.dtype  # as the kernel stores it (E4M3 as bytes)
    result_scale_dtype: torch.dtype


@functools.lru_cache(maxsize=4096)  # bounded: shapes that never repeat (dynamic shapes) must not grow it
def launch_plan(shape: tuple, itemsize: int, axis: int, fmt: OperandFormat, rht: int, write_codes: bool,
                write_values: bool, asm: bool, config_items: tuple | None = None, shift: bool = False) -> LaunchPlan:
    """The launch for a contiguous ``x`` of ``shape`` quantized along ``axis`` (normalized); ``shift``: of
    ``x - shift``, one FP32 value per position along the axis (one-level scales only: a two-level format's
    global-amax pre-pass reads ``x`` as it is)."""
    if shift and not kernel_takes_shift(fmt):
        raise ValueError(f"shift with two-level scales ({fmt.spec!r}): the global-amax pre-pass takes no shift")
    c = format_constants(fmt)
    rowwise = axis == len(shape) - 1
    length = shape[axis]
    pages = 1
    for d in shape[:axis]:
        pages *= d
    other = 1
    for d in shape[axis + 1:]:
        other *= d
    config = dict(config_items) if config_items else {}
    unit = max(fmt.block, rht, 16)
    if rowwise:
        O, L = pages, length
        if L % unit == 0 and L > unit:
            segments = O * (L // unit)
            b = _tile(unit, segments, itemsize, True, c.scale != 0, config)[1]
            if _folds(segments, b, c.block_2d, config.get("fold", True)):
                O, L = segments, unit
        strides = dict(s_page=0, s_o=L, s_l=1)
        pages = 1
    else:
        O, L = other, length
        strides = dict(s_page=L * O, s_o=1, s_l=O)
    u, b, warps = _tile(unit, O, itemsize, rowwise, c.scale != 0, config)
    grid = (triton.cdiv(L, u), triton.cdiv(O, b), pages) if rowwise else (triton.cdiv(O, b), triton.cdiv(L, u), pages)
    tiles, stages = config.get("tiles", 1), config.get("stages", 1)
    for name, value in (("tiles", tiles), ("stages", stages)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config={config!r} is not valid: {name} is a positive integer")
    if tiles != 1:
        if grid[1] % tiles:
            raise ValueError(f"config={config!r} is not valid: tiles must divide the grid's axis 1 ({grid[1]})")
        grid = (grid[0], grid[1] // tiles, grid[2])
    partial = L % u != 0  # the last tile reaches past L: masked stores, and a partial RHT group left unrotated
    codes_shape, scales_shape = list(shape), list(shape)
    codes_shape[axis] = padded_length(length, fmt.block) // 2
    scales_shape[axis] = padded_length(length, fmt.block) // fmt.block
    # Column-wise, a thread holds COLS consecutive columns (the tile's vector width; B is a multiple of it).
    cols = min(config.get("cols", _columns_per_thread(u, itemsize)), b)
    # Grouped random words: the sixteen elements of one Philox call are sixteen consecutive elements along the
    # quantized axis (the axis-last order), in one thread in either orientation when L % 16 == 0.
    grouped = L % 16 == 0
    constexprs = dict(GRID=c.grid, SCALE=c.scale, BLOCK=fmt.block, BLOCK_2D=c.block_2d, STOCHASTIC=c.stochastic,
                      SR_GROUPED=grouped, E8M0_FLOOR=c.e8m0_floor, Q_MAX=c.q_max, RHT=rht,
                      INV_SQRT=inv_sqrt(rht) if rht else 1.0, SIGN_MASK=0 < rht <= MAX_SIGN_MASK_SIZE,
                      ROWWISE=rowwise, COLS=cols, WRITE_CODES=write_codes, WRITE_VALUES=write_values, ASM=asm, U=u, B=b,
                      PARTIAL=partial, SHIFT=shift, TILES=tiles, STAGES=stages,
                      ROUND=False)  # an FP32 input rounded to bf16 as loaded: the launch's to set (rounding_constexprs)
    # The pre-pass's tiles are wider than the quantize kernel's (the same elements per thread with more warps):
    # its fixed number of programs must keep enough loads in flight to run at bandwidth.
    amax_warps = config.get("amax_warps", AMAX_WARPS)
    amax_b = config.get("amax_B", max(b, min(b * amax_warps // warps, triton.next_power_of_2(O))))
    amax = (dict(RHT=rht, INV_SQRT=constexprs["INV_SQRT"], SIGN_MASK=constexprs["SIGN_MASK"], ROWWISE=rowwise,
                 U=u, B=amax_b, COLS=cols, PARTIAL=partial)
            if c.scale == 1 else None)
    # a row folded into rows of L (row-wise, L a whole number of units) finds its shift at (o % period) * L + l
    args = dict(O=O, L=L, **strides, shift_period=length // L if rowwise and L else 1)
    return LaunchPlan(rowwise, args, constexprs,
                      warps, grid, amax, amax_warps, tuple(codes_shape), tuple(scales_shape), _OUT_SCALE_DTYPES[c.scale],
                      _RESULT_SCALE_DTYPES[c.scale])


def one_read_refusal(shape: tuple, a: LaunchPlan, b: LaunchPlan) -> str | None:
    """Why one launch cannot take a tensor of ``shape``'s quantizations with plans ``a`` and ``b`` from one read
    of it in ``U x B`` tiles (kernels.quantize_pair's dual launch, kernels.prepass's dual pre-pass), or None:
    the row-wise and column-wise quantizations of a 2-D tensor of whole ``U x U`` tiles, one span ``U`` of
    :data:`DUAL_SPANS` for both."""
    if a.rowwise == b.rowwise or len(shape) != 2:
        return "not the row-wise and column-wise quantizations of a 2-D tensor"
    u = a.constexprs["U"]
    if u not in DUAL_SPANS or b.constexprs["U"] != u:
        return (f"blocks and RHT groups spanning {a.constexprs['U']} and {b.constexprs['U']} elements: one span "
                f"of {' or '.join(map(str, DUAL_SPANS))} for both jobs only (spans of other lengths are not taken)")
    if shape[0] % u or shape[1] % u:
        return f"whole {u} x {u} tiles only (blocks and RHT groups of {u} along both axes)"
    return None


def plan_for(x: torch.Tensor, axis: int, fmt: OperandFormat, rht: int, *, codes: bool, values: bool,
             config: dict | None = None, shift: bool = False) -> LaunchPlan:
    asm = not _interpreting() and x.device.type == "cuda" and torch.version.hip is None
    return launch_plan(tuple(x.shape), x.element_size(), axis, fmt, rht, codes, values, asm,
                       tuple(sorted(config.items())) if config else None, shift)


def kernel_takes_shift(fmt: OperandFormat) -> bool:
    """Whether the kernels subtract a shift themselves for ``fmt`` (one-level scales); for a two-level format
    the launchers quantize ``x.float() - shift``, the same FP32 values."""
    return format_constants(as_format(fmt)).scale != 1


def _seed_tensor(seed, device) -> torch.Tensor:
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1).to(device=device, dtype=torch.int64)
    value = int(seed) & 0xFFFFFFFFFFFFFFFF
    if value >= 1 << 63:
        value -= 1 << 64
    return torch.tensor([value], dtype=torch.int64, device=device)


# ---- launchers -----------------------------------------------------------------------------------------

def rht_key(plan: LaunchPlan, rht_seed) -> int:
    """The kernels' ``rht_key`` argument: the RHT signs as a bit mask (``SIGN_MASK``), else the seed."""
    c = plan.constexprs
    return sign_mask(c["RHT"], int(rht_seed)) if c["SIGN_MASK"] else int(rht_seed)


PLAN_SCALARS = ("O", "L", "s_page", "s_o", "s_l")  # LaunchPlan.args, in the kernels' order


def eager_outputs(plan: LaunchPlan, shape: tuple, dtype, device) -> tuple:
    """The tensors an eager launch of ``plan`` writes for one quantization, ``(codes, scales, values, tensor
    scale)`` (None for those it does not write: codes and scales for ``dtype=None``, else values of ``dtype`` and
    ``shape``), and the op's result over them: ``quantize``'s or ``quantize_dequantize``'s."""
    ts = torch.empty((), dtype=torch.float32, device=device)
    if dtype is None:
        codes = torch.empty(plan.codes_shape, dtype=torch.uint8, device=device)
        scales = torch.empty(plan.scales_shape, dtype=plan.scale_dtype, device=device)
        return (codes, scales, None, ts), (codes, scales.view(plan.result_scale_dtype), ts)
    values = torch.empty(shape, dtype=dtype, device=device)
    return (None, None, values, ts), (values, ts)


def output_pointers(codes, scales, values, prefix: str = "") -> dict:
    """The kernels' three output pointers (``prefix``: a pair kernel's ``a_`` / ``b_``); None for one the launch
    does not write, as for any pointer a launch does not read (the gamax of one-level scales, the seed of round
    to nearest): Triton takes None as a constant, the kernel never touches it, and a launcher has one pointer
    fewer to resolve (Inductor's static launcher asks the driver for each one; docs/kernels.md). Tensors or
    Inductor buffers alike."""
    return {f"{prefix}codes_ptr": codes, f"{prefix}scales_ptr": scales, f"{prefix}values_ptr": values}


def amax_scalars(plan: LaunchPlan, prefix: str = "") -> dict:
    """The global-amax pre-pass's scalar arguments (``prefix``: a pair launch's ``a_`` / ``b_``)."""
    return {**{f"{prefix}{k}": plan.args[k] for k in PLAN_SCALARS}, f"{prefix}pages": plan.grid[2]}


def amax_launch(plan: LaunchPlan, x, gamax, key) -> tuple:
    """The global-amax pre-pass of a two-level quantization as ``(kernel, grid, num_warps, tensors, scalars)``:
    ``x`` and ``gamax`` (``AMAX_PROGRAMS`` int32, every program writes its slot) tensors or Inductor buffers,
    ``key`` the ``rht_key``."""
    return (_amax_kernel, (AMAX_PROGRAMS, 1, 1), plan.amax_num_warps, dict(x_ptr=x, gamax_ptr=gamax),
            {**amax_scalars(plan), "rht_key": key, **plan.amax_constexprs})


def rounding_constexprs(kernel, tensors: dict, rounded) -> dict:
    """The ``ROUND`` constexprs of a launch of ``kernel`` (one per input pointer: ``x_ptr``'s ``ROUND``,
    ``a_x_ptr``'s ``A_ROUND``, ...), each True where ``tensors`` passes that pointer one of the tensors in
    ``rounded`` (by identity: FP32 tensors that the launch rounds to bf16 as it loads them,
    ``quantize_tile._loaded``, in place of their bf16 casts). All of them: Inductor's analysis of a launch
    takes every argument of the kernel."""
    return {input_constexpr(name): any(tensors.get(name) is r for r in rounded) for name in kernel.arg_names
            if input_constexpr(name) is not None}


def input_constexpr(name: str) -> str | None:
    """The ``ROUND`` constexpr of a kernel's input pointer ``name`` (``x_ptr``: ``ROUND``, ``c_x_ptr``:
    ``C_ROUND``), or None for another argument."""
    if name == "x_ptr":
        return "ROUND"
    if len(name) == 7 and name[1:] == "_x_ptr":
        return f"{name[0].upper()}_ROUND"
    return None


def _launch(x, plan: LaunchPlan, rht_seed, seed, offset, codes, scales, values, shift=None,
            write_tensor_scale=True, rounded: bool = False):
    """Run the (pre-pass and) kernel; returns the tensor scale (``write_tensor_scale=False``: None, not written;
    what the lowering does for a tensor scale nobody reads). ``rounded``: ``x`` is FP32 and the launch quantizes
    ``x.to(torch.bfloat16)``, rounding it as it loads it (the lowering's folded casts; ``plan``, a bf16 one)."""
    device = x.device
    tensor_scale = torch.empty((), dtype=torch.float32, device=device) if write_tensor_scale else None
    seed_t = _seed_tensor(seed, device) if plan.constexprs["STOCHASTIC"] else None
    if plan.amax_constexprs is not None:
        gamax = torch.empty(AMAX_PROGRAMS, dtype=torch.int32, device=device)
        kernel, grid, num_warps, tensors, scalars = amax_launch(plan, x, gamax, rht_key(plan, rht_seed))
        kernel[grid](**tensors, **scalars, **rounding_constexprs(kernel, tensors, [x] if rounded else []),
                     num_warps=num_warps)
    else:
        gamax = None  # not read: one-level scales have no global amax
    _quantize_kernel[plan.grid](x, **output_pointers(codes, scales, values), ts_ptr=tensor_scale, gamax_ptr=gamax,
                                seed_ptr=seed_t, shift_ptr=shift, **{k: plan.args[k] for k in PLAN_SCALARS},
                                offset=int(offset), rht_key=rht_key(plan, rht_seed),
                                shift_period=plan.args["shift_period"], **{**plan.constexprs, "ROUND": rounded},
                                num_warps=plan.num_warps)
    return tensor_scale


def _take_shift(x, axis: int, fmt: OperandFormat, shift):
    """``(x, shift)`` for the kernel: ``shift`` as it is where the kernel takes it (contiguous), else
    ``(x.float() - shift, None)`` (two-level scales: the same FP32 values, quantized as they are)."""
    check_shift(x, axis, shift)
    if shift is None or kernel_takes_shift(fmt):
        return x, None if shift is None else shift.contiguous()
    return x.float() - shift, None


def quantize(x: torch.Tensor, axis: int, fmt: OperandFormat | str, rht: int = 0, rht_seed: int = 0,
             seed=None, offset: int = 0, shift: torch.Tensor | None = None, *,
             config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scales, tensor_scale) of ``x`` (less ``shift``, ``numerics.check_shift``) quantized along
    ``axis``: ``numerics.quantize``'s, bit for bit.

    ``config`` (benchmarks): ``{"B": .., "num_warps": .., "fold": False, "amax_B": .., "amax_warps": ..,
    "cols": .., "tiles": .., "stages": ..}`` overrides the tile (``fold``: see :func:`_folds`; ``amax_*``: the
    E4M3 global-amax pre-pass's; ``cols``: column-wise, the consecutive columns a thread holds, the vector
    width; ``tiles`` / ``stages``: several tiles a program, pipelined, :func:`_quantize_kernel`).
    """
    fmt = as_format(fmt)
    axis = check_quantize_inputs(x, axis, fmt, rht, seed)
    x, shift = _take_shift(x, axis, fmt, shift)
    x = x.contiguous()
    plan = plan_for(x, axis, fmt, rht, codes=True, values=False, config=config, shift=shift is not None)
    codes = torch.empty(plan.codes_shape, dtype=torch.uint8, device=x.device)
    scales = torch.empty(plan.scales_shape, dtype=plan.scale_dtype, device=x.device)
    if x.numel() == 0:
        return codes, scales.view(plan.result_scale_dtype), torch.ones((), dtype=torch.float32, device=x.device)
    tensor_scale = _launch(x, plan, rht_seed, seed, offset, codes, scales, None, shift)
    return codes, scales.view(plan.result_scale_dtype), tensor_scale


def quantize_dequantize(x: torch.Tensor, axis: int, fmt: OperandFormat | str, rht: int = 0, rht_seed: int = 0,
                        seed=None, offset: int = 0, dtype: torch.dtype = torch.bfloat16,
                        shift: torch.Tensor | None = None, *,
                        config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, tensor_scale): ``code x block scale`` of ``x`` quantized along ``axis``, rounded to ``dtype``
    (``numerics.quantize_dequantize``'s, bit for bit), without writing the codes."""
    fmt = as_format(fmt)
    axis = check_quantize_inputs(x, axis, fmt, rht, seed)
    if dtype not in _VALUE_DTYPES:
        raise ValueError(f"dtype={dtype} is not valid; valid values: {', '.join(map(str, _VALUE_DTYPES))}")
    x, shift = _take_shift(x, axis, fmt, shift)
    x = x.contiguous()
    values = torch.empty(x.shape, dtype=dtype, device=x.device)
    if x.numel() == 0:
        return values, torch.ones((), dtype=torch.float32, device=x.device)
    plan = plan_for(x, axis, fmt, rht, codes=False, values=True, config=config, shift=shift is not None)
    return values, _launch(x, plan, rht_seed, seed, offset, None, None, values, shift)


# ---- compile-only variants (ufp4_compile.kernels.targets protocol) --------------------------------------

_SCALE_POINTERS = ("*fp32", "*u8", "*u8")  # by format_constants().scale, as _OUT_SCALE_DTYPES stores them
_VARIANT_SIZE = 4096  # variants use the launcher's tile for a 4096 x 4096 operand


def unused_pointers(c, *, values: bool, prefix: str = "") -> dict:
    """The pointer arguments a launch of a job with format constants ``c`` passes as None (``values``: it
    writes values, else codes and scales; the gamax of one-level scales; the seed of round to nearest), as
    ``{name: None}``: compile-only variants take them as constants, as Triton does at the launches."""
    names = ["codes_ptr", "scales_ptr"] if values else ["values_ptr"]
    names += [] if c.scale == 1 else ["gamax_ptr"]
    names += [] if c.stochastic else ["seed_ptr"]
    return {f"{prefix}{n}": None for n in names}


def compile_variants():
    """One ``_quantize_kernel`` per distinct quantize launch of the presets (format, RHT, row- or
    column-wise; bf16 input; codes for the 4-bit GEMMs of sm_100 / gfx950), and the ``_amax_kernel``
    instances the E4M3 formats launch first."""
    from ufp4_compile.kernels.targets import KernelVariant, preset_quantize_calls

    variants, amax = [], {}
    for (fmt, rht, rowwise), presets in preset_quantize_calls().items():
        shape = (_VARIANT_SIZE, _VARIANT_SIZE)
        plan = launch_plan(shape, 2, 1 if rowwise else 0, fmt, rht, True, False, False)
        c = format_constants(fmt)
        types = dict(x_ptr="*bf16", codes_ptr="*u8", scales_ptr=_SCALE_POINTERS[c.scale], ts_ptr="*fp32",
                     gamax_ptr="*i32", seed_ptr="*i64", O="i32", L="i32", s_page="i32", offset="i64", rht_key="i32")
        unused = unused_pointers(c, values=False)  # None at every launch (output_pointers)
        types = {k: v for k, v in types.items() if k not in unused}
        unit = dict(s_o=_VARIANT_SIZE, s_l=1) if rowwise else dict(s_o=1, s_l=_VARIANT_SIZE)
        unit.update(shift_ptr=None, shift_period=1)  # no shift (the presets')
        orientation = "row-wise" if rowwise else "column-wise"
        variants.append(KernelVariant.build(
            f"quantize[{fmt.spec} rht{rht} {orientation}]", presets, _quantize_kernel, types,
            unit | plan.constexprs | unused,
            aligned=("x_ptr", "codes_ptr", "scales_ptr", "O", "L"), options=dict(num_warps=plan.num_warps)))
        if fmt.scale is ScaleFormat.E4M3:  # two-level scales: the global-amax pre-pass first
            names = amax.setdefault((rht, rowwise, plan.amax_num_warps, tuple(sorted(plan.amax_constexprs.items()))),
                                    {})
            names.update(dict.fromkeys(presets.split(", ")))
    for (rht, rowwise, warps, constexprs), names in amax.items():
        unit = dict(s_o=_VARIANT_SIZE, s_l=1) if rowwise else dict(s_o=1, s_l=_VARIANT_SIZE)
        orientation = "row-wise" if rowwise else "column-wise"
        types = dict(x_ptr="*bf16", gamax_ptr="*i32", O="i32", L="i32", s_page="i32", pages="i32", rht_key="i32")
        variants.append(KernelVariant.build(
            f"quantize_amax[rht{rht} {orientation}]", ", ".join(names), _amax_kernel, types, unit | dict(constexprs),
            aligned=("x_ptr", "O", "L"), options=dict(num_warps=warps)))
    return variants
