"""Block-scaled 4-bit GEMM for GPUs without 4-bit tensor cores (Hopper): ``C = (A B^T) * ts_a * ts_b``.

Both operands arrive as packed codes along K (``a_codes`` (M, K/2), ``b_codes`` (N, K/2), any strides) with
their block scales (``(M, K/block)``, ``(N, K/block)``) and 0-d tensor scales. Two main loops, one kernel:

- ``MODE_DEQUANT``: each K tile is dequantized in registers, ``code x scale`` in FP32 rounded to the
  compute dtype (bf16, or FP32 with IEEE dots), and fed to ``tl.dot`` with FP32 accumulation: exactly the
  reference GEMM (``numerics.gemm_reference``) up to accumulation order. The low and high nibbles of a
  K tile go to two dots (the even and the odd k of the tile): a permutation of K applied to both operands
  leaves the sum unchanged and saves the interleaving shuffle.
- ``MODE_BLOCKSCALE``: one dot per format block on the raw codes (bf16 or FP8 E4M3 operands, both exact
  for every code; the per-block partial sums of at most 32 code products are exact in FP32), then the
  partial sums are scaled by ``s_a x s_b`` in FP32 and accumulated. This equals the reference when the
  reference's rounding to the compute dtype is exact (E4M3 and E8M0 scales with bf16 compute) and is the
  FP32-compute path for FP32 block scales (at most one FP32 rounding per block product).

The main loop lives in :func:`mm_main_loop`, shared with the Inductor template (``lowering/templates.py``),
so the interpreter tests here cover the template's arithmetic too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ufp4_compile.kernels.common import decode_nibbles, decode_scales, format_constants
from ufp4_compile.numerics.formats import OperandFormat
from ufp4_compile.numerics.quantize import as_format

MODE_DEQUANT = 0
MODE_BLOCKSCALE = 1
DOT_BF16, DOT_FP32, DOT_FP8 = 0, 1, 2
DOT_DTYPES = {"bf16": DOT_BF16, "fp32": DOT_FP32, "fp8": DOT_FP8}


# ---- main loop pieces -----------------------------------------------------------------------------------

@triton.jit
def mm_tile_ids(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) in grouped order (GROUP_M row tiles share their B tiles in L2)."""
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    group_id = pid // width
    group_size = tl.minimum(grid_m - group_id * GROUP_M, GROUP_M)
    pid_m = group_id * GROUP_M + (pid % group_size)
    pid_n = (pid % width) // group_size
    return pid_m, pid_n


@triton.jit
def mm_load_scales(scales_ptr, offs_r, kb, K_BLOCKS, s_r, s_k, WIDTH: tl.constexpr, SCALE: tl.constexpr,
                   EVEN_K: tl.constexpr):
    """FP32 block scales (len(offs_r), WIDTH) of blocks kb .. kb + WIDTH - 1 (0 past K)."""
    offs_k = kb + tl.arange(0, WIDTH)
    ptrs = scales_ptr + offs_r[:, None] * s_r + offs_k[None, :] * s_k
    if EVEN_K:
        return decode_scales(tl.load(ptrs), SCALE)
    raw = tl.load(ptrs, mask=(offs_k < K_BLOCKS)[None, :])
    return tl.where((offs_k < K_BLOCKS)[None, :], decode_scales(raw, SCALE), 0.0)


