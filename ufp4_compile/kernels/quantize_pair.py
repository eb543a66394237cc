"""Two quantizations in one launch: what the lowering pairs (docs/kernels.md, "Two launches in one").

- :func:`_quantize_pair_kernel` runs two jobs' programs side by side in one grid, each on its own input with
  its own RHT, seed, axis and outputs (one format): X's and W's row-wise quantizations for Fprop, their
  column-wise ones; one tensor's two axes where nothing better pairs.
- :func:`_quantize_dual_kernel` takes one 2-D tensor's row-wise and column-wise quantizations from one read of
  it (X's, W's and dY's two, where the lowering pairs them so): each program quantizes its U x B tile's row
  segments, then its columns (the second load of the tile hits the cache); U, the span of a block and an RHT
  group, is 16 (UFP4, NVFP4) or 32 (MXFP4).
- :func:`_quantize_two_duals_kernel` runs two tensors' dual grids in one launch (X's and W's in a linear
  layer's forward); :func:`_quantize_dual_single_kernel` a dual grid and a second tensor's single launch grid
  (NVFP4's X and W: W's 16 x 16 blocks take one launch for both its quantizations);
  :func:`_quantize_dual_dequantize_kernel` a dual grid and two dequantize grids (dY's two and the saved codes of
  W and X in its backward).

Each runs each element through the code of its own single launch (``kernels.quantize._quantize_at``,
``kernels.dequantize._dequantize_tile``), so the bits are the single launches'. Below the kernels: which
launch two quantizations can share (the refusals), and its grid, tile, constants and pointers, as the lowering
and the eager launchers (``kernels.quantize_pair_launchers``) build it.
"""

from __future__ import annotations

import dataclasses

import triton
import triton.language as tl

from ufp4_compile.kernels.common import SCALE_IDS, format_constants
from ufp4_compile.kernels.dequantize import _dequantize_tile
from ufp4_compile.kernels.dequantize import pair_launch as dequantize_pair_launch
from ufp4_compile.kernels.quantize import (PLAN_SCALARS, RHT_KEYS, ROW_SEGMENTS, LaunchPlan, _program_at,
                                           _quantize_at, one_read_refusal, output_pointers)
from ufp4_compile.numerics.formats import OperandFormat, ScaleFormat

# ---- kernels -------------------------------------------------------------------------------------------

