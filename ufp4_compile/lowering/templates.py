"""The Inductor choices for ``ufp4::scaled_mm``, created once at import (their names are process-global).

- ``ufp4_scaled_mm`` (:data:`scaled_mm_template`): a ``TritonTemplate`` whose main loop is
  ``kernels.gemm.mm_main_loop`` (appended to the template source, so the template and the standalone
  kernel run the same arithmetic), storing through ``store_output`` so Inductor fuses epilogues.
- ``ufp4_dequant_mm`` (:data:`dequant_mm_choice`): an ``ExternKernelChoice``: dequantize both operands to the
  compute dtype (Triton), then cuBLAS with FP32 accumulation, tensor scales applied after.
- ``ufp4_native_mm`` (:data:`native_mm_choice`): an ``ExternKernelChoice`` calling the ``tl.dot_scaled``
  kernel (``kernels.native_gemm.native_scaled_mm``), for the targets where the dispatch puts it first.
  An extern call, so Inductor does not fuse epilogues into it.
"""

from __future__ import annotations

import contextlib

import torch
from torch._inductor.kernel.mm_common import mm_grid
from torch._inductor.select_algorithm import ExternKernelChoice, TritonTemplate

from ufp4_compile.kernels import common, gemm
from ufp4_compile.numerics.formats import ScaleFormat
from ufp4_compile.numerics.quantize import as_format
from ufp4_compile.ops import compute_dtype_of

_KERNEL = r"""
{{def_kernel("A_CODES", "A_SCALES", "A_TS", "B_CODES", "B_SCALES", "B_TS")}}
    M = {{size("A_CODES", 0)}}
    N = {{size("B_CODES", 0)}}
    K2 = {{size("A_CODES", 1)}}
    if M * N == 0:
        return
    s_am = {{stride("A_CODES", 0)}}
    s_ak = {{stride("A_CODES", 1)}}
    s_asm = {{stride("A_SCALES", 0)}}
    s_ask = {{stride("A_SCALES", 1)}}
    s_bn = {{stride("B_CODES", 0)}}
    s_bk = {{stride("B_CODES", 1)}}
    s_bsn = {{stride("B_SCALES", 0)}}
    s_bsk = {{stride("B_SCALES", 1)}}

    pid_m, pid_n = mm_tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = mm_main_loop(A_CODES, A_SCALES, B_CODES, B_SCALES, rm % M, rn % N, K2,
                       s_am, s_ak, s_asm, s_ask, s_bn, s_bk, s_bsn, s_bsk,
                       A_GRID, A_SCALE, B_GRID, B_SCALE, BLOCK, MODE, DOT, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K)
    acc = acc * (tl.load(A_TS) * tl.load(B_TS))

    idx_m = rm[:, None]
    idx_n = rn[None, :]
    mask = (idx_m < M) & (idx_n < N)
    {{store_output(("idx_m", "idx_n"), "acc", "mask", val_shape=("BLOCK_M", "BLOCK_N"))}}
"""

# The helpers the kernel calls, in dependency order (their sources are appended to the template).
_HELPERS = (common.pow2, common.decode_nibbles, common.decode_scales, gemm.mm_tile_ids, gemm.mm_load_scales,
            gemm.mm_load_halves, gemm.mm_load_block_codes, gemm.mm_dot, gemm.mm_main_loop)


def _helper_source(fn) -> str:
    src = getattr(fn, "src", None)
    if src is None:  # an interpreted function (TRITON_INTERPRET=1): read the source of the Python function
        import inspect
        import textwrap

        src = textwrap.dedent(inspect.getsource(fn.fn))
        src = src[src.index("def "):]
    return "@triton.jit\n" + src


def template_source() -> str:
    return _KERNEL + "\n\n" + "\n\n".join(_helper_source(fn) for fn in _HELPERS) + "\n"


scaled_mm_template = TritonTemplate(name="ufp4_scaled_mm", grid=mm_grid, source=template_source())


# ---- dequantize + cuBLAS -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _fp32_accumulation():
    """cuBLAS with FP32 products and reductions (no TF32, no reduced-precision bf16 split-K reductions)."""
    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_tf32, matmul.allow_bf16_reduced_precision_reduction)
    matmul.allow_tf32 = False
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_tf32, matmul.allow_bf16_reduced_precision_reduction = saved


def _mm_fp32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b^T`` accumulated and returned in FP32."""
    if a.dtype == torch.float32 or a.device.type != "cuda":
        return a.float() @ b.float().t()
    try:
        return torch.mm(a, b.t(), out_dtype=torch.float32)
    except (TypeError, RuntimeError):  # a torch without mm(out_dtype=): the same products, FP32 operands
        return a.float() @ b.float().t()


def ufp4_dequant_mm(a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale, *, a_fmt: str,
                    b_fmt: str, compute_dtype: str, out: torch.Tensor) -> torch.Tensor:
    """The reference GEMM done literally: operands ``code x scale`` in the compute dtype, BLAS in FP32."""
    from ufp4_compile.kernels.dequantize import dequantize

    dtype = compute_dtype_of(compute_dtype)
    a = dequantize(a_codes, a_scales, a_tensor_scale, 1, a_fmt, dtype, apply_tensor_scale=False)
    b = dequantize(b_codes, b_scales, b_tensor_scale, 1, b_fmt, dtype, apply_tensor_scale=False)
    unit_tensor_scales = all(as_format(f).scale is not ScaleFormat.E4M3 for f in (a_fmt, b_fmt))
    with _fp32_accumulation():
        if unit_tensor_scales and out.dtype == dtype:
            return torch.mm(a, b.t(), out=out)
        c = _mm_fp32_out(a, b)
    if unit_tensor_scales:
        return out.copy_(c)
    return torch.mul(c, a_tensor_scale * b_tensor_scale, out=out)  # one pass: scale in FP32, round once


dequant_mm_choice = ExternKernelChoice(ufp4_dequant_mm, name="ufp4_dequant_mm", has_out_variant=True)


# ---- native block-scaled MMA (tl.dot_scaled) -----------------------------------------------------------

def ufp4_native_mm(a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale, *, a_fmt: str,
                   b_fmt: str, out: torch.Tensor) -> torch.Tensor:
    """``native_scaled_mm`` into ``out``. CPU tensors (tests only: no CPU target offers this choice) run the
    kernel in the Triton interpreter with ``dot_scaled`` emulated."""
    from ufp4_compile.kernels.native_gemm import native_scaled_mm

    return native_scaled_mm(a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale, a_fmt, b_fmt,
                            out=out, emulate_dot=a_codes.device.type == "cpu")


native_mm_choice = ExternKernelChoice(ufp4_native_mm, name="ufp4_native_mm", has_out_variant=True)
