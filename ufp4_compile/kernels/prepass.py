"""The global-amax pre-passes of two-level (E4M3) scales, two or four jobs a launch (docs/kernels.md, "Two
launches in one").

A two-level quantization needs the global amax of its rotated tensor before its first block is scaled, so each
job reads its tensor once more before its quantize launch (``kernels.quantize._amax_kernel``: ``AMAX_PROGRAMS``
programs each writing a partial maximum, which the quantize kernel reduces). Here:

- :func:`_amax_pair_kernel`: two jobs' pre-passes side by side, each reading its own tensor;
- :func:`_dual_amax_kernel`: one 2-D tensor's row-wise and column-wise pre-passes (each with its own RHT)
  from one read of it, in the dual quantize launch's tiles (``kernels.quantize_pair``);
- :func:`_two_dual_amax_kernel`: two tensors' dual pre-passes in one launch (X's and W's before their
  two-duals launch); :func:`_dual_single_amax_kernel`: a dual pre-pass and a second tensor's single one (NVFP4's
  X and W).

Every job's partial maxima reduce to the word its own pre-pass gives, so the codes are the single launches'.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ufp4_compile.kernels.common import format_constants
from ufp4_compile.kernels.quantize import (_AMAX_PROGRAMS, _VARIANT_SIZE, AMAX_PROGRAMS, PLAN_SCALARS, RHT_KEYS,
                                           ROW_SEGMENTS, LaunchPlan, _amax_at, _column_max, _max_into, amax_launch,
                                           amax_scalars, launch_plan, one_read_refusal)
from ufp4_compile.kernels.quantize_tile import _below_guard, _load_tile, _no_big_group, _rht_known

# ---- kernels -------------------------------------------------------------------------------------------

@triton.jit
def _amax_pair_kernel(a_x_ptr, b_x_ptr, a_gamax_ptr, b_gamax_ptr, a_O, a_L, a_s_page, a_s_o, a_s_l, a_pages,
                      a_rht_key, b_O, b_L, b_s_page, b_s_o, b_s_l, b_pages, b_rht_key,
                      A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                      A_ROWWISE: tl.constexpr, A_U: tl.constexpr, A_B: tl.constexpr, A_COLS: tl.constexpr,
                      A_PARTIAL: tl.constexpr,
                      B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                      B_ROWWISE: tl.constexpr, B_U: tl.constexpr, B_B: tl.constexpr, B_COLS: tl.constexpr,
                      B_PARTIAL: tl.constexpr, A_ROUND: tl.constexpr = False, B_ROUND: tl.constexpr = False):
    """The global-amax pre-passes of two two-level quantizations in one launch: the first ``AMAX_PROGRAMS``
    programs are job a's (``kernels.quantize._amax_kernel``'s programs), the rest job b's, each writing its
    own job's partial maxima, as its own launch would."""
    pid = tl.program_id(0)
    if pid < _AMAX_PROGRAMS:
        _amax_at(a_x_ptr, a_gamax_ptr, pid, a_O, a_L, a_s_page, a_s_o, a_s_l, a_pages, a_rht_key, A_RHT,
                 A_INV_SQRT, A_SIGN_MASK, A_ROWWISE, A_U, A_B, A_COLS, A_PARTIAL, A_ROUND)
    else:
        _amax_at(b_x_ptr, b_gamax_ptr, pid - _AMAX_PROGRAMS, b_O, b_L, b_s_page, b_s_o, b_s_l, b_pages, b_rht_key,
                 B_RHT, B_INV_SQRT, B_SIGN_MASK, B_ROWWISE, B_U, B_B, B_COLS, B_PARTIAL, B_ROUND)