@triton.jit
def _quantize_pair_kernel(a_x_ptr, b_x_ptr, a_seed_ptr, b_seed_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key,
                          a_codes_ptr, a_scales_ptr, a_values_ptr, a_ts_ptr, a_O, a_L, a_s_page, a_s_o, a_s_l,
                          a_offset, a_g0, a_g1, a_g2,
                          b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr, b_O, b_L, b_s_page, b_s_o, b_s_l,
                          b_offset, b_g0, b_g1, a_shift_ptr, b_shift_ptr, a_shift_period, b_shift_period,
                          GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_2D: tl.constexpr,
                          STOCHASTIC: tl.constexpr, E8M0_FLOOR: tl.constexpr, Q_MAX: tl.constexpr, ASM: tl.constexpr,
                          A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                          A_SR_GROUPED: tl.constexpr, A_ROWWISE: tl.constexpr, A_COLS: tl.constexpr,
                          A_WRITE_CODES: tl.constexpr, A_WRITE_VALUES: tl.constexpr, A_U: tl.constexpr,
                          A_B: tl.constexpr, A_PARTIAL: tl.constexpr,
                          B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                          B_SR_GROUPED: tl.constexpr, B_ROWWISE: tl.constexpr, B_COLS: tl.constexpr,
                          B_WRITE_CODES: tl.constexpr, B_WRITE_VALUES: tl.constexpr, B_U: tl.constexpr,
                          B_B: tl.constexpr, B_PARTIAL: tl.constexpr, A_SHIFT: tl.constexpr,
                          B_SHIFT: tl.constexpr, A_ROUND: tl.constexpr = False, B_ROUND: tl.constexpr = False):
    """Two quantizations in one launch (one format; each its own input, RHT, seeds, axis and outputs):
    the first ``a_g0 * a_g1 * a_g2`` programs are job a's grid, the rest job b's, each in the grid order of
    its own launch. A launch fewer per pair: the default mode of a training step is bound by the host's time
    per launch. Each program runs exactly the tile it runs in its own launch, so the bits are. The two jobs
    share one register allocation: two row-wise (or two column-wise) jobs keep a single launch's occupancy,
    a row-wise and a column-wise one take the larger tile's registers for both. ``A_ROUND``, ``B_ROUND``: the
    job's input is FP32, rounded to bf16 first (``quantize_tile._loaded``)."""
    pid = tl.program_id(0)
    n_a = a_g0 * a_g1 * a_g2
    if pid < n_a:
        _program_at(a_x_ptr, a_codes_ptr, a_scales_ptr, a_values_ptr, a_ts_ptr, a_gamax_ptr, a_seed_ptr, a_O, a_L,
                    a_s_page, a_s_o, a_s_l, a_offset, a_rht_key, pid % a_g0, (pid // a_g0) % a_g1,
                    pid // (a_g0 * a_g1), GRID, SCALE, BLOCK, BLOCK_2D, STOCHASTIC, A_SR_GROUPED, E8M0_FLOOR, Q_MAX,
                    A_RHT, A_INV_SQRT, A_SIGN_MASK, A_ROWWISE, A_COLS, A_WRITE_CODES, A_WRITE_VALUES, ASM, A_U, A_B,
                    A_PARTIAL, a_shift_ptr, a_shift_period, A_SHIFT, A_ROUND)
    else:
        q = pid - n_a
        _program_at(b_x_ptr, b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr, b_gamax_ptr, b_seed_ptr, b_O, b_L,
                    b_s_page, b_s_o, b_s_l, b_offset, b_rht_key, q % b_g0, (q // b_g0) % b_g1, q // (b_g0 * b_g1),
                    GRID, SCALE, BLOCK, BLOCK_2D, STOCHASTIC, B_SR_GROUPED, E8M0_FLOOR, Q_MAX, B_RHT, B_INV_SQRT,
                    B_SIGN_MASK, B_ROWWISE, B_COLS, B_WRITE_CODES, B_WRITE_VALUES, ASM, B_U, B_B, B_PARTIAL,
                    b_shift_ptr, b_shift_period, B_SHIFT, B_ROUND)


@triton.jit
def _dual_at(x_ptr, a_seed_ptr, b_seed_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key,
             a_codes_ptr, a_scales_ptr, a_values_ptr, a_ts_ptr, b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr,
             M, N, a_offset, b_offset, pid_n, pid_m,
             GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, STOCHASTIC: tl.constexpr,
             E8M0_FLOOR: tl.constexpr, Q_MAX: tl.constexpr, ASM: tl.constexpr,
             A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
             A_WRITE_CODES: tl.constexpr, A_WRITE_VALUES: tl.constexpr,
             B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
             B_WRITE_CODES: tl.constexpr, B_WRITE_VALUES: tl.constexpr, COLS: tl.constexpr,
             B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr, a_shift_ptr, A_SHIFT: tl.constexpr,
             ROUND: tl.constexpr = False):
    """The program at ``(pid_n, pid_m)`` of :func:`_quantize_dual_kernel`'s grid over ``x (M, N)``: rows
    ``U pid_m ..`` (``U``: both jobs' block and RHT group span, 16 or 32) x columns ``B pid_n ..``.
    ``A_SHIFT``: the row-wise job quantizes ``x - shift`` (``a_shift_ptr``, one FP32 value per column: a mean
    split's residual, as the single launch subtracts it); the column-wise job reads ``x`` as it is. ``ROUND``:
    ``x`` is FP32, both jobs round it to bf16 first (``quantize_tile._loaded``)."""
    zero = pid_m * 0  # the page (a tensor: the tile code converts it)
    first = (pid_n == 0) & (pid_m == 0)
    SEGS: tl.constexpr = B // U  # row segments per tile row
    segments = tl.cast(M, tl.int64) * (N // U)
    for h in tl.static_range(B // ROW_B):
        j = h * ROW_B + tl.arange(0, ROW_B)  # segment j of the tile: tile row j // SEGS, segment j % SEGS of it
        seg = pid_n * SEGS + j % SEGS
        rows = tl.where(seg < N // U, (pid_m * U + j // SEGS).to(tl.int64) * (N // U) + seg, segments)
        _quantize_at(x_ptr, a_codes_ptr, a_scales_ptr, a_values_ptr, a_ts_ptr, a_gamax_ptr, a_seed_ptr, segments,
                     U, 0, U, 1, a_offset, a_rht_key, 0, 0, rows, zero, first & (zero + h == 0), GRID, SCALE,
                     BLOCK, False, STOCHASTIC, True, E8M0_FLOOR, Q_MAX, A_RHT, A_INV_SQRT, A_SIGN_MASK, True, COLS,
                     A_WRITE_CODES, A_WRITE_VALUES, ASM, U, ROW_B, False, a_shift_ptr, N // U, A_SHIFT,
                     ROUND=ROUND)
    _quantize_at(x_ptr, b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr, b_gamax_ptr, b_seed_ptr, N, M, 0, 1, N,
                 b_offset, b_rht_key, pid_m * U, pid_n * B, pid_n * B + tl.arange(0, B), zero, first, GRID, SCALE,
                 BLOCK, False, STOCHASTIC, True, E8M0_FLOOR, Q_MAX, B_RHT, B_INV_SQRT, B_SIGN_MASK, False, COLS,
                 B_WRITE_CODES, B_WRITE_VALUES, ASM, U, B, False, ROUND=ROUND)


@triton.jit
def _quantize_dual_kernel(a_x_ptr, b_x_ptr, a_seed_ptr, b_seed_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key,
                          a_codes_ptr, a_scales_ptr, a_values_ptr, a_ts_ptr, b_codes_ptr, b_scales_ptr, b_values_ptr,
                          b_ts_ptr, M, N, a_offset, b_offset,
                          GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_2D: tl.constexpr,
                          STOCHASTIC: tl.constexpr, E8M0_FLOOR: tl.constexpr, Q_MAX: tl.constexpr, ASM: tl.constexpr,
                          A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                          A_WRITE_CODES: tl.constexpr, A_WRITE_VALUES: tl.constexpr,
                          B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                          B_WRITE_CODES: tl.constexpr, B_WRITE_VALUES: tl.constexpr, COLS: tl.constexpr,
                          B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr, a_shift_ptr=None,
                          A_SHIFT: tl.constexpr = False, A_ROUND: tl.constexpr = False,
                          B_ROUND: tl.constexpr = False):
    """One 2-D tensor ``x (M, N)``'s row-wise quantization (job a, of ``x - shift`` where ``A_SHIFT``) and
    column-wise one (job b), each with its own RHT, from one read of it, in the column-wise launch's grid
    ``(cdiv(N, B), M // U)``. A program takes rows ``U pid_m ..`` x columns ``B pid_n ..`` (``U``: the jobs'
    block and RHT group span, 16 or 32): first job a on the tile's ``U B / U`` row segments of U, as the folded
    row-wise launch holds them, ``ROW_B`` segments at a time; then job b on the column-wise launch's tile,
    whose load finds the tile in the cache. Each element goes through the code of its own
    launch: the bits are the two single launches'. The arguments are :func:`_quantize_pair_kernel`'s
    (``b_x_ptr`` is ``a_x_ptr``) with ``M, N`` for the sizes; a launcher whose first
    job is the column-wise one passes each job's arguments under the other's prefix (``PairLaunch.prefixes``).
    ``A_ROUND`` (``B_ROUND``, the same tensor's): ``x`` is FP32, rounded to bf16 first."""
    _dual_at(a_x_ptr, a_seed_ptr, b_seed_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key, a_codes_ptr,
             a_scales_ptr, a_values_ptr, a_ts_ptr, b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr, M, N, a_offset,
             b_offset, tl.program_id(0), tl.program_id(1), GRID, SCALE, BLOCK, STOCHASTIC, E8M0_FLOOR, Q_MAX, ASM,
             A_RHT, A_INV_SQRT, A_SIGN_MASK, A_WRITE_CODES, A_WRITE_VALUES, B_RHT, B_INV_SQRT, B_SIGN_MASK,
             B_WRITE_CODES, B_WRITE_VALUES, COLS, B, ROW_B, U, a_shift_ptr, A_SHIFT, A_ROUND or B_ROUND)


@triton.jit
def _quantize_two_duals_kernel(a_x_ptr, c_x_ptr, a_seed_ptr, b_seed_ptr, c_seed_ptr, d_seed_ptr,
                               a_gamax_ptr, b_gamax_ptr, c_gamax_ptr, d_gamax_ptr,
                               a_rht_key, b_rht_key, c_rht_key, d_rht_key,
                               a_codes_ptr, a_scales_ptr, a_values_ptr, a_ts_ptr,
                               b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr,
                               c_codes_ptr, c_scales_ptr, c_values_ptr, c_ts_ptr,
                               d_codes_ptr, d_scales_ptr, d_values_ptr, d_ts_ptr,
                               M, N, P, Q, a_offset, b_offset, c_offset, d_offset, n_first, g_first, g_second,
                               GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr,
                               BLOCK_2D: tl.constexpr, STOCHASTIC: tl.constexpr, E8M0_FLOOR: tl.constexpr,
                               Q_MAX: tl.constexpr, ASM: tl.constexpr,
                               A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                               A_WRITE_CODES: tl.constexpr, A_WRITE_VALUES: tl.constexpr,
                               B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                               B_WRITE_CODES: tl.constexpr, B_WRITE_VALUES: tl.constexpr,
                               C_RHT: tl.constexpr, C_INV_SQRT: tl.constexpr, C_SIGN_MASK: tl.constexpr,
                               C_WRITE_CODES: tl.constexpr, C_WRITE_VALUES: tl.constexpr,
                               D_RHT: tl.constexpr, D_INV_SQRT: tl.constexpr, D_SIGN_MASK: tl.constexpr,
                               D_WRITE_CODES: tl.constexpr, D_WRITE_VALUES: tl.constexpr,
                               COLS: tl.constexpr, B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr,
                               a_shift_ptr=None, c_shift_ptr=None, A_SHIFT: tl.constexpr = False,
                               C_SHIFT: tl.constexpr = False, A_ROUND: tl.constexpr = False,
                               C_ROUND: tl.constexpr = False):
    """Two tensors' dual launches in one (X's and W's in the forward, one format, one tile; a row-wise job
    of either may take a shift, as in :func:`_quantize_dual_kernel`): the first
    ``n_first = g_first * (M // U)`` programs are :func:`_quantize_dual_kernel`'s grid over ``x (M, N)``
    (jobs a row-wise, b column-wise), the rest its grid over ``w (P, Q)`` (jobs c row-wise, d column-wise),
    each program exactly the tile it runs in its own launch, so the bits are. A launch fewer per pair of
    duals: the default mode of a training step waits on the host's time per launch. ``A_ROUND``, ``C_ROUND``:
    that tensor is FP32, rounded to bf16 first (W's FP32 master copy in place of its bf16 cast)."""
    pid = tl.program_id(0)
    if pid < n_first:
        _dual_at(a_x_ptr, a_seed_ptr, b_seed_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key, a_codes_ptr,
                 a_scales_ptr, a_values_ptr, a_ts_ptr, b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr, M, N,
                 a_offset, b_offset, pid % g_first, pid // g_first, GRID, SCALE, BLOCK, STOCHASTIC, E8M0_FLOOR,
                 Q_MAX, ASM, A_RHT, A_INV_SQRT, A_SIGN_MASK, A_WRITE_CODES, A_WRITE_VALUES, B_RHT, B_INV_SQRT,
                 B_SIGN_MASK, B_WRITE_CODES, B_WRITE_VALUES, COLS, B, ROW_B, U, a_shift_ptr, A_SHIFT, A_ROUND)
    else:
        q = pid - n_first
        _dual_at(c_x_ptr, c_seed_ptr, d_seed_ptr, c_gamax_ptr, d_gamax_ptr, c_rht_key, d_rht_key, c_codes_ptr,
                 c_scales_ptr, c_values_ptr, c_ts_ptr, d_codes_ptr, d_scales_ptr, d_values_ptr, d_ts_ptr, P, Q,
                 c_offset, d_offset, q % g_second, q // g_second, GRID, SCALE, BLOCK, STOCHASTIC, E8M0_FLOOR,
                 Q_MAX, ASM, C_RHT, C_INV_SQRT, C_SIGN_MASK, C_WRITE_CODES, C_WRITE_VALUES, D_RHT, D_INV_SQRT,
                 D_SIGN_MASK, D_WRITE_CODES, D_WRITE_VALUES, COLS, B, ROW_B, U, c_shift_ptr, C_SHIFT, C_ROUND)


@triton.jit
def _quantize_dual_single_kernel(a_x_ptr, c_x_ptr, a_seed_ptr, b_seed_ptr, c_seed_ptr, a_gamax_ptr, b_gamax_ptr,
                                 c_gamax_ptr, a_rht_key, b_rht_key, c_rht_key,
                                 a_codes_ptr, a_scales_ptr, a_values_ptr, a_ts_ptr,
                                 b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr,
                                 c_codes_ptr, c_scales_ptr, c_values_ptr, c_ts_ptr,
                                 M, N, a_offset, b_offset, c_offset, n_first, g_first,
                                 c_O, c_L, c_s_page, c_s_o, c_s_l, c_g0, c_g1,
                                 GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr,
                                 BLOCK_2D: tl.constexpr, STOCHASTIC: tl.constexpr, E8M0_FLOOR: tl.constexpr,
                                 Q_MAX: tl.constexpr, ASM: tl.constexpr,
                                 A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                                 A_WRITE_CODES: tl.constexpr, A_WRITE_VALUES: tl.constexpr,
                                 B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                                 B_WRITE_CODES: tl.constexpr, B_WRITE_VALUES: tl.constexpr,
                                 COLS: tl.constexpr, B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr,
                                 C_BLOCK_2D: tl.constexpr, C_SR_GROUPED: tl.constexpr, C_RHT: tl.constexpr,
                                 C_INV_SQRT: tl.constexpr, C_SIGN_MASK: tl.constexpr, C_ROWWISE: tl.constexpr,
                                 C_COLS: tl.constexpr, C_WRITE_CODES: tl.constexpr, C_WRITE_VALUES: tl.constexpr,
                                 C_U: tl.constexpr, C_B: tl.constexpr, C_PARTIAL: tl.constexpr,
                                 a_shift_ptr=None, A_SHIFT: tl.constexpr = False, A_ROUND: tl.constexpr = False,
                                 C_ROUND: tl.constexpr = False):
    """One tensor's dual launch and a second tensor's single quantize launch in one (a linear layer's forward
    under NVFP4: X's two quantizations, and W's one launch that writes its column-wise codes and its row-wise
    values from 16 x 16 blocks): the first ``n_first = g_first * (M // U)`` programs are
    :func:`_quantize_dual_kernel`'s grid over ``x (M, N)`` (jobs a row-wise, b column-wise), the rest job c's
    own launch grid (``c_g0 x c_g1`` tiles a page; ``kernels.quantize._quantize_kernel``'s programs at the tile
    its plan has, :func:`dual_single_tile`, and ``C_BLOCK_2D``), each program exactly the tile it runs in its own
    launch of that plan, so the bits are (a quantize tile changes no bit). A launch fewer per linear layer's
    forward: the default mode of a training step waits on the host's time per launch. ``A_ROUND``,
    ``C_ROUND``: that tensor is FP32, rounded to bf16 first."""
    pid = tl.program_id(0)
    if pid < n_first:
        _dual_at(a_x_ptr, a_seed_ptr, b_seed_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key, a_codes_ptr,
                 a_scales_ptr, a_values_ptr, a_ts_ptr, b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr, M, N,
                 a_offset, b_offset, pid % g_first, pid // g_first, GRID, SCALE, BLOCK, STOCHASTIC, E8M0_FLOOR,
                 Q_MAX, ASM, A_RHT, A_INV_SQRT, A_SIGN_MASK, A_WRITE_CODES, A_WRITE_VALUES, B_RHT, B_INV_SQRT,
                 B_SIGN_MASK, B_WRITE_CODES, B_WRITE_VALUES, COLS, B, ROW_B, U, a_shift_ptr, A_SHIFT, A_ROUND)
    else:
        q = pid - n_first
        _program_at(c_x_ptr, c_codes_ptr, c_scales_ptr, c_values_ptr, c_ts_ptr, c_gamax_ptr, c_seed_ptr, c_O, c_L,
                    c_s_page, c_s_o, c_s_l, c_offset, c_rht_key, q % c_g0, (q // c_g0) % c_g1, q // (c_g0 * c_g1),
                    GRID, SCALE, BLOCK, C_BLOCK_2D, STOCHASTIC, C_SR_GROUPED, E8M0_FLOOR, Q_MAX, C_RHT, C_INV_SQRT,
                    C_SIGN_MASK, C_ROWWISE, C_COLS, C_WRITE_CODES, C_WRITE_VALUES, ASM, C_U, C_B, C_PARTIAL,
                    ROUND=C_ROUND)


@triton.jit
def _quantize_dual_dequantize_kernel(a_x_ptr, a_seed_ptr, b_seed_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key,
                                     a_codes_ptr, a_scales_ptr, a_values_ptr, a_ts_ptr,
                                     b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr,
                                     M, N, a_offset, b_offset, n_dual, g_dual,
                                     c_codes_ptr, c_scales_ptr, c_ts_ptr, c_out_ptr, c_O, c_L2, c_s_page, c_s_o,
                                     c_s_l, c_ss_page, c_ss_o, c_ss_l, c_g0, c_g1, n_c,
                                     d_codes_ptr, d_scales_ptr, d_ts_ptr, d_out_ptr, d_O, d_L2, d_s_page, d_s_o,
                                     d_s_l, d_ss_page, d_ss_o, d_ss_l, d_g0, d_g1,
                                     GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr,
                                     BLOCK_2D: tl.constexpr, STOCHASTIC: tl.constexpr, E8M0_FLOOR: tl.constexpr,
                                     Q_MAX: tl.constexpr, ASM: tl.constexpr,
                                     A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                                     A_WRITE_CODES: tl.constexpr, A_WRITE_VALUES: tl.constexpr,
                                     B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                                     B_WRITE_CODES: tl.constexpr, B_WRITE_VALUES: tl.constexpr,
                                     COLS: tl.constexpr, B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr,
                                     C_GRID: tl.constexpr, C_SCALE: tl.constexpr, C_BLOCK: tl.constexpr,
                                     C_APPLY_TS: tl.constexpr, C_ROWWISE: tl.constexpr, C_BLOCK_O: tl.constexpr,
                                     C_BLOCK_L2: tl.constexpr,
                                     D_GRID: tl.constexpr, D_SCALE: tl.constexpr, D_BLOCK: tl.constexpr,
                                     D_APPLY_TS: tl.constexpr, D_ROWWISE: tl.constexpr, D_BLOCK_O: tl.constexpr,
                                     D_BLOCK_L2: tl.constexpr, a_shift_ptr=None, A_SHIFT: tl.constexpr = False,
                                     A_ROUND: tl.constexpr = False):
    """One tensor's dual launch and two dequantizations in one (a linear layer's backward: dY's row-wise (less
    a shift where ``A_SHIFT``, as in :func:`_quantize_dual_kernel`) and column-wise quantizations, and the
    dequantizations of the saved codes of W and X beside them): the first
    ``n_dual = g_dual * (M // U)`` programs are :func:`_quantize_dual_kernel`'s grid over ``x (M, N)``, the
    next ``n_c`` job c's dequantize grid (``kernels.dequantize._dequantize_tile``, ``c_g0 x c_g1`` tiles a
    page), the rest job d's. Each quantize program is exactly the tile it runs in its own launch, and each
    dequantized value is decoded alone, so the bits are the single launches'. A launch fewer per linear
    layer's backward."""
    pid = tl.program_id(0)
    if pid < n_dual:
        _dual_at(a_x_ptr, a_seed_ptr, b_seed_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key, a_codes_ptr,
                 a_scales_ptr, a_values_ptr, a_ts_ptr, b_codes_ptr, b_scales_ptr, b_values_ptr, b_ts_ptr, M, N,
                 a_offset, b_offset, pid % g_dual, pid // g_dual, GRID, SCALE, BLOCK, STOCHASTIC, E8M0_FLOOR,
                 Q_MAX, ASM, A_RHT, A_INV_SQRT, A_SIGN_MASK, A_WRITE_CODES, A_WRITE_VALUES, B_RHT, B_INV_SQRT,
                 B_SIGN_MASK, B_WRITE_CODES, B_WRITE_VALUES, COLS, B, ROW_B, U, a_shift_ptr, A_SHIFT, A_ROUND)
    elif pid < n_dual + n_c:
        q = pid - n_dual
        _dequantize_tile(c_codes_ptr, c_scales_ptr, c_ts_ptr, c_out_ptr, c_O, c_L2, c_s_page, c_s_o, c_s_l,
                         c_ss_page, c_ss_o, c_ss_l, q % c_g0, (q // c_g0) % c_g1, q // (c_g0 * c_g1),
                         C_GRID, C_SCALE, C_BLOCK, C_APPLY_TS, C_ROWWISE, C_BLOCK_O, C_BLOCK_L2)
    else:
        q = pid - n_dual - n_c
        _dequantize_tile(d_codes_ptr, d_scales_ptr, d_ts_ptr, d_out_ptr, d_O, d_L2, d_s_page, d_s_o, d_s_l,
                         d_ss_page, d_ss_o, d_ss_l, q % d_g0, (q // d_g0) % d_g1, q // (d_g0 * d_g1),
                         D_GRID, D_SCALE, D_BLOCK, D_APPLY_TS, D_ROWWISE, D_BLOCK_O, D_BLOCK_L2)


# ---- launches -------------------------------------------------------------------------------------------

_DUAL_OWN = RHT_KEYS + ("WRITE_CODES", "WRITE_VALUES")  # each job's own constexprs in a dual launch (and the
# row-wise job's A_SHIFT)
_DUAL_TILE_KEYS = ("COLS", "B", "ROW_B", "U")

_PAIR_SHARED = ("GRID", "SCALE", "BLOCK", "BLOCK_2D", "STOCHASTIC", "E8M0_FLOOR", "Q_MAX",
                "ASM")  # what the two jobs of a pair launch have in common: the format
_PAIR_OWN = RHT_KEYS + ("SR_GROUPED", "ROWWISE", "COLS", "WRITE_CODES", "WRITE_VALUES", "U", "B", "PARTIAL",
                        "SHIFT")


def _format_refusal(a: LaunchPlan, b: LaunchPlan) -> str | None:
    if a.constexprs.get("TILES", 1) != 1 or b.constexprs.get("TILES", 1) != 1:
        return "several tiles a program (a benchmark config: only the single launch loops over them)"
    differ = [k for k in _PAIR_SHARED if a.constexprs[k] != b.constexprs[k]]
    return f"formats differ ({', '.join(differ)})" if differ else None


def pair_refusal(a: LaunchPlan, b: LaunchPlan) -> str | None:
    """Why two quantize launches cannot share one (:func:`_quantize_pair_kernel`, whose programs run each job's
    own tile at one warp count), or None. Two-level (E4M3) scales pair: each job keeps its own global-amax
    pre-pass (:func:`amax_launches`)."""
    if a.num_warps != b.num_warps:
        return f"their tiles take {a.num_warps} and {b.num_warps} warps"
    return _format_refusal(a, b)


def dual_refusal(shape: tuple, a: LaunchPlan, b: LaunchPlan) -> str | None:
    """Why the two quantizations of one tensor of ``shape`` with plans ``a`` and ``b`` cannot run from one read
    of it (:func:`_quantize_dual_kernel`, at its own tile), or None."""
    refusal = _format_refusal(a, b) or one_read_refusal(shape, a, b)
    if refusal is not None:
        return refusal
    col = b if a.rowwise else a
    if col.constexprs["SHIFT"]:
        return "a column-wise job with a shift (the dual kernel subtracts one from the row-wise job only)"
    if a.constexprs["BLOCK_2D"]:
        return "16 x 16 blocks"
    return None


@dataclasses.dataclass(frozen=True)
class PairLaunch:
    grid: tuple
    num_warps: int
    scalars: dict  # a_* and b_* sizes, strides and grid extents (offsets and rht keys: the caller's)
    constexprs: dict
    kernel: object = None  # _quantize_pair_kernel, or _quantize_dual_kernel for one tensor's two axes
    prefixes: str = "ab"  # the argument prefixes of the first and second job ("ba": the dual kernel's a is row-wise)
    reads_x: str = "ab"  # the prefixes whose x_ptr the kernel reads (a dual launch reads its tensor as a_x_ptr)


# The dual launch's own tile: 64 columns, one warp, two consecutive columns per thread (32 elements per thread
# in either pass). On an H200 (benchmarks/quantize_sweep.py, INT4 RHT-16, 8192 x 1024 and 8192 x 2816) it took
# 0.86-0.91 of the two single launches' time with round to nearest and 0.95-0.98 with stochastic rounding;
# the column-wise launch's tile (256 columns, two warps, four per thread), which it ran at before, took
# 1.04-1.09, and tiles wider than one vector per thread, or one column per thread, took longer still.
DUAL_TILE = {"B": 64, "num_warps": 1, "cols": 2}
# Two-level (E4M3) scales' own: 128 columns over two warps (benchmarks/quantize_sweep.py --only dual,
# quantize_sweep_6923407_nvidia-h200.log: 0.92 of the two single launches' time with stochastic rounding against
# 0.98 at DUAL_TILE, 0.95 either way with round to nearest; in the NVFP4 step, train_step_tiles_af4104c_*, dY's
# dual-dequantize launches 5.67 ms against 6.14 and X's dual launches 2.62 against 2.48). MXFP4's span of 32
# stays at DUAL_TILE's B (32 columns): 64 columns, 3-7% faster in the sweep, made its launches in the step
# 0.8 ms slower (11.24 ms against 10.45).
DUAL_TILE_E4M3 = {"B": 128, "num_warps": 2, "cols": 2}


def dual_tile(plan: LaunchPlan) -> dict:
    """The dual launch's default tile for ``plan``'s format."""
    if plan.constexprs["SCALE"] == SCALE_IDS[ScaleFormat.E4M3]:
        return DUAL_TILE_E4M3
    return DUAL_TILE


def pair_launch(a: LaunchPlan, b: LaunchPlan, dual_shape: tuple | None = None,
                tile: dict | None = None) -> PairLaunch:
    """The one launch of plans ``a`` and ``b`` (``pair_refusal(a, b)`` is None). ``dual_shape``: both quantize
    one tensor of this shape, and ``dual_refusal`` accepts it: the launch reads it once
    (:func:`_quantize_dual_kernel`) at the format's tile (:func:`dual_tile`), or at ``tile``'s ``B``,
    ``num_warps`` and ``cols`` where given (benchmarks)."""
    if dual_shape is not None:
        row, col = (a, b) if a.rowwise else (b, a)
        own = dual_tile(a)
        tile = {**own, **{k: v for k, v in (tile or {}).items() if k in own}}
        u = a.constexprs["U"]  # a span of 32 halves the columns (DUAL_SPANS)
        width = max(u, min(tile["B"] * 16 // u, triton.next_power_of_2(dual_shape[1])))
        constexprs = {k: a.constexprs[k] for k in _PAIR_SHARED}
        constexprs.update(COLS=min(tile["cols"], width), B=width, ROW_B=min(width, ROW_SEGMENTS), U=u)
        for p, plan in (("A", row), ("B", col)):
            constexprs.update({f"{p}_{k}": plan.constexprs[k] for k in _DUAL_OWN})
        constexprs["A_SHIFT"] = row.constexprs["SHIFT"]
        grid = (triton.cdiv(dual_shape[1], width), dual_shape[0] // u, 1)
        return PairLaunch(grid, tile["num_warps"], dict(M=dual_shape[0], N=dual_shape[1]), constexprs,
                          _quantize_dual_kernel, "ab" if a.rowwise else "ba", reads_x="a")
    scalars = {f"{p}_{k}": plan.args[k] for p, plan in (("a", a), ("b", b)) for k in PLAN_SCALARS}
    scalars.update(a_g0=a.grid[0], a_g1=a.grid[1], a_g2=a.grid[2], b_g0=b.grid[0], b_g1=b.grid[1],
                   a_shift_period=a.args["shift_period"], b_shift_period=b.args["shift_period"])
    constexprs = {k: a.constexprs[k] for k in _PAIR_SHARED}
    for p, plan in (("A", a), ("B", b)):
        constexprs.update({f"{p}_{k}": plan.constexprs[k] for k in _PAIR_OWN})
    n = a.grid[0] * a.grid[1] * a.grid[2] + b.grid[0] * b.grid[1] * b.grid[2]
    return PairLaunch((n, 1, 1), a.num_warps, scalars, constexprs, _quantize_pair_kernel)


def two_duals_refusal(first: PairLaunch, second: PairLaunch) -> str | None:
    """Why two tensors' dual launches cannot run as one (:func:`_quantize_two_duals_kernel`), or None."""
    if first.kernel is not _quantize_dual_kernel or second.kernel is not _quantize_dual_kernel:
        return "not two dual launches"
    differ = [k for k in _PAIR_SHARED + _DUAL_TILE_KEYS if first.constexprs[k] != second.constexprs[k]]
    if differ or first.num_warps != second.num_warps:
        return f"their formats or tiles differ ({', '.join(differ) or 'num_warps'})"
    return None


def two_duals_launch(first: PairLaunch, second: PairLaunch) -> PairLaunch:
    """The one launch of two tensors' dual launches (``two_duals_refusal`` is None): ``first``'s jobs under
    the prefixes a (row-wise) and b (column-wise), ``second``'s under c and d; ``prefixes`` maps the four jobs,
    in the order the two dual launches took them, to theirs."""
    constexprs = {k: first.constexprs[k] for k in _PAIR_SHARED + _DUAL_TILE_KEYS}
    for (p, q), launch in ((("A", "A"), first), (("B", "B"), first), (("A", "C"), second), (("B", "D"), second)):
        constexprs.update({f"{q}_{k}": launch.constexprs[f"{p}_{k}"] for k in _DUAL_OWN})
    constexprs.update(A_SHIFT=first.constexprs["A_SHIFT"], C_SHIFT=second.constexprs["A_SHIFT"])
    n_first = first.grid[0] * first.grid[1]
    scalars = dict(M=first.scalars["M"], N=first.scalars["N"], P=second.scalars["M"], Q=second.scalars["N"],
                   n_first=n_first, g_first=first.grid[0], g_second=second.grid[0])
    prefixes = first.prefixes + second.prefixes.translate(str.maketrans("ab", "cd"))
    return PairLaunch((n_first + second.grid[0] * second.grid[1], 1, 1), first.num_warps, scalars, constexprs,
                      _quantize_two_duals_kernel, prefixes, reads_x="ac")


# A single job's own constexprs in a dual-single launch (its tile, its blocks, its axis), under the prefix C_
_SINGLE_OWN = ("BLOCK_2D", "SR_GROUPED") + RHT_KEYS + ("ROWWISE", "COLS", "WRITE_CODES", "WRITE_VALUES", "U", "B",
                                                       "PARTIAL")


def dual_single_refusal(dual: PairLaunch, single: LaunchPlan) -> str | None:
    """Why a dual launch and a second tensor's single quantize launch (``single``, its plan) cannot run as one
    (:func:`_quantize_dual_single_kernel`), or None: the format alike but for the blocks' shape (NVFP4's X in
    1 x 16 blocks, its W in 16 x 16), no shift on the single job."""
    if dual.kernel is not _quantize_dual_kernel:
        return "not a dual launch"
    differ = [k for k in _PAIR_SHARED if k != "BLOCK_2D" and dual.constexprs[k] != single.constexprs[k]]
    if differ:
        return f"formats differ ({', '.join(differ)})"
    if single.constexprs["SHIFT"]:
        return "a single job with a shift"
    return None


def dual_single_tile(dual: PairLaunch) -> dict:
    """The tile of a single job that joins ``dual`` (a ``kernels.quantize.launch_plan`` config): the dual's
    columns, warps and columns per thread, so that a program of either holds as many elements, and for its
    global-amax pre-pass the dual pre-pass's columns (``kernels.prepass.DUAL_AMAX_TILE``), beside which it runs.
    One launch takes one register allocation: at its own tile (256 columns, four per thread) NVFP4's W job made
    the launch slower than the two it replaced (2.69 ms a step for 48 launches against 2.07 on the H200)."""
    from ufp4_compile.kernels.prepass import DUAL_AMAX_TILE

    return {"B": dual.constexprs["B"], "num_warps": dual.num_warps, "cols": dual.constexprs["COLS"],
            "amax_B": DUAL_AMAX_TILE["B"]}


def dual_single_launch(dual: PairLaunch, single: LaunchPlan) -> PairLaunch:
    """The one launch of ``dual`` and a second tensor's ``single`` plan (``dual_single_refusal`` is None; planned
    at :func:`dual_single_tile`): the dual's jobs under its ``prefixes``, the single job under ``c``, at the
    dual's warps."""
    constexprs = dict(dual.constexprs)
    constexprs.update({f"C_{k}": single.constexprs[k] for k in _SINGLE_OWN})
    n_first = dual.grid[0] * dual.grid[1]
    g0, g1, g2 = single.grid
    scalars = dict(M=dual.scalars["M"], N=dual.scalars["N"], n_first=n_first, g_first=dual.grid[0],
                   **{f"c_{k}": single.args[k] for k in PLAN_SCALARS}, c_g0=g0, c_g1=g1)
    return PairLaunch((n_first + g0 * g1 * g2, 1, 1), dual.num_warps, scalars, constexprs,
                      _quantize_dual_single_kernel, dual.prefixes + "c", reads_x="ac")


# The values per program of a dequantize job in a dual launch, per warp: the dual launch's tile holds 32
# elements per thread in either pass, and so does this (the single dequantize launch: 4096 at four warps).
DEQUANTIZE_ELEMENTS_PER_WARP = 1024


def dual_dequantize_elements(dual: PairLaunch) -> int:
    """``kernels.dequantize.launch_plan``'s ``elements`` for a dequantize job in ``dual``'s launch."""
    return DEQUANTIZE_ELEMENTS_PER_WARP * dual.num_warps


def dual_dequantize_refusal(dual: PairLaunch, dequantize_plans) -> str | None:
    """Why a dual launch and the dequantize launch plans ``dequantize_plans`` (``kernels.dequantize.launch_plan``
    at :func:`dual_dequantize_elements`) cannot run as one (:func:`_quantize_dual_dequantize_kernel`), or None."""
    if dual.kernel is not _quantize_dual_kernel:
        return "not a dual launch"
    if len(dequantize_plans) != 2:
        return f"{len(dequantize_plans)} dequantizations (the launch takes two)"
    elements = dual_dequantize_elements(dual)
    if any(kw["BLOCK_O"] * 2 * kw["BLOCK_L2"] > elements for _, _, kw in dequantize_plans):
        return f"a dequantize tile holds more than {elements} values"
    return None


def dual_dequantize_launch(dual: PairLaunch, dequantize_plans) -> PairLaunch:
    """The one launch of ``dual`` and two dequantizations (``dual_dequantize_refusal`` is None): the dual's jobs
    under its ``prefixes``, the dequantizations' arguments under ``c_`` and ``d_`` (``kernels.dequantize``'s
    names: ``codes_ptr``, ``scales_ptr``, ``ts_ptr``, ``out_ptr`` are the caller's)."""
    # the two dequantizations' arguments as their pair launch has them (prefixes a, b), renamed c, d
    (n_deq, _, _), deq_scalars, deq_constexprs = dequantize_pair_launch(*dequantize_plans)
    renamed = lambda d: {{"a": "c", "b": "d", "A": "C", "B": "D"}[k[0]] + k[1:]: v for k, v in d.items()}
    n_dual = dual.grid[0] * dual.grid[1]
    scalars = dict(M=dual.scalars["M"], N=dual.scalars["N"], n_dual=n_dual, g_dual=dual.grid[0],
                   **renamed(deq_scalars))
    (c_grid, _, _), _ = dequantize_plans
    del scalars["c_g2"]  # job c's program count instead: the kernel places job d after it
    scalars["n_c"] = c_grid[0] * c_grid[1] * c_grid[2]
    return PairLaunch((n_dual + n_deq, 1, 1), dual.num_warps, scalars, {**dual.constexprs, **renamed(deq_constexprs)},
                      _quantize_dual_dequantize_kernel, dual.prefixes, reads_x="a")


def one_read_shapes(launch: PairLaunch) -> list:
    """Per two consecutive jobs of ``launch`` (its plans in order), the shape of the one tensor they quantize
    from one read (a dual grid), else None: what :func:`amax_launches` takes as ``dual_shape``."""
    s = launch.scalars
    if launch.kernel is _quantize_two_duals_kernel:
        return [(s["M"], s["N"]), (s["P"], s["Q"])]
    if launch.kernel in (_quantize_dual_kernel, _quantize_dual_dequantize_kernel):
        return [(s["M"], s["N"])]
    if launch.kernel is _quantize_dual_single_kernel:
        return [(s["M"], s["N"]), None]
    return [None]


def same_values_refusal(shape: tuple, fmt: OperandFormat, jobs) -> str | None:
    """Why one tensor's two quantizations ``jobs`` (two ``(axis, rht, dtype)``, ``dtype`` None for codes) cannot
    take one launch that writes the codes and scales of one and the values of the other, or None. They can
    where the two quantize every element to the same value: 16 x 16 blocks (a block's scale is the same along
    either axis), no RHT (a rotation runs along its own axis), round to nearest (stochastic rounding draws in
    its own axis's order), whole 16 x 16 tiles of a 2-D tensor. NVFP4's weights: W's row-wise values for Fprop
    and its column-wise codes for Dgrad, one read and one pre-pass instead of two."""
    if not fmt.block_2d:
        return "not 16 x 16 blocks"
    if format_constants(fmt).stochastic:
        return "stochastic rounding"
    if any(rht for _, rht, _ in jobs):
        return "an RHT"
    if sorted(dtype is None for _, _, dtype in jobs) != [False, True]:
        return "not one job's codes and the other's values"
    if len(shape) != 2 or shape[0] % 16 or shape[1] % 16 or 0 in shape:
        return "not a 2-D tensor of whole 16 x 16 tiles"
    return None


def job_pointers(launch: PairLaunch, prefix: str, plan: LaunchPlan, x, outputs: tuple, gamax, seed,
                 shift=None) -> dict:
    """The pointer arguments of ``launch``'s job under ``prefix`` (tensors or Inductor buffers alike): its input
    ``x``, ``outputs`` (codes, scales, values, tensor scale), the partial maxima ``gamax`` of its pre-pass, its
    ``seed`` and its ``shift`` (where the kernel takes one). None for each one the launch does not use (an
    output it does not write, the gamax of one-level scales, the seed of round to nearest, the input of a job
    whose tensor the kernel reads under another job's name, a missing shift): a constant of the call, one
    pointer fewer for the launcher to resolve."""
    codes, scales, values, ts = outputs
    pointers = {**output_pointers(codes, scales, values, f"{prefix}_"), f"{prefix}_ts_ptr": ts,
                f"{prefix}_gamax_ptr": gamax, f"{prefix}_seed_ptr": seed if plan.constexprs["STOCHASTIC"] else None}
    if f"{prefix}_x_ptr" in launch.kernel.arg_names:
        pointers[f"{prefix}_x_ptr"] = x if prefix in launch.reads_x else None
    if f"{prefix}_shift_ptr" in launch.kernel.arg_names:
        pointers[f"{prefix}_shift_ptr"] = shift if plan.constexprs["SHIFT"] else None
    elif shift is not None:
        raise ValueError(f"{launch.kernel.fn.__name__} takes no shift")
    return pointers
