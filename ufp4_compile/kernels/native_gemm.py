"""Native block-scaled 4-bit GEMM with ``tl.dot_scaled``: Blackwell (sm_100) and MI350 (gfx950).

``C = A B^T`` for operands quantized along K (docs/pipeline.md, ``ufp4::scaled_mm``): codes ``(M, K/2)``
and ``(N, K/2)`` with two codes per byte along K, low nibble first; block scales ``(M, K/block)`` and
``(N, K/block)``; any strides. The hardware applies the block scales inside the MMA:

- E2M1 codes go to ``tl.dot_scaled`` as they are: its packed ``e2m1`` layout is ours (first element in the
  low nibble, packed along K).
- INT4 codes (-7..7) are converted in registers to FP8 E4M3 values (exact) and go in as ``e4m3``.
- E8M0 scales (uint8 biased exponents, block 32) and E4M3 scales (``float8_e4m3fn``, block 16, NVFP4) are
  passed unchanged; Triton picks the block from the scale dtype. The FP32 tensor scales (NVFP4 two-level
  scales) multiply the FP32 accumulator in the epilogue.

The main loop is :func:`native_main_loop`, a ``@triton.jit`` function an Inductor template can call; the
standalone kernel adds tile ordering and the epilogue. Which format pairs run here on which GPU is decided
by ``ufp4_compile.dispatch``. These kernels
have been **compiled** for sm_100 and gfx950 (``ufp4 kernels``) but never run on either: the project has
neither GPU. On sm_90 Triton lowers ``dot_scaled`` with E8M0 scales to a bf16 ``wgmma`` after upcasting,
so the E8M0 variants also run (slowly) on Hopper, which is how their layout is checked against the
reference on a GPU we have. ``EMULATE_DOT`` swaps ``dot_scaled`` for a decode + ``tl.dot`` of the very
operands that would be handed to it, so the Triton interpreter (which has no ``dot_scaled``) can check
the addressing, masking, INT4 conversion and epilogue on CPU.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from ufp4_compile.kernels.common import GRID_IDS, SCALE_IDS, decode_nibbles, decode_scales, pow2
from ufp4_compile.numerics.formats import Grid, OperandFormat, ScaleFormat

# The format ids of kernels/common.py's decode helpers (used by EMULATE_DOT only).
_E2M1_ID = tl.constexpr(GRID_IDS[Grid.E2M1])
_E8M0_ID = tl.constexpr(SCALE_IDS[ScaleFormat.E8M0])
_E4M3_ID = tl.constexpr(SCALE_IDS[ScaleFormat.E4M3])


@triton.jit
def _unpack_nibbles(packed):
    """``[R, C]`` uint8, two 4-bit codes per byte (low nibble first) -> ``[R, 2C]`` uint8 nibbles."""
    lo = packed & 0xF
    hi = packed >> 4
    return tl.reshape(tl.join(lo, hi), (packed.shape[0], 2 * packed.shape[1]))


@triton.jit
def _int4_to_e4m3(packed):
    """Packed INT4 codes (two's complement nibbles) -> FP8 E4M3 values, exact for -8..7."""
    nibbles = _unpack_nibbles(packed).to(tl.int8)
    codes = (nibbles ^ 8) - 8
    return codes.to(tl.float32).to(tl.float8e4nv)


@triton.jit
def _emulated_dot_scaled(a, a_scale, A_ELEM: tl.constexpr, b, b_scale, B_ELEM: tl.constexpr, acc,
                         SCALE_BLOCK: tl.constexpr):
    """What ``tl.dot_scaled(a, a_scale, A_ELEM, b, b_scale, B_ELEM, acc)`` computes, from the same operands."""
    SCALE: tl.constexpr = _E8M0_ID if SCALE_BLOCK == 32 else _E4M3_ID
    if A_ELEM == "e2m1":
        a_val = decode_nibbles(_unpack_nibbles(a).to(tl.int32), _E2M1_ID)
    else:
        a_val = a.to(tl.float32)
    if B_ELEM == "e2m1":  # b is [K/2, N], packed along K
        b_val = tl.trans(decode_nibbles(_unpack_nibbles(tl.trans(b)).to(tl.int32), _E2M1_ID))
    else:
        b_val = b.to(tl.float32)
    sa = decode_scales(a_scale, SCALE)
    sb = decode_scales(b_scale, SCALE)
    rows_a: tl.constexpr = a_val.shape[0]
    cols_b: tl.constexpr = b_val.shape[1]
    k_dim: tl.constexpr = a_val.shape[1]
    sa = tl.reshape(tl.broadcast_to(sa[:, :, None], (rows_a, k_dim // SCALE_BLOCK, SCALE_BLOCK)), (rows_a, k_dim))
    sb = tl.reshape(tl.broadcast_to(sb[:, :, None], (cols_b, k_dim // SCALE_BLOCK, SCALE_BLOCK)), (cols_b, k_dim))
    return tl.dot(a_val * sa, b_val * tl.trans(sb), acc, input_precision="ieee")


@triton.jit
def native_main_loop(a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, offs_m, offs_n, K,
                     stride_am, stride_ak, stride_bn, stride_bk, stride_asm, stride_ask, stride_bsn, stride_bsk,
                     A_ELEM: tl.constexpr, B_ELEM: tl.constexpr, SCALE_BLOCK: tl.constexpr,
                     EVEN_K: tl.constexpr, EMULATE_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr):
    """FP32 ``sum_k A[offs_m, k] B[offs_n, k]`` with block scales (tensor scales not applied).

    Shared by the standalone kernel and an Inductor template. ``offs_m`` / ``offs_n`` must be valid rows
    (wrap them with ``% M``). Scale pointers may be uint8 or float8_e4m3fn: scales are read as bytes (a
    masked FP8 load cannot take a zero ``other``) and E4M3 ones bitcast back.
    """
    a_scale_ptr = a_scale_ptr.to(tl.pointer_type(tl.uint8))
    b_scale_ptr = b_scale_ptr.to(tl.pointer_type(tl.uint8))
    offs_kp = tl.arange(0, BLOCK_K // 2)
    offs_ks = tl.arange(0, BLOCK_K // SCALE_BLOCK)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_kp[None, :] * stride_ak
    b_ptrs = b_ptr + offs_n[:, None] * stride_bn + offs_kp[None, :] * stride_bk
    as_ptrs = a_scale_ptr + offs_m[:, None] * stride_asm + offs_ks[None, :] * stride_ask
    bs_ptrs = b_scale_ptr + offs_n[:, None] * stride_bsn + offs_ks[None, :] * stride_bsk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in tl.range(0, tl.cdiv(K, BLOCK_K), num_stages=NUM_STAGES):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
            a_scale = tl.load(as_ptrs)
            b_scale = tl.load(bs_ptrs)
        else:  # K is a multiple of the block, not of BLOCK_K: zero codes and scales past K
            kp_left = (K - kb * BLOCK_K) // 2
            ks_left = (K - kb * BLOCK_K) // SCALE_BLOCK
            a = tl.load(a_ptrs, mask=offs_kp[None, :] < kp_left, other=0)
            b = tl.load(b_ptrs, mask=offs_kp[None, :] < kp_left, other=0)
            a_scale = tl.load(as_ptrs, mask=offs_ks[None, :] < ks_left, other=0)
            b_scale = tl.load(bs_ptrs, mask=offs_ks[None, :] < ks_left, other=0)
        if SCALE_BLOCK == 16:  # E4M3 scales travel as their bytes until here
            a_scale = a_scale.to(tl.float8e4nv, bitcast=True)
            b_scale = b_scale.to(tl.float8e4nv, bitcast=True)
        if A_ELEM == "e4m3":
            a = _int4_to_e4m3(a)
        if B_ELEM == "e4m3":
            b = _int4_to_e4m3(b)
        b = tl.trans(b)  # [K (packed for e2m1), N]
        if EMULATE_DOT:
            acc = _emulated_dot_scaled(a, a_scale, A_ELEM, b, b_scale, B_ELEM, acc, SCALE_BLOCK)
        else:
            acc = tl.dot_scaled(a, a_scale, A_ELEM, b, b_scale, B_ELEM, acc)
        a_ptrs += (BLOCK_K // 2) * stride_ak
        b_ptrs += (BLOCK_K // 2) * stride_bk
        as_ptrs += (BLOCK_K // SCALE_BLOCK) * stride_ask
        bs_ptrs += (BLOCK_K // SCALE_BLOCK) * stride_bsk
    return acc


@triton.jit
def _native_scaled_mm_kernel(
    a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, a_ts_ptr, b_ts_ptr, c_ptr,  # scales as uint8 bytes
    M, N, K,
    stride_am, stride_ak, stride_bn, stride_bk,  # packed codes, in bytes
    stride_asm, stride_ask, stride_bsn, stride_bsk,  # block scales
    stride_cm, stride_cn,
    A_ELEM: tl.constexpr, B_ELEM: tl.constexpr,  # "e2m1" (E2M1 codes) or "e4m3" (INT4 codes -> FP8)
    SCALE_BLOCK: tl.constexpr,  # 32: E8M0 scales, 16: E4M3 scales (NVFP4)
    TENSOR_SCALES: tl.constexpr, EVEN_K: tl.constexpr, EMULATE_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % group_size
    pid_n = (pid % (GROUP_M * grid_n)) // group_size

    # Rows past M / N wrap around (their results are masked at the store): loads stay unmasked.
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    acc = native_main_loop(a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, offs_m, offs_n, K,
                           stride_am, stride_ak, stride_bn, stride_bk, stride_asm, stride_ask, stride_bsn,
                           stride_bsk, A_ELEM, B_ELEM, SCALE_BLOCK, EVEN_K, EMULATE_DOT, BLOCK_M, BLOCK_N,
                           BLOCK_K, NUM_STAGES)
    if TENSOR_SCALES:  # NVFP4 two-level scales: FP32 tensor scales in the epilogue
        acc = acc * (tl.load(a_ts_ptr) * tl.load(b_ts_ptr))
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = c_ptr + rows[:, None] * stride_cm + cols[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


# The jit functions native_main_loop calls, in dependency order: a template appends their sources.
NATIVE_HELPERS = (pow2, decode_nibbles, decode_scales, _unpack_nibbles, _int4_to_e4m3, _emulated_dot_scaled,
                  native_main_loop)


# ---- formats and launcher ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NativeConfig:
    block_m: int = 128
    block_n: int = 128
    block_k: int = 128  # elements; 64 bytes of E2M1 codes per row
    group_m: int = 8
    num_stages: int = 3
    num_warps: int = 4


DEFAULT_CONFIG = NativeConfig()
# CPU tensors run in the Triton interpreter (emulate_dot=True): small tiles keep its NumPy work small.
INTERPRETER_CONFIG = NativeConfig(block_m=32, block_n=32, block_k=64, group_m=2, num_stages=1)


def native_operand(fmt: OperandFormat | str) -> tuple[str, int]:
    """``(dot_scaled element format, scale block)`` of ``fmt``; ValueError if it has no native form."""
    if isinstance(fmt, str):
        fmt = OperandFormat.from_spec(fmt)
    elem = {Grid.E2M1: "e2m1", Grid.INT4: "e4m3"}[fmt.grid]
    if fmt.scale is ScaleFormat.E8M0 and fmt.block == 32:
        return elem, 32
    if fmt.scale is ScaleFormat.E4M3 and fmt.block == 16 and fmt.grid is Grid.E2M1:
        return elem, 16
    raise ValueError(f"format {fmt.spec!r} has no native dot_scaled form; valid: E2M1 or INT4 with "
                     f"E8M0 scales of block 32 ('e2m1/32/e8m0/...', 'int4/32/e8m0/...'), or E2M1 with E4M3 "
                     f"scales of block 16 ('e2m1/16/e4m3/...')")


def _check_operand(name: str, codes: torch.Tensor, scales: torch.Tensor, rows: int, k: int, block: int):
    if codes.dtype != torch.uint8 or codes.dim() != 2 or codes.shape[0] != rows:
        raise ValueError(f"{name}_codes must be a 2-D uint8 tensor with {rows} rows, got "
                         f"{codes.dtype} {tuple(codes.shape)}")
    want = torch.uint8 if block == 32 else torch.float8_e4m3fn
    if scales.dtype != want or tuple(scales.shape) != (rows, k // block):
        raise ValueError(f"{name}_scales must be {want} of shape {(rows, k // block)}, got "
                         f"{scales.dtype} {tuple(scales.shape)}")


def native_scaled_mm(a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale,
                     a_fmt: OperandFormat | str, b_fmt: OperandFormat | str,
                     out_dtype: torch.dtype = torch.bfloat16, config: NativeConfig | None = None,
                     emulate_dot: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """``C = A B^T`` with ``tl.dot_scaled``; the arguments of ``ufp4::scaled_mm`` (docs/pipeline.md).

    ``emulate_dot=True`` replaces ``dot_scaled`` by an FP32 decode + ``tl.dot`` (for the interpreter).
    ``config`` defaults to :data:`DEFAULT_CONFIG` (:data:`INTERPRETER_CONFIG` for CPU tensors); ``out``, an
    ``(M, N)`` tensor, receives the result (its dtype wins over ``out_dtype``).
    """
    a_elem, a_block = native_operand(a_fmt)
    b_elem, b_block = native_operand(b_fmt)
    if a_block != b_block:
        raise ValueError(f"a_fmt and b_fmt need one scale kind and block, got blocks {a_block} and {b_block}")
    M, N, K = a_codes.shape[0], b_codes.shape[0], 2 * a_codes.shape[-1]
    if K % a_block or b_codes.dim() != 2 or 2 * b_codes.shape[1] != K:
        raise ValueError(f"a_codes {tuple(a_codes.shape)} and b_codes {tuple(b_codes.shape)} must hold the "
                         f"same K (a multiple of {a_block}) packed two codes per byte")
    _check_operand("a", a_codes, a_scales, M, K, a_block)
    _check_operand("b", b_codes, b_scales, N, K, b_block)
    if a_codes.device.type == "cpu" and not emulate_dot:
        raise ValueError("native_scaled_mm on CPU tensors runs in the Triton interpreter, which has no "
                         "tl.dot_scaled: pass emulate_dot=True, or use GPU tensors")
    if out is None:
        out = torch.empty((M, N), device=a_codes.device, dtype=out_dtype)
    elif tuple(out.shape) != (M, N) or out.device != a_codes.device:
        raise ValueError(f"out must be an ({M}, {N}) tensor on {a_codes.device}, got {tuple(out.shape)} on "
                         f"{out.device}")
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    ts_a = a_tensor_scale.reshape(1).float()
    ts_b = b_tensor_scale.reshape(1).float()
    cfg = config or (INTERPRETER_CONFIG if a_codes.device.type == "cpu" else DEFAULT_CONFIG)
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n),)
    _native_scaled_mm_kernel[grid](
        a_codes, b_codes, a_scales.view(torch.uint8), b_scales.view(torch.uint8), ts_a, ts_b, out, M, N, K,
        a_codes.stride(0), a_codes.stride(1), b_codes.stride(0), b_codes.stride(1),
        a_scales.stride(0), a_scales.stride(1), b_scales.stride(0), b_scales.stride(1),
        out.stride(0), out.stride(1),
        A_ELEM=a_elem, B_ELEM=b_elem, SCALE_BLOCK=a_block, TENSOR_SCALES=a_block == 16,
        EVEN_K=K % cfg.block_k == 0, EMULATE_DOT=emulate_dot,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        NUM_STAGES=cfg.num_stages, num_warps=cfg.num_warps,
    )
    return out


# ---- compile-only variants (ufp4_compile.kernels.targets protocol) --------------------------------------

# (name, recipe label, a format, b format, EVEN_K): every format pair dispatch may send here.
_VARIANTS = (
    ("nvfp4", "nvfp4", "e2m1/16/e4m3/nearest", "e2m1/16x16/e4m3/nearest", True),
    ("nvfp4-k-tail", "nvfp4", "e2m1/16/e4m3/nearest", "e2m1/16x16/e4m3/nearest", False),
    ("mxfp4", "mxfp4", "e2m1/32/e8m0/nearest", "e2m1/32/e8m0/nearest", True),
    ("mxfp4-k-tail", "mxfp4", "e2m1/32/e8m0/nearest", "e2m1/32/e8m0/nearest", False),
    ("int4-e8m0", "int4/32/e8m0 (INT4 as FP8)", "int4/32/e8m0/nearest", "int4/32/e8m0/nearest", True),
    ("e2m1-x-int4-e8m0", "e2m1 x int4, e8m0/32", "e2m1/32/e8m0/nearest", "int4/32/e8m0/nearest", True),
)
_UNIT_STRIDES = ("stride_ak", "stride_bk", "stride_ask", "stride_bsk", "stride_cn")


def compile_variants(config: NativeConfig = DEFAULT_CONFIG):
    """The launcher's kernel instances (contiguous K, bf16 output) for ``ufp4 kernels``."""
    from ufp4_compile.kernels.targets import KernelVariant
    from ufp4_compile.dispatch import GemmPath

    pointers = ("a_ptr", "b_ptr", "a_scale_ptr", "b_scale_ptr", "a_ts_ptr", "b_ts_ptr", "c_ptr")
    types = {name: "*u8" for name in pointers} | {"a_ts_ptr": "*fp32", "b_ts_ptr": "*fp32", "c_ptr": "*bf16"}
    types |= {name: "i32" for name in _native_scaled_mm_kernel.arg_names
              if name not in types and (name in "MNK" or name.startswith("stride_"))}
    variants = []
    for name, recipe, a_spec, b_spec, even_k in _VARIANTS:
        a_fmt, b_fmt = OperandFormat.from_spec(a_spec), OperandFormat.from_spec(b_spec)
        (a_elem, block), (b_elem, _) = native_operand(a_fmt), native_operand(b_fmt)
        constexprs = {name: 1 for name in _UNIT_STRIDES} | dict(
            A_ELEM=a_elem, B_ELEM=b_elem, SCALE_BLOCK=block, TENSOR_SCALES=block == 16, EVEN_K=even_k,
            EMULATE_DOT=False, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
            GROUP_M=config.group_m, NUM_STAGES=config.num_stages)
        # E4M3 scales as float8_e4m3fn pointers, as a template receives them (the launcher passes bytes).
        scale_type = "*fp8e4nv" if block == 16 else "*u8"
        arg_types = dict(types, a_scale_ptr=scale_type, b_scale_ptr=scale_type)
        variants.append(KernelVariant.build(
            f"native_scaled_mm[{name}]", recipe, _native_scaled_mm_kernel,
            {k: v for k, v in arg_types.items() if k not in constexprs}, constexprs,
            aligned=pointers + ("M", "N", "K", "stride_am", "stride_bn", "stride_cm"),
            options={"num_warps": config.num_warps}, formats=(a_fmt, b_fmt), path=GemmPath.NATIVE))
    return variants