@triton.jit
def _dual_amax_at(x_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key, M, N, pid,
                  A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                  B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                  COLS: tl.constexpr, B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr,
                  STAGES: tl.constexpr, ROUND: tl.constexpr = False):
    """Program ``pid`` of :func:`_dual_amax_kernel` (``ROUND``: of an FP32 ``x`` rounded to bf16 first).

    Per tile, one load in the column-wise layout (each thread holds a column's ``U`` rows), and each job's
    maxima kept per column (a maximum over the thread's own rows: no exchange between threads) until the end
    of the program, where they are reduced once. A row-wise job without RHT takes its maxima from the loaded
    tile itself (the maximum of unrotated values does not depend on the layout); with RHT it loads the tile's
    row segments (from L1/L2) and rotates them.

    As in ``quantize._amax_at``, the tiles are read on the common path first (no RHT guard, NaN-propagating
    float maxima, checked by those maxima themselves: :func:`quantize_tile._below_guard`) and again with the
    exact finite-only path (the RHT's guard decided once per tile for both jobs, the row segments being the
    same elements) only where that fails."""
    tiles = tl.cdiv(N, B) * (M // U)
    if pid < tiles:  # a program without tiles writes 0 (the interpreter runs every one of them)
        best_a, best_b = _dual_maxima(x_ptr, a_rht_key, b_rht_key, M, N, pid, A_RHT, A_INV_SQRT, A_SIGN_MASK,
                                      B_RHT, B_INV_SQRT, B_SIGN_MASK, COLS, B, ROW_B, U, STAGES, False, ROUND)
        if _below_guard(best_a) & _below_guard(best_b):
            tl.store(a_gamax_ptr + pid, tl.max(best_a, axis=0).to(tl.int32, bitcast=True))
            tl.store(b_gamax_ptr + pid, tl.max(best_b, axis=0).to(tl.int32, bitcast=True))
        else:
            exact_a, exact_b = _dual_maxima(x_ptr, a_rht_key, b_rht_key, M, N, pid, A_RHT, A_INV_SQRT,
                                            A_SIGN_MASK, B_RHT, B_INV_SQRT, B_SIGN_MASK, COLS, B, ROW_B, U, STAGES,
                                            True, ROUND)
            tl.store(a_gamax_ptr + pid, tl.max(exact_a, axis=0))
            tl.store(b_gamax_ptr + pid, tl.max(exact_b, axis=0))
    else:
        tl.store(a_gamax_ptr + pid, pid * 0)
        tl.store(b_gamax_ptr + pid, pid * 0)


@triton.jit
def _dual_maxima(x_ptr, a_rht_key, b_rht_key, M, N, pid,
                 A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                 B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                 COLS: tl.constexpr, B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr,
                 STAGES: tl.constexpr, EXACT: tl.constexpr, ROUND: tl.constexpr = False):
    """:func:`_dual_amax_at`'s read of its tiles, as (job a's per-column maxima, job b's): ``EXACT``, the RHT's
    guard decided once per tile for both jobs and finite-only bits (``quantize._column_max``); else the common
    path, NaN-propagating float maxima."""
    g_n = tl.cdiv(N, B)
    best_b = _column_max(tl.zeros((U, B), tl.float32), EXACT)  # zeros of the maxima's type
    if A_RHT > 0:
        best_a = _column_max(tl.zeros((U, ROW_B), tl.float32), EXACT)
    else:
        best_a = best_b
    for t in tl.range(pid, g_n * (M // U), _AMAX_PROGRAMS, num_stages=STAGES):
        x = _dual_tile(x_ptr, t, g_n, M, N, B, U, COLS, ROUND)
        small = True
        if EXACT:
            if A_RHT > 0 or B_RHT > 0:
                small = _no_big_group(x)
        xb = x
        HALF: tl.constexpr = x_ptr.dtype.element_ty.primitive_bitwidth == 16 or ROUND  # x as loaded
        if B_RHT > 0:
            xb = _rht_known(x, small, b_rht_key, U, B, B_RHT, B_INV_SQRT, B_SIGN_MASK, HALF)
        best_b = _max_into(best_b, _column_max(xb, EXACT), EXACT)
        if A_RHT > 0:
            for h in tl.static_range(B // ROW_B):
                xa = _dual_row_segments(x_ptr, t, h, g_n, M, N, B, ROW_B, U, COLS, ROUND)
                xa = _rht_known(xa, small, a_rht_key, U, ROW_B, A_RHT, A_INV_SQRT, A_SIGN_MASK, HALF)
                best_a = _max_into(best_a, _column_max(xa, EXACT), EXACT)
        else:
            best_a = _max_into(best_a, _column_max(x, EXACT), EXACT)
    return best_a, best_b


@triton.jit
def _dual_tile(x_ptr, t, g_n, M, N, B: tl.constexpr, U: tl.constexpr, COLS: tl.constexpr,
               ROUND: tl.constexpr = False):
    """Tile ``t`` of the dual tiling of ``x (M, N)`` (``g_n`` tiles across), loaded column-wise as ``(U, B)``."""
    pid_n = t % g_n
    pid_m = t // g_n
    x, _ = _load_tile(x_ptr, pid_m * 0, pid_m * U, pid_n * B, pid_n * B + tl.arange(0, B), N, M, 0, 1, N, U, B,
                      False, COLS, ROUND=ROUND)
    return x


@triton.jit
def _dual_row_segments(x_ptr, t, h, g_n, M, N, B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr,
                       COLS: tl.constexpr, ROUND: tl.constexpr = False):
    """The row segments ``h * ROW_B ..`` of tile ``t`` as the dual quantize kernel has them, as ``(U, ROW_B)``
    (each row segment of ``U`` elements a column)."""
    SEGS: tl.constexpr = B // U
    segments = tl.cast(M, tl.int64) * (N // U)
    pid_n = t % g_n
    pid_m = t // g_n
    j = h * ROW_B + tl.arange(0, ROW_B)
    seg = pid_n * SEGS + j % SEGS
    rows = tl.where(seg < N // U, (pid_m * U + j // SEGS).to(tl.int64) * (N // U) + seg, segments)
    xa, _ = _load_tile(x_ptr, pid_m * 0, 0, 0, rows, segments, U, 0, U, 1, U, ROW_B, True, COLS, ROUND=ROUND)
    return xa


@triton.jit
def _dual_amax_kernel(x_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key, M, N,
                      A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                      B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                      COLS: tl.constexpr, B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr,
                      STAGES: tl.constexpr, ROUND: tl.constexpr = False):
    """The global-amax pre-passes of one 2-D tensor ``x (M, N)``'s row-wise (job a) and column-wise (job b)
    two-level quantizations, each with its own RHT, from one read of it: ``AMAX_PROGRAMS`` programs, program p
    takes the tiles p, p + AMAX_PROGRAMS, ... of :func:`_quantize_dual_kernel`'s ``U x B`` tiling, rotates each
    tile's row segments and its columns as that kernel does, and writes the maximum finite ``|RHT(x)|`` bits of
    each to ``a_gamax_ptr[p]`` and ``b_gamax_ptr[p]``. Each job's partial maxima differ from its own pre-pass's
    (another tiling) but their maximum, the only thing its quantize kernel reads, is the same word: the same
    rotated values (an RHT group is rotated alone), the same finite-only maximum. ``ROUND``: ``x`` is FP32,
    rounded to bf16 first."""
    _dual_amax_at(x_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key, M, N, tl.program_id(0), A_RHT,
                  A_INV_SQRT, A_SIGN_MASK, B_RHT, B_INV_SQRT, B_SIGN_MASK, COLS, B, ROW_B, U, STAGES, ROUND)


@triton.jit
def _two_dual_amax_kernel(a_x_ptr, c_x_ptr, a_gamax_ptr, b_gamax_ptr, c_gamax_ptr, d_gamax_ptr, a_rht_key,
                          b_rht_key, c_rht_key, d_rht_key, M, N, P, Q,
                          A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                          B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                          C_RHT: tl.constexpr, C_INV_SQRT: tl.constexpr, C_SIGN_MASK: tl.constexpr,
                          D_RHT: tl.constexpr, D_INV_SQRT: tl.constexpr, D_SIGN_MASK: tl.constexpr,
                          COLS: tl.constexpr, B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr,
                          STAGES: tl.constexpr, A_ROUND: tl.constexpr = False, C_ROUND: tl.constexpr = False):
    """Two tensors' dual pre-passes in one launch (X's and W's in a linear layer's forward, before their
    two-duals launch): the first ``AMAX_PROGRAMS`` programs are :func:`_dual_amax_kernel`'s over ``x (M, N)``
    (jobs a row-wise, b column-wise), the rest its programs over ``w (P, Q)`` (jobs c, d), each writing what it
    writes in its own launch."""
    pid = tl.program_id(0)
    if pid < _AMAX_PROGRAMS:
        _dual_amax_at(a_x_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key, M, N, pid, A_RHT, A_INV_SQRT,
                      A_SIGN_MASK, B_RHT, B_INV_SQRT, B_SIGN_MASK, COLS, B, ROW_B, U, STAGES, A_ROUND)
    else:
        _dual_amax_at(c_x_ptr, c_gamax_ptr, d_gamax_ptr, c_rht_key, d_rht_key, P, Q, pid - _AMAX_PROGRAMS, C_RHT,
                      C_INV_SQRT, C_SIGN_MASK, D_RHT, D_INV_SQRT, D_SIGN_MASK, COLS, B, ROW_B, U, STAGES, C_ROUND)


@triton.jit
def _dual_single_amax_kernel(x_ptr, c_x_ptr, a_gamax_ptr, b_gamax_ptr, c_gamax_ptr, a_rht_key, b_rht_key, c_rht_key,
                             M, N, c_O, c_L, c_s_page, c_s_o, c_s_l, c_pages,
                             A_RHT: tl.constexpr, A_INV_SQRT: tl.constexpr, A_SIGN_MASK: tl.constexpr,
                             B_RHT: tl.constexpr, B_INV_SQRT: tl.constexpr, B_SIGN_MASK: tl.constexpr,
                             COLS: tl.constexpr, B: tl.constexpr, ROW_B: tl.constexpr, U: tl.constexpr,
                             STAGES: tl.constexpr, C_RHT: tl.constexpr, C_INV_SQRT: tl.constexpr,
                             C_SIGN_MASK: tl.constexpr, C_ROWWISE: tl.constexpr, C_U: tl.constexpr,
                             C_B: tl.constexpr, C_COLS: tl.constexpr, C_PARTIAL: tl.constexpr,
                             ROUND: tl.constexpr = False, C_ROUND: tl.constexpr = False):
    """One tensor's dual pre-pass and a second tensor's single one in one launch (NVFP4's X and W before their
    dual-single launch, ``kernels.quantize_pair._quantize_dual_single_kernel``): the first ``AMAX_PROGRAMS``
    programs are :func:`_dual_amax_kernel`'s over ``x (M, N)`` (jobs a row-wise, b column-wise), the rest
    ``kernels.quantize._amax_kernel``'s for job c, each writing what it writes in its own launch."""
    pid = tl.program_id(0)
    if pid < _AMAX_PROGRAMS:
        _dual_amax_at(x_ptr, a_gamax_ptr, b_gamax_ptr, a_rht_key, b_rht_key, M, N, pid, A_RHT, A_INV_SQRT,
                      A_SIGN_MASK, B_RHT, B_INV_SQRT, B_SIGN_MASK, COLS, B, ROW_B, U, STAGES, ROUND)
    else:
        _amax_at(c_x_ptr, c_gamax_ptr, pid - _AMAX_PROGRAMS, c_O, c_L, c_s_page, c_s_o, c_s_l, c_pages, c_rht_key,
                 C_RHT, C_INV_SQRT, C_SIGN_MASK, C_ROWWISE, C_U, C_B, C_COLS, C_PARTIAL, C_ROUND)


# ---- launches -------------------------------------------------------------------------------------------

# The dual pre-pass's tile (:func:`_dual_amax_kernel`): the dual launch's two columns per thread, at four warps
# (its fixed number of programs needs more loads in flight than the dual quantize launch's one-warp programs).
# On the H200 (benchmarks/amax_sweep.py, 8192 rows, 1024-5504 columns) it took 0.70-0.79 of the pair pre-pass's
# time (two reads) at 256 columns and four warps; 128 columns and two warps 0.83-0.86, 512 and eight warps
# 1.1-2.4. Its loop over tiles is not software-pipelined where the row-wise job rotates (2-4 tiles deep: 1-10%
# longer at fb31bd4) and three tiles deep where it does not (NVFP4's Fprop/Dgrad rows: one load per tile, 0-8%
# shorter: DUAL_AMAX_STAGES_UNROTATED).
DUAL_AMAX_TILE = {"B": 256, "num_warps": 4, "cols": 2, "stages": 1}
DUAL_AMAX_STAGES_UNROTATED = 3


def dual_amax_refusal(shape: tuple | None, a: LaunchPlan, b: LaunchPlan) -> str | None:
    """Why the global-amax pre-passes of plans ``a`` and ``b`` cannot read one tensor of ``shape`` once
    (:func:`_dual_amax_kernel`), or None: the row-wise and column-wise two-level quantizations of a 2-D tensor
    of whole ``U x U`` tiles, one span ``U`` for both (16 x 16 blocks too: a pre-pass reads the rotated
    values only)."""
    if shape is None:
        return "not one tensor's two quantizations"
    if a.amax_constexprs is None or b.amax_constexprs is None:
        return "not two two-level (E4M3) quantizations"
    return one_read_refusal(shape, a, b)


def dual_amax_launch(shape: tuple, plans, inputs, partials, keys, tile: dict | None = None) -> tuple:
    """The one launch of the two pre-passes of one tensor's two quantizations (``dual_amax_refusal`` is None)
    as ``(kernel, grid, num_warps, tensors, scalars)``; ``tile`` (benchmarks): ``B``, ``num_warps``, ``cols``
    and ``stages`` instead of :data:`DUAL_AMAX_TILE`'s (whose ``stages`` is :data:`DUAL_AMAX_STAGES_UNROTATED`
    where the row-wise job does not rotate)."""
    row = 0 if plans[0].rowwise else 1
    unrotated = plans[row].amax_constexprs["RHT"] == 0
    tile = {**DUAL_AMAX_TILE, **({"stages": DUAL_AMAX_STAGES_UNROTATED} if unrotated else {}), **(tile or {})}
    u = plans[0].constexprs["U"]
    width = max(u, min(tile["B"], triton.next_power_of_2(shape[1])))
    cols = min(tile["cols"], width)
    tensors = dict(x_ptr=inputs[row], a_gamax_ptr=partials[row], b_gamax_ptr=partials[1 - row])
    scalars = dict(a_rht_key=keys[row], b_rht_key=keys[1 - row], M=shape[0], N=shape[1], COLS=cols, B=width,
                   ROW_B=min(width, ROW_SEGMENTS), U=u, STAGES=tile["stages"])
    for p, plan in (("A", plans[row]), ("B", plans[1 - row])):
        scalars.update({f"{p}_{k}": plan.amax_constexprs[k] for k in RHT_KEYS})
    warps = max(1, min(tile["num_warps"], width // (32 * cols)))
    return (_dual_amax_kernel, (AMAX_PROGRAMS, 1, 1), warps, tensors, scalars)


def prepass_launches(shapes: list, plans, inputs, partials, keys) -> list[tuple]:
    """The global-amax pre-pass launches of a launch's jobs (``plans``, ``inputs``, ``partials``, ``keys`` in
    its job order; none for one-level scales): ``shapes``, per two consecutive jobs, the shape of the tensor
    they quantize from one read, else None (``kernels.quantize_pair.one_read_shapes``). Two tensors' dual
    pre-passes in one launch of :func:`_two_dual_amax_kernel` where both read their tensor once at one tile, a
    dual pre-pass and a third job's single one in one launch of :func:`_dual_single_amax_kernel`, else
    :func:`amax_launches` per two consecutive jobs. Each as ``(kernel, grid, num_warps, tensors,
    scalars)``."""
    if len(plans) == 3:  # a dual launch's two jobs and a single one (kernels.quantize_pair.dual_single_launch)
        if (shapes[1] is None and plans[2].amax_constexprs is not None
                and dual_amax_refusal(shapes[0], *plans[:2]) is None):
            return [_dual_single_amax(dual_amax_launch(shapes[0], plans[:2], inputs[:2], partials[:2], keys[:2]),
                                      amax_launch(plans[2], inputs[2], partials[2], keys[2]))]
    elif len(shapes) == 2 and all(dual_amax_refusal(shape, *plans[i:i + 2]) is None
                                for i, shape in zip((0, 2), shapes)):
        first, second = (dual_amax_launch(shape, plans[i:i + 2], inputs[i:i + 2], partials[i:i + 2], keys[i:i + 2])
                         for i, shape in zip((0, 2), shapes))
        if first[2] == second[2] and all(first[4][k] == second[4][k] for k in ("COLS", "B", "ROW_B", "U",
                                                                                "STAGES")):
            return [_two_dual_amax(first, second)]
    return [prepass for i, shape in zip(range(0, len(plans), 2), shapes)
            for prepass in amax_launches(plans[i:i + 2], inputs[i:i + 2], partials[i:i + 2], keys[i:i + 2], shape)]


def _two_dual_amax(first: tuple, second: tuple) -> tuple:
    """The one launch of two dual pre-passes at one tile: ``first``'s jobs as a and b, ``second``'s as c and d."""
    (_, _, warps, t1, s1), (_, _, _, t2, s2) = first, second
    tensors = dict(a_x_ptr=t1["x_ptr"], a_gamax_ptr=t1["a_gamax_ptr"], b_gamax_ptr=t1["b_gamax_ptr"],
                   c_x_ptr=t2["x_ptr"], c_gamax_ptr=t2["a_gamax_ptr"], d_gamax_ptr=t2["b_gamax_ptr"])
    scalars = {**s1, "P": s2["M"], "Q": s2["N"], "c_rht_key": s2["a_rht_key"], "d_rht_key": s2["b_rht_key"],
               **{f"{q}_{k}": s2[f"{p}_{k}"] for p, q in (("A", "C"), ("B", "D")) for k in RHT_KEYS}}
    return (_two_dual_amax_kernel, (2 * AMAX_PROGRAMS, 1, 1), warps, tensors, scalars)


def _dual_single_amax(dual: tuple, single: tuple) -> tuple:
    """The one launch of a dual pre-pass (jobs a, b) and a single one (job c) at the dual's warps."""
    (_, _, warps, t1, s1), (_, _, _, t2, s2) = dual, single
    tensors = {**t1, "c_x_ptr": t2["x_ptr"], "c_gamax_ptr": t2["gamax_ptr"]}
    lower = (*PLAN_SCALARS, "pages", "rht_key")  # the single pre-pass's scalars; the rest are its constexprs
    scalars = {**s1, **{f"c_{k}" if k in lower else f"C_{k}": v for k, v in s2.items()}}
    return (_dual_single_amax_kernel, (2 * AMAX_PROGRAMS, 1, 1), warps, tensors, scalars)


def amax_launches(plans, inputs, partials, keys, dual_shape: tuple | None = None) -> list[tuple]:
    """The global-amax pre-pass launches of quantizations with ``plans`` (two-level scales only; the others are
    skipped), each job's maxima written to its own ``partials`` buffer (``AMAX_PROGRAMS`` int32): one tensor's
    two quantizations (``dual_shape``, its shape, where ``plans`` are one tensor's and
    :func:`dual_amax_refusal` accepts) in one read of it (:func:`_dual_amax_kernel`), else two jobs in one
    launch of :func:`_amax_pair_kernel` where their pre-passes take one warp count, else one launch each.
    ``inputs``, ``partials``: tensors or Inductor buffers; ``keys``: each job's ``rht_key``. Each launch as
    ``(kernel, grid, num_warps, tensors, scalars)``."""
    if len(plans) == 2 and dual_amax_refusal(dual_shape, *plans) is None:
        return [dual_amax_launch(dual_shape, plans, inputs, partials, keys)]
    jobs = [job for job in zip(plans, inputs, partials, keys) if job[0].amax_constexprs is not None]
    if len(jobs) == 2 and jobs[0][0].amax_num_warps == jobs[1][0].amax_num_warps:
        tensors, scalars = {}, {}
        for p, (plan, x, gamax, key) in zip("ab", jobs):
            tensors.update({f"{p}_x_ptr": x, f"{p}_gamax_ptr": gamax})
            scalars.update(amax_scalars(plan, f"{p}_"), **{f"{p}_rht_key": key},
                           **{f"{p.upper()}_{k}": v for k, v in plan.amax_constexprs.items()})
        return [(_amax_pair_kernel, (2 * AMAX_PROGRAMS, 1, 1), jobs[0][0].amax_num_warps, tensors, scalars)]
    return [amax_launch(*job) for job in jobs]


# ---- compile-only variants (ufp4_compile.kernels.targets protocol) --------------------------------------

def compile_variants():
    """The pre-pass launches of the presets' two-level quantizations (bf16 input, 4096 x 4096): per format and
    pair of the RHT sizes it is used with, a row-wise and a column-wise job's pre-passes in one launch, the same
    from one read of the tensor, two tensors' one-read pre-passes in one launch, and a one-read pre-pass with a
    second tensor's in square blocks (NVFP4's X and W)."""
    from ufp4_compile.kernels.targets import KernelVariant, preset_quantize_calls

    by_format: dict = {}
    calls = preset_quantize_calls()
    for (fmt, rht, _), presets in calls.items():
        if format_constants(fmt).scale == 1:
            by_format.setdefault(fmt, {}).setdefault(rht, set()).update(presets.split(", "))
    variants = []
    shape = (_VARIANT_SIZE, _VARIANT_SIZE)
    for fmt, sizes in by_format.items():
        for ra, rb in ((ra, rb) for ra in sizes for rb in sizes):
            names = ", ".join(sorted(sizes[ra] | sizes[rb]))
            rht = f"rht{ra}" if ra == rb else f"rht{ra}+{rb}"
            plans = [launch_plan(shape, 2, 1, fmt, ra, False, True, False),
                     launch_plan(shape, 2, 0, fmt, rb, True, False, False)]
            (_, _, warps, _, scalars), = amax_launches(plans, ("x", "x"), ("g", "g"), (0, 0))
            types = {f"{p}_{k}": "*bf16" if k == "x_ptr" else "*i32" if k == "gamax_ptr" else "i32"
                     for p in "ab" for k in ("x_ptr", "gamax_ptr", "O", "L", "s_page", "pages", "rht_key")}
            unit = {k: scalars[k] for k in ("a_s_o", "a_s_l", "b_s_o", "b_s_l")}
            variants.append(KernelVariant.build(
                f"quantize_amax_pair[{fmt.spec} {rht} row-wise + column-wise]", names, _amax_pair_kernel, types,
                unit | {k: v for k, v in scalars.items() if k[0] in "AB"},
                aligned=("a_x_ptr", "b_x_ptr", "a_O", "a_L", "b_O", "b_L"), options=dict(num_warps=warps)))
            if dual_amax_refusal(shape, *plans) is not None:
                continue
            (_, _, warps, _, scalars), = amax_launches(plans, ("x", "x"), ("g", "g"), (0, 0), shape)
            types = dict(x_ptr="*bf16", a_gamax_ptr="*i32", b_gamax_ptr="*i32", a_rht_key="i32", b_rht_key="i32",
                         M="i32", N="i32")
            variants.append(KernelVariant.build(
                f"quantize_dual_amax[{fmt.spec} {rht} row-wise + column-wise]", names, _dual_amax_kernel, types,
                {k: v for k, v in scalars.items() if k not in types}, aligned=("x_ptr", "M", "N"),
                options=dict(num_warps=warps)))
            (_, _, warps, _, scalars), = prepass_launches([shape, shape], plans * 2, ("x",) * 4, ("g",) * 4, (0,) * 4)
            types = {**{f"{p}_x_ptr": "*bf16" for p in "ac"}, **{f"{p}_gamax_ptr": "*i32" for p in "abcd"},
                     **{f"{p}_rht_key": "i32" for p in "abcd"}, **dict(M="i32", N="i32", P="i32", Q="i32")}
            variants.append(KernelVariant.build(
                f"quantize_two_dual_amax[{fmt.spec} {rht} row-wise + column-wise, twice]", names,
                _two_dual_amax_kernel, types, {k: v for k, v in scalars.items() if k not in types},
                aligned=("a_x_ptr", "c_x_ptr", "M", "N", "P", "Q"), options=dict(num_warps=warps)))
            square = by_format.get(fmt.square(), {})
            if 0 in square and (fmt, ra, True) in calls and (fmt, rb, False) in calls:  # X's dual (its RHT
                # sizes as used) and W's square blocks (NVFP4)
                single = launch_plan(shape, 2, 0, fmt.square(), 0, True, True, False)
                (_, _, warps, _, scalars), = prepass_launches([shape, None], [*plans, single], ("x",) * 3,
                                                              ("g",) * 3, (0,) * 3)
                types = dict(x_ptr="*bf16", c_x_ptr="*bf16", a_gamax_ptr="*i32", b_gamax_ptr="*i32",
                             c_gamax_ptr="*i32", a_rht_key="i32", b_rht_key="i32", c_rht_key="i32", M="i32",
                             N="i32", c_O="i32", c_L="i32", c_s_page="i32", c_pages="i32")
                variants.append(KernelVariant.build(
                    f"quantize_dual_single_amax[{fmt.spec} {rht} row-wise + column-wise, {fmt.square().spec} "
                    "column-wise]", ", ".join(sorted(set(names.split(", ")) & square[0])), _dual_single_amax_kernel,
                    types, {k: v for k, v in scalars.items() if k not in types} | dict(c_s_o=1),
                    aligned=("x_ptr", "c_x_ptr", "M", "N", "c_O", "c_L"), options=dict(num_warps=warps)))
    return variants