@triton.jit
def mm_load_halves(codes_ptr, scales_ptr, offs_r, k2, K2, s_r, s_k, ss_r, ss_k,
                   BLOCK_K: tl.constexpr, BLOCK: tl.constexpr, GRID: tl.constexpr, SCALE: tl.constexpr,
                   EVEN_K: tl.constexpr):
    """Dequantized even-k and odd-k halves (FP32, (len(offs_r), BLOCK_K // 2)) of the K tile at byte k2."""
    offs_k2 = k2 + tl.arange(0, BLOCK_K // 2)
    ptrs = codes_ptr + offs_r[:, None] * s_r + offs_k2[None, :] * s_k
    if EVEN_K:
        packed = tl.load(ptrs).to(tl.int32)
    else:
        packed = tl.load(ptrs, mask=(offs_k2 < K2)[None, :], other=0).to(tl.int32)
    NB: tl.constexpr = BLOCK_K // BLOCK
    s = mm_load_scales(scales_ptr, offs_r, (2 * k2) // BLOCK, (2 * K2) // BLOCK, ss_r, ss_k, NB, SCALE, EVEN_K)
    rows: tl.constexpr = offs_r.shape[0]
    s = tl.reshape(tl.broadcast_to(s[:, :, None], (rows, NB, BLOCK // 2)), (rows, BLOCK_K // 2))
    lo = decode_nibbles(packed & 15, GRID) * s
    hi = decode_nibbles(packed >> 4, GRID) * s
    return lo, hi


@triton.jit
def mm_load_block_codes(codes_ptr, offs_r, k2, s_r, s_k, BLOCK: tl.constexpr, GRID: tl.constexpr):
    """Grid values (FP32, (len(offs_r), BLOCK)) of one format block starting at byte k2, in K order."""
    offs_k2 = k2 + tl.arange(0, BLOCK // 2)
    packed = tl.load(codes_ptr + offs_r[:, None] * s_r + offs_k2[None, :] * s_k).to(tl.int32)
    rows: tl.constexpr = offs_r.shape[0]
    both = tl.join(decode_nibbles(packed & 15, GRID), decode_nibbles(packed >> 4, GRID))
    return tl.reshape(both, (rows, BLOCK))


@triton.jit
def mm_dot(a, b, acc, DOT: tl.constexpr):
    """``acc + a @ b^T`` with operands cast to the dot dtype (bf16, FP32 with IEEE products, or FP8 E4M3)."""
    if DOT == 0:
        return tl.dot(a.to(tl.bfloat16), tl.trans(b.to(tl.bfloat16)), acc)
    elif DOT == 1:
        return tl.dot(a, tl.trans(b), acc, input_precision="ieee")
    else:
        return tl.dot(a.to(tl.float8e4nv), tl.trans(b.to(tl.float8e4nv)), acc)


@triton.jit
def mm_main_loop(a_codes, a_scales, b_codes, b_scales, offs_m, offs_n, K2,
                 s_am, s_ak, s_asm, s_ask, s_bn, s_bk, s_bsn, s_bsk,
                 A_GRID: tl.constexpr, A_SCALE: tl.constexpr, B_GRID: tl.constexpr, B_SCALE: tl.constexpr,
                 BLOCK: tl.constexpr, MODE: tl.constexpr, DOT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """The FP32 accumulator ``sum_k A[offs_m, k] B[offs_n, k]`` (tensor scales not applied)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if MODE == 0:
        for k2 in range(0, K2, BLOCK_K // 2):
            a_lo, a_hi = mm_load_halves(a_codes, a_scales, offs_m, k2, K2, s_am, s_ak, s_asm, s_ask,
                                        BLOCK_K, BLOCK, A_GRID, A_SCALE, EVEN_K)
            b_lo, b_hi = mm_load_halves(b_codes, b_scales, offs_n, k2, K2, s_bn, s_bk, s_bsn, s_bsk,
                                        BLOCK_K, BLOCK, B_GRID, B_SCALE, EVEN_K)
            acc = mm_dot(a_lo, b_lo, acc, DOT)
            acc = mm_dot(a_hi, b_hi, acc, DOT)
    else:
        # One dot per format block (K2 is a multiple of BLOCK // 2), scaled in FP32.
        for k2 in range(0, K2, BLOCK // 2):
            a = mm_load_block_codes(a_codes, offs_m, k2, s_am, s_ak, BLOCK, A_GRID)
            b = mm_load_block_codes(b_codes, offs_n, k2, s_bn, s_bk, BLOCK, B_GRID)
            kb = (2 * k2) // BLOCK
            sa = decode_scales(tl.load(a_scales + offs_m * s_asm + kb * s_ask), A_SCALE)
            sb = decode_scales(tl.load(b_scales + offs_n * s_bsn + kb * s_bsk), B_SCALE)
            partial = mm_dot(a, b, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT)
            acc += partial * (sa[:, None] * sb[None, :])
    return acc


# ---- standalone kernel -----------------------------------------------------------------------------------

@triton.jit
def _scaled_mm_kernel(a_codes, a_scales, a_ts, b_codes, b_scales, b_ts, c_ptr, M, N, K2,
                      s_am, s_ak, s_asm, s_ask, s_bn, s_bk, s_bsn, s_bsk, s_cm, s_cn,
                      A_GRID: tl.constexpr, A_SCALE: tl.constexpr, B_GRID: tl.constexpr, B_SCALE: tl.constexpr,
                      BLOCK: tl.constexpr, MODE: tl.constexpr, DOT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
    pid_m, pid_n = mm_tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = mm_main_loop(a_codes, a_scales, b_codes, b_scales, rm % M, rn % N, K2,
                       s_am, s_ak, s_asm, s_ask, s_bn, s_bk, s_bsn, s_bsk,
                       A_GRID, A_SCALE, B_GRID, B_SCALE, BLOCK, MODE, DOT, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K)
    acc = acc * (tl.load(a_ts) * tl.load(b_ts))
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(c_ptr + rm[:, None] * s_cm + rn[None, :] * s_cn, acc.to(c_ptr.dtype.element_ty), mask=mask)


# ---- launcher -------------------------------------------------------------------------------------------

DEFAULT_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}


def _formats(a_fmt, b_fmt) -> tuple[OperandFormat, OperandFormat]:
    a_fmt, b_fmt = as_format(a_fmt), as_format(b_fmt)
    if a_fmt.block != b_fmt.block:
        raise ValueError(f"scaled_mm: operands need the same block size, got a_fmt.block={a_fmt.block}, "
                         f"b_fmt.block={b_fmt.block}")
    return a_fmt, b_fmt


def check_operands(a_codes, a_scales, b_codes, b_scales, block: int) -> tuple[int, int, int]:
    """(M, N, K/2) after checking the operand shapes; ValueError names the mismatching field."""
    if a_codes.dim() != 2 or b_codes.dim() != 2:
        raise ValueError(f"scaled_mm: codes must be 2-D, got a_codes {tuple(a_codes.shape)} and "
                         f"b_codes {tuple(b_codes.shape)}")
    (M, K2), (N, K2b) = a_codes.shape, b_codes.shape
    if K2 != K2b:
        raise ValueError(f"scaled_mm: reduction lengths differ: a_codes has K/2={K2}, b_codes has K/2={K2b}")
    if (2 * K2) % block:
        raise ValueError(f"scaled_mm: K={2 * K2} is not a multiple of the block {block}")
    for name, scales, rows in (("a_scales", a_scales, M), ("b_scales", b_scales, N)):
        if tuple(scales.shape) != (rows, 2 * K2 // block):
            raise ValueError(f"scaled_mm: {name} has shape {tuple(scales.shape)}, expected "
                             f"{(rows, 2 * K2 // block)}")
    return M, N, K2


def mode_allowed(mode: int, dot: str, a_fmt: OperandFormat, b_fmt: OperandFormat, compute_dtype: str) -> bool:
    """Whether (mode, dot dtype) honours the exactness contract for these formats (docs/kernels.md)."""
    if mode == MODE_DEQUANT:
        return dot == compute_dtype  # dequantized operands rounded to the compute dtype: the reference
    exact_bf16 = all(f.scale.value != "fp32" for f in (a_fmt, b_fmt))  # code x E4M3/E8M0 exact in bf16
    if compute_dtype == "bf16" and not exact_bf16:
        return False
    if dot == "fp8":
        return a_fmt.block == 32  # FP8 wgmma needs K >= 32 per dot
    return dot in ("bf16", "fp32")


def scaled_mm(a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale, a_fmt, b_fmt,
              compute_dtype: str = "bf16", out_dtype: torch.dtype = torch.bfloat16, *, mode: int = MODE_DEQUANT,
              dot: str | None = None, config: dict | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``ufp4::scaled_mm`` on packed operands through the Triton kernel (see the module docstring)."""
    a_fmt, b_fmt = _formats(a_fmt, b_fmt)
    if compute_dtype not in ("bf16", "fp32"):
        raise ValueError(f"compute_dtype={compute_dtype!r} is not valid; valid values: 'bf16', 'fp32'")
    dot = dot or compute_dtype
    if dot not in DOT_DTYPES:
        raise ValueError(f"dot={dot!r} is not valid; valid values: {tuple(DOT_DTYPES)}")
    if not mode_allowed(mode, dot, a_fmt, b_fmt, compute_dtype):
        raise ValueError(f"mode={mode}, dot={dot!r} does not honour the exactness contract for "
                         f"{a_fmt.spec} x {b_fmt.spec} with compute_dtype={compute_dtype!r}")
    M, N, K2 = check_operands(a_codes, a_scales, b_codes, b_scales, a_fmt.block)
    if out is None:
        out = torch.empty((M, N), dtype=out_dtype, device=a_codes.device)
    if M == 0 or N == 0:
        return out
    if K2 == 0:
        return out.zero_()
    cfg = dict(config or (INTERPRETER_CONFIG if a_codes.device.type == "cpu" else DEFAULT_CONFIG))
    if mode == MODE_BLOCKSCALE:
        cfg["BLOCK_K"] = a_fmt.block
    ca, cb = format_constants(a_fmt), format_constants(b_fmt)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _scaled_mm_kernel[grid](
        a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale, out,
        M, N, K2, *a_codes.stride(), *a_scales.stride(), *b_codes.stride(), *b_scales.stride(), *out.stride(),
        A_GRID=ca.grid, A_SCALE=ca.scale, B_GRID=cb.grid, B_SCALE=cb.scale, BLOCK=a_fmt.block, MODE=mode,
        DOT=DOT_DTYPES[dot], EVEN_K=(2 * K2) % cfg["BLOCK_K"] == 0, **cfg)
    return out



# ---- compile-only variants (ufp4_compile.kernels.targets protocol) --------------------------------------

_SCALE_POINTERS = {"fp32": "*fp32", "e4m3": "*fp8e4nv", "e8m0": "*u8"}  # as the op passes block scales
_UNIT_STRIDES = ("s_ak", "s_ask", "s_bk", "s_bsk", "s_cn")  # Fprop layout: K contiguous, row-major C


def main_loops(a_fmt: OperandFormat, b_fmt: OperandFormat, compute_dtype: str) -> list[tuple[int, str]]:
    """The (mode, dot dtype) main loops the lowering may run for these formats: the dequant loop, then the
    fastest exact blockscale loop (FP8 before bf16 before FP32), each only where :func:`mode_allowed`."""
    loops = [(MODE_DEQUANT, compute_dtype)] if mode_allowed(MODE_DEQUANT, compute_dtype, a_fmt, b_fmt,
                                                             compute_dtype) else []
    for dot in ("fp8", "bf16", "fp32"):
        if mode_allowed(MODE_BLOCKSCALE, dot, a_fmt, b_fmt, compute_dtype):
            return loops + [(MODE_BLOCKSCALE, dot)]
    return loops


def compile_variants(config: dict | None = None):
    """``_scaled_mm_kernel`` for every GEMM format pair of the presets (and the extra pairs), every main
    loop the lowering offers for it, with the default tile (the template's first config) and bf16 output."""
    from ufp4_compile.kernels.targets import KernelVariant, preset_gemms
    from ufp4_compile.dispatch import GemmPath

    cfg = dict(config or DEFAULT_CONFIG)
    options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
    types = {name: "i32" for name in _scaled_mm_kernel.arg_names if name.startswith("s_") or name in ("M", "N", "K2")}
    types |= dict(a_codes="*u8", b_codes="*u8", a_ts="*fp32", b_ts="*fp32", c_ptr="*bf16")
    variants = []
    for gemm in preset_gemms():
        ca, cb = format_constants(gemm.a), format_constants(gemm.b)
        arg_types = dict(types, a_scales=_SCALE_POINTERS[gemm.a.scale.value],
                         b_scales=_SCALE_POINTERS[gemm.b.scale.value])
        for mode, dot in main_loops(gemm.a, gemm.b, gemm.compute_dtype):
            constexprs = dict.fromkeys(_UNIT_STRIDES, 1) | cfg | dict(
                A_GRID=ca.grid, A_SCALE=ca.scale, B_GRID=cb.grid, B_SCALE=cb.scale, BLOCK=gemm.a.block, MODE=mode,
                DOT=DOT_DTYPES[dot], EVEN_K=True)
            if mode == MODE_BLOCKSCALE:
                constexprs["BLOCK_K"] = gemm.a.block
            loop = "dequant" if mode == MODE_DEQUANT else "blockscale"
            variants.append(KernelVariant.build(
                f"scaled_mm[{gemm.name} {loop}-{dot}]", gemm.label, _scaled_mm_kernel,
                {k: v for k, v in arg_types.items() if k not in constexprs}, constexprs,
                aligned=("a_codes", "b_codes", "c_ptr", "M", "N", "K2", "s_am", "s_bn", "s_cm"), options=options,
                formats=(gemm.a, gemm.b), path=GemmPath.EMULATED))
    return variants
