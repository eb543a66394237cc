"""The pieces a quantize program is built from: the tile's loads and stores in either orientation (``x[page, l, o]``
column-wise, ``x[o, l]`` row-wise; ``kernels.quantize`` describes the layout), the Hadamard butterfly and its
big-group guard, block amax and scales, round to nearest and stochastic rounding onto the grids, Philox random
bits, and the packing of code pairs. ``kernels.quantize``'s kernels, ``kernels.prepass``'s pre-passes and the
pair kernels (through ``kernels.quantize._quantize_at``) are made of them.

Every formula is the reference's (``ufp4_compile.numerics``), bit for bit: products that feed an addition are
exact (the Hadamard signs, powers of two), so FMA contraction cannot change a result, and the IEEE division of a
block scale is ``div.rn.f32`` itself on NVIDIA GPUs (:func:`div_rn`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ufp4_compile.kernels.common import abs_bits, e4m3_round, is_finite, pow2
from ufp4_compile.numerics import hadamard as _ref_hadamard
from ufp4_compile.numerics import scales as _ref_scales

_E4M3_MAX = tl.constexpr(_ref_scales.E4M3_MAX)
_FP32_MAX = tl.constexpr(_ref_scales.FP32_MAX)
_TINY = tl.constexpr(_ref_scales.TINY_SCALE)
_LIFT = tl.constexpr(_ref_scales.TINY_SCALE_LIFT)
# numerics.hadamard: a group whose amax reaches 2**64 is rotated through 2**-64 (FP32 bits of 2**64 below).
_BIG_GROUP_BITS = tl.constexpr(0x5F800000)
_BIG_DOWN = tl.constexpr(1.0 / _ref_hadamard.BIG_GROUP)
_BIG_UP = tl.constexpr(_ref_hadamard.BIG_GROUP)
# _rotated_blocks, _below_guard: rotated maxima below 2**59 rule out any group at or above 2**64 for R <= 256
_GUARD_AFTER_EXP = 59
_GUARD_AFTER = tl.constexpr(2.0**_GUARD_AFTER_EXP)
_GUARD_AFTER_BITS = tl.constexpr((_GUARD_AFTER_EXP + 127) << 23)  # its FP32 bit pattern
_RNE_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: adding it rounds |y| < 2**22 to an integer, ties to even


# ---- arithmetic ----------------------------------------------------------------------------------------

@triton.jit
def div_rn(a, b, ASM: tl.constexpr):
    """IEEE ``a / b`` (round to nearest even, subnormals kept): PTX ``div.rn.f32`` where ``ASM``, else
    libdevice's ``div_rn`` (the interpreter, AMD GPUs)."""
    if ASM:
        q = tl.inline_asm_elementwise("div.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        q = tl.math.div_rn(a, b)
    return q


# ---- tile pieces ------------------------------------------------------------------------------------

@triton.jit
def _tile_index(r0, o0, ROWS: tl.constexpr, B: tl.constexpr, ROWWISE: tl.constexpr, COLS: tl.constexpr):
    """(row, o) indices of the tile rows ``r0 .. r0 + ROWS`` x columns ``o0 .. o0 + B``, arranged as it is
    loaded and stored: ``(ROWS // 8, B, 8)`` row-wise (8 consecutive rows per thread), ``(ROWS, B)`` else,
    with ``COLS`` consecutive columns per thread (the contiguity hint sets the vector width: 8-byte vectors
    for bf16 keep a thread's ROWS x COLS values in registers without spilling)."""
    if ROWWISE:
        r = r0 + (tl.arange(0, ROWS // 8)[:, None, None] * 8 + tl.arange(0, 8)[None, None, :])
        o = o0 + tl.arange(0, B)[None, :, None]
    else:
        r = r0 + tl.arange(0, ROWS)[:, None]
        o = o0 + tl.max_contiguous(tl.arange(0, B), COLS)[None, :]
    return r, o


@triton.jit
def _to_rows(t, ROWS: tl.constexpr, B: tl.constexpr, ROWWISE: tl.constexpr):
    """A tile in its load arrangement as ``(ROWS, B)``: a relabelling of registers."""
    if ROWWISE:
        v = tl.reshape(tl.permute(t, (0, 2, 1)), (ROWS, B))
    else:
        v = t
    return v


@triton.jit
def _from_rows(v, ROWS: tl.constexpr, B: tl.constexpr, ROWWISE: tl.constexpr):
    """The inverse of :func:`_to_rows`."""
    if ROWWISE:
        t = tl.permute(tl.reshape(v, (ROWS // 8, 8, B)), (0, 2, 1))
    else:
        t = v
    return t


@triton.jit
def _shifted(x, mask, o, l, L, shift_ptr, shift_period, SHIFT: tl.constexpr):
    """``x`` (FP32, loaded with ``mask``) less ``shift`` where ``SHIFT`` (zeros outside the mask stay zeros): a
    mean split's residual, the FP32 difference the reference takes. ``shift`` holds one value per position
    along the tensor's quantized axis; a row-wise plan that folds each row into ``shift_period`` rows of ``L``
    (``launch_plan``) finds element ``(o, l)``'s at ``(o % shift_period) * L + l`` (1 when it does not fold)."""
    if SHIFT:
        x = tl.where(mask, x - tl.load(shift_ptr + ((o % shift_period) * L + l), mask=mask, other=0.0), 0.0)
    return x


@triton.jit
def _loaded(x, ROUND: tl.constexpr):
    """Loaded input elements as FP32. ``ROUND``: an FP32 input rounded to bfloat16 first (round to nearest
    even, what ``x.to(torch.bfloat16)`` gives): a launch that reads a bf16 cast's FP32 source in its place (the
    lowering's folded weight casts, docs/kernels.md) quantizes the cast's values."""
    if ROUND:
        x = x.to(tl.bfloat16)
    return x.to(tl.float32)


@triton.jit
def _chunk(x_ptr, c: tl.constexpr, l0, rows, O, L, s_o, s_l, shift_ptr=None, shift_period=1,
           SHIFT: tl.constexpr = False, ROUND: tl.constexpr = False):
    """Row-wise: elements ``l0 + 8c .. l0 + 8c + 8`` of the rows ``rows`` (``(B,)``: ``o0 .. o0 + B``, or
    any row indices; one ``>= O`` is masked out) as ``(B, 8)`` (one 16-byte vector per thread for bf16), with
    their row-major flat indices; less ``shift`` along the row where ``SHIFT``; ``ROUND``: see :func:`_loaded`."""
    o = rows[:, None]
    l = l0 + c * 8 + tl.arange(0, 8)[None, :]
    mask = (o < O) & (l < L)
    x = _loaded(tl.load(x_ptr + o.to(tl.int64) * s_o + l.to(tl.int64) * s_l, mask=mask, other=0.0), ROUND)
    return _shifted(x, mask, o, l, L, shift_ptr, shift_period, SHIFT), o.to(tl.int64) * L + l


@triton.jit
def _join_chunks(c0, c1, c2, c3, U: tl.constexpr, B: tl.constexpr):
    """Two (U = 16) or four (U = 32) ``(B, 8)`` chunks as the ``(U, B)`` tile: ``join`` stacks them in each
    thread's registers, so the tile needs no data movement (one load of ``(U // 8, B, 8)`` would let the
    compiler spread the chunks over threads and shuffle them back through shared memory)."""
    if U == 16:
        t = tl.reshape(tl.permute(tl.join(c0, c1), (2, 1, 0)), (16, B))
    else:  # [b, e, x, y] holds chunk 2x + y
        t = tl.reshape(tl.permute(tl.join(tl.join(c0, c2), tl.join(c1, c3)), (2, 3, 1, 0)), (32, B))
    return t


@triton.jit
def _chunk_mask(o, O, l, L, PARTIAL: tl.constexpr):
    """Rows in range, and (``PARTIAL``: L is not a multiple of the tile) elements before ``L``."""
    mask = o < O
    if PARTIAL:
        mask = mask & (l < L)
    return mask


@triton.jit
def _store_chunks(ptr, v, l0, rows, O, L, U: tl.constexpr, B: tl.constexpr, PARTIAL: tl.constexpr):
    """Row-wise store of the ``(U, B)`` tile ``v`` into the rows ``rows`` of a contiguous ``(O, L)`` tensor,
    chunk by chunk (the inverse of :func:`_join_chunks`)."""
    o = rows[:, None]
    e = tl.arange(0, 8)[None, :]
    base = ptr + o.to(tl.int64) * L + l0 + e
    if U == 16:
        c0, c1 = tl.split(tl.permute(tl.reshape(v, (2, 8, B)), (2, 1, 0)))
        tl.store(base, c0, mask=_chunk_mask(o, O, l0 + e, L, PARTIAL))
        tl.store(base + 8, c1, mask=_chunk_mask(o, O, l0 + 8 + e, L, PARTIAL))
    else:
        even, odd = tl.split(tl.permute(tl.reshape(v, (2, 2, 8, B)), (3, 2, 0, 1)))
        c0, c2 = tl.split(even)
        c1, c3 = tl.split(odd)
        tl.store(base, c0, mask=_chunk_mask(o, O, l0 + e, L, PARTIAL))
        tl.store(base + 8, c1, mask=_chunk_mask(o, O, l0 + 8 + e, L, PARTIAL))
        tl.store(base + 16, c2, mask=_chunk_mask(o, O, l0 + 16 + e, L, PARTIAL))
        tl.store(base + 24, c3, mask=_chunk_mask(o, O, l0 + 24 + e, L, PARTIAL))


@triton.jit
def _load_tile(x_ptr, page, l0, o0, rows, O, L, s_page, s_o, s_l, U: tl.constexpr, B: tl.constexpr,
               ROWWISE: tl.constexpr, COLS: tl.constexpr, shift_ptr=None, shift_period=1,
               SHIFT: tl.constexpr = False, ROUND: tl.constexpr = False):
    """The FP32 tile ``x[page, l0 + i, o0 + j]`` as ``(U, B)`` (zeros outside) and each element's index in the
    axis-last order (``x[page, o, l]`` flattened; stochastic rounding's counter). Row-wise with U = 16 or 32,
    ``rows`` (``(B,)``) names the tile's rows, ``o0 .. o0 + B`` or any others (``kernels.quantize_pair``'s dual
    kernel). ``SHIFT``: less ``shift`` (:func:`_shifted`); ``ROUND``: an FP32 input rounded to bf16 first
    (:func:`_loaded`)."""
    if ROWWISE and (U == 16 or U == 32):
        c0, f0 = _chunk(x_ptr, 0, l0, rows, O, L, s_o, s_l, shift_ptr, shift_period, SHIFT, ROUND)
        c1, f1 = _chunk(x_ptr, 1, l0, rows, O, L, s_o, s_l, shift_ptr, shift_period, SHIFT, ROUND)
        c2, f2 = c0, f0
        c3, f3 = c1, f1
        if U == 32:
            c2, f2 = _chunk(x_ptr, 2, l0, rows, O, L, s_o, s_l, shift_ptr, shift_period, SHIFT, ROUND)
            c3, f3 = _chunk(x_ptr, 3, l0, rows, O, L, s_o, s_l, shift_ptr, shift_period, SHIFT, ROUND)
        x = _join_chunks(c0, c1, c2, c3, U, B)
        flat = _join_chunks(f0, f1, f2, f3, U, B)
    else:
        l, o = _tile_index(l0, o0, U, B, ROWWISE, COLS)
        mask = (l < L) & (o < O)
        t = _loaded(tl.load(x_ptr + page.to(tl.int64) * s_page + o.to(tl.int64) * s_o + l.to(tl.int64) * s_l,
                            mask=mask, other=0.0), ROUND)
        t = _shifted(t, mask, o, l, L, shift_ptr, shift_period, SHIFT)
        if ROWWISE:
            f = o.to(tl.int64) * L + l
        else:  # the index in the axis-last order x[page, o, l] (stochastic rounding's counter)
            f = (page.to(tl.int64) * O + o) * L + l
        x = _to_rows(t, U, B, ROWWISE)
        flat = _to_rows(f, U, B, ROWWISE)
    return x, flat


@triton.jit
def _stage(v, U: tl.constexpr, B: tl.constexpr, h: tl.constexpr):
    """One butterfly stage along the rows: ``(a, b) -> (a + b, a - b)`` for the row pairs ``(i, i + h)``."""
    t = tl.permute(tl.reshape(v, (U // (2 * h), 2, h, B)), (0, 2, 3, 1))
    a, b = tl.split(t)
    t = tl.permute(tl.join(a + b, a - b), (0, 3, 1, 2))
    return tl.reshape(t, (U, B))


@triton.jit
def _butterfly(v, U: tl.constexpr, B: tl.constexpr, R: tl.constexpr):
    """The unnormalized Walsh-Hadamard transform of each R consecutive rows (h = 1, 2, 4, ...)."""
    if 1 < R:
        v = _stage(v, U, B, 1)
    if 2 < R:
        v = _stage(v, U, B, 2)
    if 4 < R:
        v = _stage(v, U, B, 4)
    if 8 < R:
        v = _stage(v, U, B, 8)
    if 16 < R:
        v = _stage(v, U, B, 16)
    if 32 < R:
        v = _stage(v, U, B, 32)
    if 64 < R:
        v = _stage(v, U, B, 64)
    if 128 < R:
        v = _stage(v, U, B, 128)
    return v


@triton.jit
def _rht(x, rht_key, U: tl.constexpr, B: tl.constexpr, R: tl.constexpr, INV_SQRT: tl.constexpr,
         SIGN_MASK: tl.constexpr, HALF: tl.constexpr = False):
    """``H_R diag(s) v / sqrt(R)`` on each R consecutive rows, in numerics.hadamard's butterfly order
    (h = 1, 2, 4, ...). The sign products are exact, so contraction into FMAs cannot change a sum.

    ``rht_key``: with ``SIGN_MASK`` (R <= 64) the signs themselves, bit i set for ``s_i = -1``
    (numerics.hadamard.sign_mask, computed once on the host); else the Philox seed they come from.

    A group whose amax is >= 2**64 (or NaN) goes through ``2**-64`` first and is scaled back by ``2**64``
    at the end, a finite overflow saturating at +-FP32_MAX (numerics.hadamard); the scaling is its own
    multiplication, so the product that feeds the butterfly's first sum stays the exact sign product.
    A tile without such a group (the common case, decided once per program) skips that guard: scaling
    by 1 and a check that cannot fire give the same bits. ``HALF``: see :func:`_rht_known`."""
    return _rht_known(x, _no_big_group(x), rht_key, U, B, R, INV_SQRT, SIGN_MASK, HALF)


@triton.jit
def _no_big_group(x):
    """True (a scalar) where no element of the 2-D tile ``x`` has ``|x| >= 2**64`` or is NaN: no group of it
    needs the RHT's guard (:func:`_rht_known`'s ``small``)."""
    return _all_small(_abs_max_nan(x))


@triton.jit
def _rht_known(x, small, rht_key, U: tl.constexpr, B: tl.constexpr, R: tl.constexpr, INV_SQRT: tl.constexpr,
               SIGN_MASK: tl.constexpr, HALF: tl.constexpr = False):
    """:func:`_rht` with its guard decided by the caller: ``small`` (a scalar) True only where no group of
    ``x`` has an amax >= 2**64 or a NaN. False is always right (the guarded path gives a small group the same
    bits); a caller that holds the same elements in another layout decides once for both.

    ``HALF``: the elements of ``x`` are bf16 or fp16 values as loaded (multiples of 2**-133). Where
    ``1 / sqrt(R)`` is a power of two ``2**-k`` (R = 4, 16, 64, 256), the common path then folds it into the
    signs, ``H (D 2**-k) x`` instead of ``(H D x) 2**-k``: the same bits, one multiplication per element
    less. Every value either way is a multiple of 2**-(133 + k), at least 2**-149 for k <= 16, so each
    scaled sum is the unscaled one times 2**-k exactly (a normal result scales its rounding; one in the
    subnormal range is exact in both) and nothing overflows (every ``|x| < 2**64``)."""
    idx = tl.arange(0, U) % R
    if SIGN_MASK:
        # tl.cast, not .to: Inductor's mutation analysis compiles the kernel with its scalars as constants
        bits = (tl.cast(rht_key, tl.int64) >> idx.to(tl.int64)) & 1
    else:
        zero = tl.zeros((U,), tl.uint32)
        bits, _, _, _ = tl.philox(rht_key, idx.to(tl.uint32), zero, zero, zero)
        bits = bits & 1
    # +-1.0 from the sign bit (exact; no integer-to-float conversion)
    sign = ((bits.to(tl.int32) << 31) | 0x3F800000).to(tl.float32, bitcast=True)[:, None]
    if small:
        if HALF and (R & 0x55555555) != 0:  # 1 / sqrt(R) = 2**-k: folded into the signs
            out = _butterfly(x * (sign * INV_SQRT), U, B, R)
        else:
            out = _butterfly(x * sign, U, B, R) * INV_SQRT
    else:
        mag = abs_bits(x)
        group_amax = tl.max(tl.reshape(mag, (U // R, R, B)), axis=1)
        big = tl.reshape(tl.broadcast_to((group_amax >= _BIG_GROUP_BITS)[:, None, :], (U // R, R, B)), (U, B))
        v = _butterfly((x * tl.where(big, _BIG_DOWN, 1.0)) * sign, U, B, R)
        v = v * INV_SQRT  # float32(1 / sqrt(R)), a constexpr: no runtime float argument to type
        scaled = v * tl.where(big, _BIG_UP, 1.0)
        saturated = tl.where(v < 0.0, -_FP32_MAX, _FP32_MAX)
        out = tl.where(is_finite(v) & ~is_finite(scaled), saturated, scaled)
    return out


@triton.jit
def _rotated_tile(x_ptr, page, l0, o0, rows, O, L, s_page, s_o, s_l, rht_key, RHT: tl.constexpr,
                  INV_SQRT: tl.constexpr, SIGN_MASK: tl.constexpr, U: tl.constexpr, B: tl.constexpr,
                  ROWWISE: tl.constexpr, COLS: tl.constexpr, PARTIAL: tl.constexpr, shift_ptr=None,
                  shift_period=1, SHIFT: tl.constexpr = False, ROUND: tl.constexpr = False):
    """The loaded tile (less the shift where ``SHIFT``), rotated when ``RHT``; ``PARTIAL`` (L is not a multiple
    of U): rows of a group that ends past ``L`` keep their loaded values (a trailing partial group is not
    rotated; padding is zeros)."""
    x, flat = _load_tile(x_ptr, page, l0, o0, rows, O, L, s_page, s_o, s_l, U, B, ROWWISE, COLS, shift_ptr,
                         shift_period, SHIFT, ROUND)
    if RHT > 0:
        # x as loaded holds bf16 or fp16 values: a 16-bit input, or an FP32 one rounded to bf16
        HALF: tl.constexpr = (x_ptr.dtype.element_ty.primitive_bitwidth == 16 or ROUND) and not SHIFT
        x = _whole_groups(_rht(x, rht_key, U, B, RHT, INV_SQRT, SIGN_MASK, HALF), x, l0, L, RHT, U, PARTIAL)
    return x, flat


@triton.jit
def _rotated_blocks(x_ptr, page, l0, o0, rows, O, L, s_page, s_o, s_l, rht_key, RHT: tl.constexpr,
                    INV_SQRT: tl.constexpr, SIGN_MASK: tl.constexpr, U: tl.constexpr, B: tl.constexpr,
                    ROWWISE: tl.constexpr, COLS: tl.constexpr, PARTIAL: tl.constexpr, BLOCK: tl.constexpr,
                    BLOCK_2D: tl.constexpr, shift_ptr=None, shift_period=1, SHIFT: tl.constexpr = False,
                    ROUND: tl.constexpr = False):
    """:func:`_rotated_tile` and its block amax (:func:`_block_amax`), as (tile, flat indices, amax).

    With an RHT, the tile is rotated on the common path first and the guard decided afterwards, from the
    block maxima the scales need anyway instead of a pass over the loaded elements: a tile whose rotated
    values are all below 2**59 (no NaN, no Inf) has no group at or above 2**64 (the rotation keeps each
    group's 2-norm, so ``max |x| <= sqrt(R) max |RHT(x)|``, and sqrt(R) <= 16 for R <= 256), and the
    common path's values are the guarded path's there. Any other tile is rotated again through the guard
    (:func:`_rht_known`), as before: the same bits either way."""
    x, flat = _load_tile(x_ptr, page, l0, o0, rows, O, L, s_page, s_o, s_l, U, B, ROWWISE, COLS, shift_ptr,
                         shift_period, SHIFT, ROUND)
    if RHT > 0:
        # x as loaded holds bf16 or fp16 values: a 16-bit input, or an FP32 one rounded to bf16
        HALF: tl.constexpr = (x_ptr.dtype.element_ty.primitive_bitwidth == 16 or ROUND) and not SHIFT
        rotated = _whole_groups(_rht_known(x, True, rht_key, U, B, RHT, INV_SQRT, SIGN_MASK, HALF), x, l0, L,
                                RHT, U, PARTIAL)
        amax = _block_amax(rotated, U, B, BLOCK, BLOCK_2D)
        if tl.max(tl.max(amax.to(tl.int32, bitcast=True), axis=1), axis=0) >= _GUARD_AFTER_BITS:
            # read again rather than held: the loaded tile's registers are free once it is rotated
            x, flat = _load_tile(x_ptr, page, l0, o0, rows, O, L, s_page, s_o, s_l, U, B, ROWWISE, COLS, shift_ptr,
                                 shift_period, SHIFT, ROUND)
            rotated = _whole_groups(_rht_known(x, False, rht_key, U, B, RHT, INV_SQRT, SIGN_MASK), x, l0, L, RHT,
                                    U, PARTIAL)
            amax = _block_amax(rotated, U, B, BLOCK, BLOCK_2D)
        x = rotated
    else:
        amax = _block_amax(x, U, B, BLOCK, BLOCK_2D)
    return x, flat, amax


@triton.jit
def _whole_groups(rotated, x, l0, L, RHT: tl.constexpr, U: tl.constexpr, PARTIAL: tl.constexpr):
    """``rotated`` where its RHT group ends before ``L``, else the loaded ``x`` (``PARTIAL`` only)."""
    if PARTIAL:
        whole = (l0 + (tl.arange(0, U) // RHT) * RHT + RHT) <= L
        rotated = tl.where(whole[:, None], rotated, x)
    return rotated


@triton.jit
def _block_amax(x, U: tl.constexpr, B: tl.constexpr, BLOCK: tl.constexpr, BLOCK_2D: tl.constexpr):
    """Per-block max |x| as FP32 ``(U // BLOCK, B)``; NaN if the block holds a NaN, Inf an Inf."""
    NB: tl.constexpr = U // BLOCK
    amax_bits = tl.max(tl.reshape(abs_bits(x), (NB, BLOCK, B)), axis=1)
    if BLOCK_2D:  # 16 x 16 tiles: also the max over 16 consecutive o
        tiles = tl.max(tl.reshape(amax_bits, (NB, B // 16, 16)), axis=2)
        amax_bits = tl.reshape(tl.broadcast_to(tiles[:, :, None], (NB, B // 16, 16)), (NB, B))
    return amax_bits.to(tl.float32, bitcast=True)


@triton.jit
def _e4m3_encode(g, Q_MAX: tl.constexpr, ASM: tl.constexpr):
    """Tensor encode scale ``enc`` from the global amax (numerics.scales.e4m3_tensor_encode)."""
    enc = tl.minimum(div_rn(tl.full(g.shape, _E4M3_MAX * Q_MAX, tl.float32), g, ASM), _FP32_MAX)
    return tl.where(g == 0.0, 1.0, enc)


@triton.jit
def _scales(amax, g, GRID: tl.constexpr, SCALE: tl.constexpr, Q_MAX: tl.constexpr, E8M0_FLOOR: tl.constexpr,
            ASM: tl.constexpr):
    """Per block, from its amax (numerics.quantize._scale_blocks): (stored scale, lift, multiplier, ok,
    decoded scale, level limit). The scaled block is ``(x * lift) * multiplier``, clamped to +-limit;
    ``ok`` False: its values become 0.

    FP32: stored ``s = amax / q``, lift and multiplier from numerics.scales.fp32_encode. E4M3: the stored
    byte, multiplier ``1 / (s * tensor_scale)``. E8M0: the stored biased exponent, multiplier ``2**-e``.
    The limit is numerics.quantize._level_limit's (the largest level that dequantizes to a finite value)
    in closed form: q_max for FP32 (``q * (amax / q)`` never overflows); for E4M3 the level below q_max when
    ``(q * s) * tensor_scale`` overflows (a lower level never does: ``s <= 448``); for E8M0 3 when
    ``e = 126`` (``4 * 2**126`` overflows; e = 127 cannot occur: UP gives ``e <= 126``, FLOOR ``e <= 125``).
    """
    finite = is_finite(amax)
    one = tl.full(amax.shape, 1.0, tl.float32)
    q_max = tl.full(amax.shape, Q_MAX, tl.float32)
    if SCALE == 0:
        s = div_rn(amax, q_max, ASM)
        s = tl.where(finite, s, float("nan"))
        ok = finite & (s != 0.0)
        safe = tl.where(ok, s, 1.0)
        lift = tl.where(safe < _TINY, _LIFT, 1.0)
        return s, lift, div_rn(one, safe * lift, ASM), ok, s, q_max
    elif SCALE == 1:
        enc = _e4m3_encode(g, Q_MAX, ASM)
        tensor_scale = div_rn(one, enc, ASM)
        inv_q = div_rn(one, tl.full(amax.shape, Q_MAX, tl.float32), ASM)
        s = tl.minimum(tl.minimum(amax * (enc * inv_q), _FP32_MAX), _E4M3_MAX)
        ok = finite & is_finite(g)
        byte, value = e4m3_round(tl.where(ok, s, 0.0))
        byte = tl.where(ok, byte, 0x7F)
        mult = tl.minimum(div_rn(one, value * tensor_scale, ASM), _FP32_MAX)
        top = (q_max * value) * tensor_scale
        below = 6.0 if GRID == 0 else 4.0  # the level under q_max: INT4 6, E2M1 4
        limit = tl.where(is_finite(top), q_max, below)
        return byte, one, mult, ok, tl.where(ok, value, float("nan")), limit
    else:
        safe = tl.where(finite, amax, 0.0)
        if E8M0_FLOOR:
            bits = safe.to(tl.int32, bitcast=True)
            e = tl.where((bits >> 23) > 0, (bits >> 23) - 127, -127) - 2
        else:
            v = div_rn(safe, tl.full(amax.shape, Q_MAX, tl.float32), ASM)
            bits = v.to(tl.int32, bitcast=True)
            expo = bits >> 23
            mant = bits & 0x7FFFFF
            normal = expo - 127 + (mant != 0).to(tl.int32)
            e = tl.where(expo > 0, normal, tl.where(mant > 0x400000, -126, -127))
        e = tl.minimum(tl.maximum(e, -127), 127)
        stored = tl.where(finite, e + 127, 255)
        limit = tl.where(e >= 126, 3.0, q_max)
        return stored, one, pow2(-e), finite, tl.where(finite, pow2(e), float("nan")), limit


@triton.jit
def _scaled_blocks(blocks, amax, lift, mult, ok, limit, SCALE: tl.constexpr, Q_MAX: tl.constexpr, U: tl.constexpr,
                   B: tl.constexpr, SHORTCUT: tl.constexpr):
    """The blocks ``(U // BLOCK, BLOCK, B)`` scaled by :func:`_scales`' lift and multiplier, 0 where not ``ok``,
    clamped to +-limit, as ``(U, B)``: the reference's scaled block (the INT4 grid's; E2M1 clamps ``|y|``).

    With ``SHORTCUT``, FP32 scales (``SCALE == 0``) in a tile whose every block amax is finite and at least
    ``Q_MAX * 2**-64`` take ``blocks * mult`` alone, the same bits: there every ``s = amax / q`` is a normal
    number at least TINY, so the lift is 1 (``x * 1.0`` is ``x``), every block is ``ok``, and ``|y|`` stays
    below ``q (1 + 2**-21)``, which rounds to the level of ``q`` itself in either rounding (docs/numerics.md,
    Scales). A tile with a tiny, zero or non-finite block, and every two-level or power-of-two scale, takes
    the whole computation."""
    if SCALE == 0 and SHORTCUT:
        plain = (amax >= Q_MAX * _TINY) & (amax < float("inf"))  # False for NaN
        if tl.min(tl.min(plain.to(tl.int32), axis=1), axis=0) == 1:
            y = blocks * mult[:, None, :]
        else:
            y = _clamped_blocks(blocks, lift, mult, ok, limit)
    else:
        y = _clamped_blocks(blocks, lift, mult, ok, limit)
    return tl.reshape(y, (U, B))


@triton.jit
def _clamped_blocks(blocks, lift, mult, ok, limit):
    """``(blocks * lift) * mult``, 0 where not ``ok``, clamped to +-limit (symmetric: the sign of a clamped
    value is the sign of the unclamped one, its magnitude ``min(|y|, limit)``)."""
    y = _unclamped_blocks(blocks, lift, mult, ok)
    return tl.minimum(tl.maximum(y, -limit[:, None, :]), limit[:, None, :])


@triton.jit
def _unclamped_blocks(blocks, lift, mult, ok):
    """``(blocks * lift) * mult``, 0 where not ``ok`` (the E2M1 grid clamps ``|y|`` itself)."""
    y = (blocks * lift[:, None, :]) * mult[:, None, :]
    return tl.where(ok[:, None, :], y, 0.0)


@triton.jit
def _e2m1_nearest(a):
    """The E2M1 level nearest to ``a = |y|``, ties to the even index (numerics.grids), as (int32 index 0..7,
    FP32 level value). (INT4 rounds in the kernel itself, through the 1.5 * 2**23 constant.)

    E2M1 is a float with one mantissa bit: below 1 (levels 0, .5, 1) round to a multiple of 0.5 with the
    2**22 constant (its ulp is 0.5; ties to the even multiple), whose low bits are then the index itself (the
    number of halves); from 1 up (1, 1.5, 2, 3, 4, 6) round the FP32 pattern to one mantissa bit, ties to
    even, whose exponent and mantissa bit give the index (1.0 = 0x3F800000: 254 - 252 = 2). Both are the
    reference's ties-to-even-index (a <= 6 after the clamp, finite), in a third of the instructions of the
    seven comparisons. The rounded numbers are the levels themselves, so a launch that writes values takes
    them as they are (no decoding of the index)."""
    lifted = a + 4194304.0  # 2**22 + round(2a) / 2, exact
    bits = a.to(tl.int32, bitcast=True)
    one_bit = (bits + 0x1FFFFF + ((bits >> 22) & 1)) & -4194304  # -4194304 == 0xFFC00000
    small = a < 1.0
    level = tl.where(small, lifted.to(tl.int32, bitcast=True) - 0x4A800000, (one_bit >> 22) - 252)
    return level, tl.where(small, lifted - 4194304.0, one_bit.to(tl.float32, bitcast=True))


@triton.jit
def _stochastic_offset(rand):
    """``v = (2r + 1) / 512 - 1/2`` for 8 random bits ``r`` (numerics.grids.stochastic_offset), exact, from
    the bit pattern ``1 + r / 256`` (no integer-to-float conversion)."""
    return ((rand << 15) | 0x3F800000).to(tl.float32, bitcast=True) - 1.498046875


@triton.jit
def _level_stochastic(a, rand, GRID: tl.constexpr):
    """Level index after stochastic rounding of ``a = |y|`` with 8 random bits (numerics.grids.round_stochastic).
    (The quantize kernel rounds INT4 on the signed value itself, as in the nearest case.)"""
    if GRID == 0:
        return ((a + _stochastic_offset(rand)) + _RNE_MAGIC).to(tl.int32, bitcast=True) - 0x4B400000
    else:
        level, _ = _e2m1_stochastic(a, rand)
        return level


@triton.jit
def _e2m1_stochastic(a, rand):
    """E2M1 stochastic rounding of ``a = |y|`` with 8 random bits, as (level index, FP32 level value).

    Levels 0, .5, 1 below 1 sit at 1, 1.5, 2 in the pattern of a + 1; from 1 up, one mantissa bit is kept.
    (2r + 1) << 13 added below that bit carries into it with the probability of rounding up. The kept
    pattern is the level (less the lift of 1 below 1), so values need no decoding of the index."""
    big = a >= 1.0
    lifted = tl.where(big, a, a + 1.0).to(tl.int32, bitcast=True)
    kept = (lifted + ((rand << 14) | 0x2000)) & -4194304  # -4194304 == 0xFFC00000
    value = kept.to(tl.float32, bitcast=True)
    return (kept >> 22) - tl.where(big, 252, 254), tl.where(big, value, value - 1.0)


@triton.jit
def _philox_words(seed, counter):
    """The four 32-bit words of ``philox4x32(seed, (lo32(counter), hi32(counter), 0, 0))``."""
    zero = tl.zeros(counter.shape, tl.uint32)
    return tl.philox(seed, (counter & 0xFFFFFFFF).to(tl.uint32), (counter >> 32).to(tl.uint32), zero, zero)


@triton.jit
def _bytes(w):
    """The four bytes of uint32 words, low byte first, as int32."""
    return ((w & 0xFF).to(tl.int32), ((w >> 8) & 0xFF).to(tl.int32), ((w >> 16) & 0xFF).to(tl.int32),
            (w >> 24).to(tl.int32))


@triton.jit
def _word_bytes(w):
    """``(..., 2, 2)``: byte ``k`` of ``w`` at ``[..., k % 2, k // 2]`` (a join adds its axis last)."""
    b0, b1, b2, b3 = _bytes(w)
    return tl.join(tl.join(b0, b1), tl.join(b2, b3))


@triton.jit
def _random_bits(seed_ptr, offset, flat, U: tl.constexpr, B: tl.constexpr, GROUPED: tl.constexpr,
                 SELECT: tl.constexpr):
    """8 random bits per element: byte ``n % 4`` of word ``(n % 16) // 4`` of ``philox(seed, offset + n // 16)``
    for each element's index ``n`` in the axis-last order (numerics.rounding.element_bits), ``flat``.

    ``GROUPED`` (L % 16 == 0): the sixteen elements of a call are sixteen consecutive rows of the tile, along
    the quantized axis, in one thread in either orientation, so each call is made once. ``SELECT``: each
    element picks its word and byte by its row (no data movement); else the sixteen bytes are joined and
    permuted into rows, which column-wise costs a shared-memory round trip with two barriers per group.
    On an H200 (``quantize_duals_*`` logs in benchmarks/results) SELECT made INT4's one-read dual launch
    8-9% faster and the E2M1 grid's 2-6% slower: the INT4 grid selects, E2M1 joins."""
    seed = tl.load(seed_ptr)
    if not GROUPED:
        r0, r1, r2, r3 = _philox_words(seed, offset + (flat >> 4))
        w = (flat >> 2) & 3
        word = tl.where(w == 0, r0, tl.where(w == 1, r1, tl.where(w == 2, r2, r3)))
        bits = ((word >> ((flat & 3) * 8).to(tl.uint32)) & 0xFF).to(tl.int32)
    else:
        groups = tl.reshape(tl.permute(tl.reshape(flat, (U // 16, 16, B)), (0, 2, 1)), (U // 16, B, 2, 2, 2, 2))
        firsts, _ = tl.split(groups)
        firsts, _ = tl.split(firsts)
        firsts, _ = tl.split(firsts)
        firsts, _ = tl.split(firsts)
        r0, r1, r2, r3 = _philox_words(seed, offset + (firsts >> 4))
        if SELECT:
            # each group's four words over its sixteen rows, then per row its word and its byte: each register
            # of a thread holds one row (a thread holds whole groups in either orientation), so the row is a
            # constant and the selects fold away
            row = tl.arange(0, U)[:, None] % 16
            word = tl.where(row < 8, tl.where(row < 4, _over_rows(r0, U, B), _over_rows(r1, U, B)),
                            tl.where(row < 12, _over_rows(r2, U, B), _over_rows(r3, U, B)))
            bits = ((word >> ((row & 3) * 8).to(tl.uint32)) & 0xFF).to(tl.int32)
        else:
            # [.., d, c, b, a] = byte 2c + d of word 2a + b, element 8a + 4b + 2c + d of the sixteen: reversed
            words = tl.join(tl.join(_word_bytes(r0), _word_bytes(r1)), tl.join(_word_bytes(r2), _word_bytes(r3)))
            words = tl.permute(words, (0, 1, 5, 4, 3, 2))
            bits = tl.reshape(tl.permute(tl.reshape(words, (U // 16, B, 16)), (0, 2, 1)), (U, B))
    return bits


@triton.jit
def _over_rows(w, U: tl.constexpr, B: tl.constexpr):
    """``(U // 16, B)`` as ``(U, B)``: row ``i`` takes row ``i // 16``."""
    if U == 16:
        out = tl.broadcast_to(w, (U, B))
    else:
        out = tl.reshape(tl.broadcast_to(w[:, None, :], (U // 16, 16, B)), (U, B))
    return out


@triton.jit
def _pack(nib, U: tl.constexpr, B: tl.constexpr):
    """Two nibbles per byte along the rows: row 2j in the low nibble (numerics.packing)."""
    lo, hi = tl.split(tl.permute(tl.reshape(nib, (U // 2, 2, B)), (0, 2, 1)))
    return (lo | (hi << 4)).to(tl.uint8)


# ---- maxima ---------------------------------------------------------------------------------------------

@triton.jit
def _max_nan(a, b):
    """Float maximum that propagates NaN (``max.NaN.f32``; ``tl.maximum``'s default ignores NaN on GPUs)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _abs_max_nan(x):
    """Per column of the 2-D tile ``x``: the maximum ``|x|`` over its rows, NaN if one is NaN."""
    return tl.reduce(tl.abs(x), 0, _max_nan)


@triton.jit
def _below_guard(maxima):
    """True (a scalar) where the NaN-propagating maxima of rotated (or unrotated) magnitudes are all below
    2**59: no NaN, no Inf, and no RHT group of R <= 256 elements that reached 2**64 (the rotation keeps a
    group's 2-norm, so ``max |x| <= sqrt(R) max |RHT(x)|``)."""
    return tl.reduce(maxima, 0, _max_nan) < _GUARD_AFTER


@triton.jit
def _all_small(seen):
    """True (a scalar) where the per-column maxima ``seen`` (:func:`_abs_max_nan`) are all below 2**64: no
    NaN, no Inf, and no RHT group that needs the big-group guard."""
    return tl.reduce(seen, 0, _max_nan) < _BIG_UP


@triton.jit
def _finite_bits(x):
    """``|x|`` as int32 FP32 bits, NaN and +-Inf as 0 (what a maximum of finite magnitudes takes)."""
    bits = abs_bits(x)
    return tl.where(bits < 0x7F800000, bits, 0)
