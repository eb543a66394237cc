"""Dequantize packed codes: ``(grid_value x scale) [x tensor_scale]`` in FP32, cast to a dtype.

``dequantize(..., apply_tensor_scale=True)`` is ``numerics.dequantize`` (the ``ufp4::dequantize`` op);
``apply_tensor_scale=False`` gives the GEMM reference's operand (``code x scale`` rounded to the compute
dtype; the tensor scales belong to the GEMM's epilogue), used by the dequantize + cuBLAS GEMM path.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ufp4_compile.kernels.common import decode_nibbles, decode_scales, format_constants
from ufp4_compile.numerics.formats import OperandFormat, ScaleFormat
from ufp4_compile.numerics.quantize import as_format, padded_length


@triton.jit
def _dequantize_tile(codes_ptr, scales_ptr, ts_ptr, out_ptr, O, L2, s_page, s_o, s_l, ss_page, ss_o, ss_l,
                     pid_0, pid_1, pid_2,
                     GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, APPLY_TS: tl.constexpr,
                     ROWWISE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_L2: tl.constexpr):
    """One program's tile; ``(pid_0, pid_1, pid_2)`` its place in the launch grid."""
    page = pid_2.to(tl.int64)
    offs_o = (pid_0 * BLOCK_O + tl.arange(0, BLOCK_O)).to(tl.int64)
    offs_l2 = (pid_1 * BLOCK_L2 + tl.arange(0, BLOCK_L2)).to(tl.int64)
    mask = (offs_o < O)[:, None] & (offs_l2 < L2)[None, :]
    packed = tl.load(codes_ptr + page * s_page + offs_o[:, None] * s_o + offs_l2[None, :] * s_l,
                     mask=mask, other=0).to(tl.int32)
    values = tl.reshape(tl.join(decode_nibbles(packed & 15, GRID), decode_nibbles(packed >> 4, GRID)),
                        (BLOCK_O, 2 * BLOCK_L2))
    NB: tl.constexpr = 2 * BLOCK_L2 // BLOCK
    offs_b = pid_1.to(tl.int64) * NB + tl.arange(0, NB)
    LB = (2 * L2) // BLOCK
    s_mask = (offs_o < O)[:, None] & (offs_b < LB)[None, :]
    raw = tl.load(scales_ptr + page * ss_page + offs_o[:, None] * ss_o + offs_b[None, :] * ss_l, mask=s_mask)
    s = tl.where(s_mask, decode_scales(raw, SCALE), 0.0)
    out = tl.reshape(tl.reshape(values, (BLOCK_O, NB, BLOCK)) * s[:, :, None], (BLOCK_O, 2 * BLOCK_L2))
    if APPLY_TS:
        out = out * tl.load(ts_ptr)
    L = 2 * L2
    offs_l = pid_1.to(tl.int64) * (2 * BLOCK_L2) + tl.arange(0, 2 * BLOCK_L2)
    if ROWWISE:
        dst = offs_o[:, None] * L + offs_l[None, :]
    else:
        dst = page * L * O + offs_l[None, :] * O + offs_o[:, None]
    out_mask = (offs_o < O)[:, None] & (offs_l < L)[None, :]
    tl.store(out_ptr + dst, out.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dequantize_kernel(codes_ptr, scales_ptr, ts_ptr, out_ptr, O, L2, s_page, s_o, s_l, ss_page, ss_o, ss_l,
                       GRID: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr, APPLY_TS: tl.constexpr,
                       ROWWISE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_L2: tl.constexpr):
    _dequantize_tile(codes_ptr, scales_ptr, ts_ptr, out_ptr, O, L2, s_page, s_o, s_l, ss_page, ss_o, ss_l,
                     tl.program_id(0), tl.program_id(1), tl.program_id(2), GRID, SCALE, BLOCK, APPLY_TS, ROWWISE,
                     BLOCK_O, BLOCK_L2)


@triton.jit
def _dequantize_pair_kernel(a_codes_ptr, a_scales_ptr, a_ts_ptr, a_out_ptr, a_O, a_L2, a_s_page, a_s_o, a_s_l,
                            a_ss_page, a_ss_o, a_ss_l, a_g0, a_g1, a_g2,
                            b_codes_ptr, b_scales_ptr, b_ts_ptr, b_out_ptr, b_O, b_L2, b_s_page, b_s_o, b_s_l,
                            b_ss_page, b_ss_o, b_ss_l, b_g0, b_g1,
                            A_GRID: tl.constexpr, A_SCALE: tl.constexpr, A_BLOCK: tl.constexpr,
                            A_APPLY_TS: tl.constexpr, A_ROWWISE: tl.constexpr, A_BLOCK_O: tl.constexpr,
                            A_BLOCK_L2: tl.constexpr,
                            B_GRID: tl.constexpr, B_SCALE: tl.constexpr, B_BLOCK: tl.constexpr,
                            B_APPLY_TS: tl.constexpr, B_ROWWISE: tl.constexpr, B_BLOCK_O: tl.constexpr,
                            B_BLOCK_L2: tl.constexpr):
    """Two dequantizations (any codes, any formats) in one launch: the first ``a_g0 * a_g1 * a_g2`` programs
    run job a's grid, the rest job b's, each program the tile it runs in its own launch."""
    pid = tl.program_id(0)
    n_a = a_g0 * a_g1 * a_g2
    if pid < n_a:
        _dequantize_tile(a_codes_ptr, a_scales_ptr, a_ts_ptr, a_out_ptr, a_O, a_L2, a_s_page, a_s_o, a_s_l,
                         a_ss_page, a_ss_o, a_ss_l, pid % a_g0, (pid // a_g0) % a_g1, pid // (a_g0 * a_g1),
                         A_GRID, A_SCALE, A_BLOCK, A_APPLY_TS, A_ROWWISE, A_BLOCK_O, A_BLOCK_L2)
    else:
        q = pid - n_a
        _dequantize_tile(b_codes_ptr, b_scales_ptr, b_ts_ptr, b_out_ptr, b_O, b_L2, b_s_page, b_s_o, b_s_l,
                         b_ss_page, b_ss_o, b_ss_l, q % b_g0, (q // b_g0) % b_g1, q // (b_g0 * b_g1),
                         B_GRID, B_SCALE, B_BLOCK, B_APPLY_TS, B_ROWWISE, B_BLOCK_O, B_BLOCK_L2)


# The tile of a dequantize launch: values a program, warps, and the most code bytes a program's row holds
# along the quantized axis (row-wise, column-wise): 32 values a thread. Row-wise a program writes 16 rows of
# 256 values, column-wise 32 rows of 128 (512 and 256 contiguous bytes of bf16): on the H200, bf16 8192^2,
# every format's dequantize ran faster than at 32 rows of 128 row-wise and 64 of 64 column-wise, 0.62-0.93 of
# copy against 0.61-0.90 in the same run (benchmarks/quantize.py's dequantize tiles; docs/kernels.md).
PLAN_ELEMENTS, PLAN_WARPS, PLAN_MAX_L2 = 4096, 4, {True: 128, False: 16}
PLAN_ARGS = ("O", "L2", "s_page", "s_o", "s_l", "ss_page", "ss_o", "ss_l")  # launch_plan's args, in order


def pair_launch(a: tuple, b: tuple) -> tuple[tuple, dict, dict]:
    """(grid, scalars, constexprs) of one launch running the :func:`launch_plan` results ``a`` and ``b``."""
    scalars, constexprs = {}, {}
    for p, (grid, args, kwargs) in (("a", a), ("b", b)):
        scalars.update({f"{p}_{k}": v for k, v in zip(PLAN_ARGS, args)})
        scalars.update({f"{p}_g0": grid[0], f"{p}_g1": grid[1]})
        constexprs.update({f"{p.upper()}_{k}": v for k, v in kwargs.items()})
    scalars["a_g2"] = a[0][2]
    n = a[0][0] * a[0][1] * a[0][2] + b[0][0] * b[0][1] * b[0][2]
    return (n, 1, 1), scalars, constexprs


def _view3(t: torch.Tensor, axis: int) -> tuple[torch.Tensor, bool]:
    if axis == t.ndim - 1:
        return t.reshape(1, -1, t.shape[axis]), True
    pages = 1
    for d in t.shape[:axis]:
        pages *= d
    return t.reshape(pages, t.shape[axis], -1), False


@functools.lru_cache(maxsize=4096)  # bounded: shapes that never repeat (dynamic shapes) must not grow it
def launch_plan(shape3: tuple, stride3: tuple, scale_stride3: tuple, rowwise: bool, fmt: OperandFormat,
                apply_tensor_scale: bool, elements: int = PLAN_ELEMENTS,
                max_l2: int | None = None) -> tuple[tuple, tuple, dict]:
    """(grid, strides and sizes, launch kwargs) of codes viewed as ``shape3``, computed once per call site.
    ``elements``: the values per program (4096 at the launch's four warps; a launch at fewer warps, as the
    dual launch that takes two dequantizations, plans fewer). ``max_l2``: the most code bytes a program's
    row holds along the quantized axis (``PLAN_MAX_L2`` unless given). Each value is decoded alone, so any
    tile gives the same bits."""
    c = format_constants(fmt)
    if rowwise:
        pages, O, L2 = 1, shape3[1], shape3[2]
        strides = (0, stride3[1], stride3[2], 0, scale_stride3[1], scale_stride3[2])
    else:
        pages, L2, O = shape3
        strides = (stride3[0], stride3[2], stride3[1], scale_stride3[0], scale_stride3[2], scale_stride3[1])
    if max_l2 is None:
        max_l2 = PLAN_MAX_L2[rowwise]
    block_l2 = max(fmt.block // 2, min(triton.next_power_of_2(L2), max_l2, elements // 32))
    block_o = max(16, min(triton.next_power_of_2(O), elements // (2 * block_l2)))
    grid = (triton.cdiv(O, block_o), triton.cdiv(L2, block_l2), pages)
    kwargs = dict(GRID=c.grid, SCALE=c.scale, BLOCK=fmt.block, APPLY_TS=apply_tensor_scale, ROWWISE=rowwise,
                  BLOCK_O=block_o, BLOCK_L2=block_l2)
    return grid, (O, L2, *strides), kwargs


def _checked(codes: torch.Tensor, scales: torch.Tensor, axis, fmt) -> tuple[OperandFormat, int, list[int]]:
    """(format, normalized axis, values shape) of a dequantize call, or the ValueError naming what is wrong."""
    fmt = as_format(fmt)
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes.dtype={codes.dtype} is not valid; valid values: torch.uint8")
    if isinstance(axis, bool) or not isinstance(axis, int) or codes.ndim == 0 or not -codes.ndim <= axis < codes.ndim:
        raise ValueError(f"axis={axis!r} is not valid for {codes.ndim}-d codes; valid values: "
                         f"{-codes.ndim}..{codes.ndim - 1}")
    axis %= codes.ndim
    shape = list(codes.shape)
    shape[axis] *= 2
    expected = list(codes.shape)
    expected[axis] = shape[axis] // fmt.block
    if list(scales.shape) != expected or shape[axis] % fmt.block:
        raise ValueError(f"scales has shape {tuple(scales.shape)}, expected {tuple(expected)} for codes "
                         f"{tuple(codes.shape)} along axis {axis} with block {fmt.block}")
    return fmt, axis, shape


def dequantize(codes: torch.Tensor, scales: torch.Tensor, tensor_scale: torch.Tensor, axis: int,
               fmt: OperandFormat | str, dtype: torch.dtype = torch.float32, *,
               apply_tensor_scale: bool = True, length: int | None = None,
               config: dict | None = None) -> torch.Tensor:
    """Values of packed ``codes`` quantized along ``axis`` (a contiguous tensor in the original shape).

    Codes cover whole blocks; ``length`` (the quantized tensor's length along ``axis``, when it is not a
    multiple of the block) crops the padding. Without it the result has ``2 * codes.shape[axis]`` elements.
    ``config`` (benchmarks): ``{"elements": .., "num_warps": .., "max_l2": ..}`` overrides the tile
    (:func:`launch_plan`'s arguments and the launch's warps); the bits do not depend on it.
    """
    config = dict(config or {})
    num_warps = config.pop("num_warps", PLAN_WARPS)
    unknown = set(config) - {"elements", "max_l2"}
    if unknown:
        raise ValueError(f"config has unknown keys {sorted(unknown)}; valid keys: elements, max_l2, num_warps")
    fmt, axis, shape = _checked(codes, scales, axis, fmt)
    if length is not None and not (0 <= length <= shape[axis] and padded_length(length, fmt.block) == shape[axis]):
        raise ValueError(f"length={length!r} is not valid for codes of {shape[axis]} elements along axis {axis}; "
                         f"valid values: {max(shape[axis] - fmt.block + 1, 0)}..{shape[axis]}")
    out = torch.empty(shape, dtype=dtype, device=codes.device)
    if out.numel() != 0:
        c3, rowwise = _view3(codes, axis)
        s3, _ = _view3(scales, axis)
        grid, args, kwargs = launch_plan(tuple(c3.shape), c3.stride(), s3.stride(), rowwise, fmt,
                                         apply_tensor_scale, **config)
        _dequantize_kernel[grid](c3, s3, tensor_scale, out, *args, **kwargs, num_warps=num_warps)
    if length is not None and length != shape[axis]:
        out = out.narrow(axis, 0, length).contiguous()
    return out


def dequantize_pair(jobs) -> list[torch.Tensor]:
    """Two :func:`dequantize` calls in one launch: ``jobs`` is two ``(codes, scales, tensor_scale, axis, fmt,
    dtype)``; each result is bit for bit its single call's (no ``length`` cropping here)."""
    if len(jobs) != 2:
        raise ValueError(f"jobs has {len(jobs)} entries; valid: two (codes, scales, tensor_scale, axis, fmt, dtype)")
    checked = [_checked(codes, scales, axis, fmt) for codes, scales, _, axis, fmt, _ in jobs]
    if any(math.prod(shape) == 0 for _, _, shape in checked):
        return [dequantize(*job) for job in jobs]
    prepared = [prepare(job, check) for job, check in zip(jobs, checked)]
    grid, scalars, constexprs = pair_launch(*(plan for plan, _, _ in prepared))
    tensors = {f"{p}_{k}": v for p, (_, job_tensors, _) in zip("ab", prepared) for k, v in job_tensors.items()}
    _dequantize_pair_kernel[grid](**tensors, **scalars, **constexprs, num_warps=PLAN_WARPS)
    return [out for _, _, out in prepared]


def prepare(job, checked, elements: int = PLAN_ELEMENTS) -> tuple:
    """(launch plan, the kernel's tensors by argument name, the output) of one dequantize call ``job``
    (``(codes, scales, tensor_scale, axis, fmt, dtype)``, ``checked`` its :func:`_checked` result) at
    ``elements`` values a program (:func:`launch_plan`), for a launch that takes it beside other jobs."""
    codes, scales, tensor_scale, _, _, dtype = job
    fmt, axis, shape = checked
    out = torch.empty(shape, dtype=dtype, device=codes.device)
    c3, rowwise = _view3(codes, axis)
    s3, _ = _view3(scales, axis)
    plan = launch_plan(tuple(c3.shape), c3.stride(), s3.stride(), rowwise, fmt, True, elements)
    return plan, dict(codes_ptr=c3, scales_ptr=s3, ts_ptr=tensor_scale, out_ptr=out), out


# ---- compile-only variants (ufp4_compile.kernels.targets protocol) --------------------------------------

_SCALE_POINTERS = {ScaleFormat.FP32: "*fp32", ScaleFormat.E4M3: "*fp8e4nv", ScaleFormat.E8M0: "*u8"}
_VARIANT_SIZE = 4096  # variants use the launcher's tile for a 4096 x 4096 operand


def variant_tile(fmt: OperandFormat, rowwise: bool, elements: int = PLAN_ELEMENTS) -> dict:
    """``BLOCK_O`` and ``BLOCK_L2`` of :func:`launch_plan` for the codes of a ``_VARIANT_SIZE`` square operand
    (compile-only variants: this module's and the dual launches' dequantize jobs)."""
    half = _VARIANT_SIZE // 2
    shape3 = (1, _VARIANT_SIZE, half) if rowwise else (1, half, _VARIANT_SIZE)
    _, _, kwargs = launch_plan(shape3, (0, 0, 0), (0, 0, 0), rowwise, fmt, False, elements)
    return dict(BLOCK_O=kwargs["BLOCK_O"], BLOCK_L2=kwargs["BLOCK_L2"])


def compile_variants():
    """The instances the dequantize + matmul GEMM path launches: one per GEMM operand format of the presets
    (row-wise along K, bf16 output, tensor scales left to the GEMM)."""
    from ufp4_compile.kernels.targets import KernelVariant, preset_gemms
    from ufp4_compile.dispatch import GemmPath

    operands: dict[tuple, tuple[OperandFormat, dict]] = {}
    for gemm in preset_gemms():
        for fmt in (gemm.a, gemm.b):
            key = (fmt.grid, fmt.scale, fmt.block)  # what the kernel sees
            operands.setdefault(key, (fmt, {}))[1].update(dict.fromkeys(gemm.label.split(", ")))
    variants = []
    for fmt, presets in operands.values():
        c = format_constants(fmt)
        types = dict(codes_ptr="*u8", scales_ptr=_SCALE_POINTERS[fmt.scale], ts_ptr="*fp32", out_ptr="*bf16",
                     O="i32", L2="i32", s_page="i32", s_o="i32", ss_page="i32", ss_o="i32")
        constexprs = dict(s_l=1, ss_l=1, GRID=c.grid, SCALE=c.scale, BLOCK=fmt.block, APPLY_TS=False, ROWWISE=True,
                          **variant_tile(fmt, True))
        short = fmt.spec.rsplit("/", 1)[0].replace("16x16", "16")
        variants.append(KernelVariant.build(
            f"dequantize[{short}]", ", ".join(presets), _dequantize_kernel, types, constexprs,
            aligned=("codes_ptr", "scales_ptr", "out_ptr", "O", "L2", "s_o"), options={"num_warps": PLAN_WARPS},
            formats=(fmt, fmt), path=GemmPath.DEQUANT_MM))
    # The backward's two saved-codes dequantizations in one launch (backward pairing): each format with itself,
    # column-wise (the saved codes of X and W are quantized along the token and output axes).
    for fmt, presets in operands.values():
        c = format_constants(fmt)
        types, constexprs = {}, {}
        for p in ("a", "b"):
            types.update({f"{p}_codes_ptr": "*u8", f"{p}_scales_ptr": _SCALE_POINTERS[fmt.scale],
                          f"{p}_ts_ptr": "*fp32", f"{p}_out_ptr": "*bf16", f"{p}_O": "i32", f"{p}_L2": "i32",
                          f"{p}_s_page": "i32", f"{p}_s_l": "i32", f"{p}_ss_page": "i32", f"{p}_ss_l": "i32",
                          f"{p}_g0": "i32", f"{p}_g1": "i32"})
            constexprs.update({f"{p}_s_o": 1, f"{p}_ss_o": 1, f"{p.upper()}_GRID": c.grid,
                               f"{p.upper()}_SCALE": c.scale, f"{p.upper()}_BLOCK": fmt.block,
                               f"{p.upper()}_APPLY_TS": True, f"{p.upper()}_ROWWISE": False,
                               **{f"{p.upper()}_{k}": v for k, v in variant_tile(fmt, False).items()}})
        types["a_g2"] = "i32"
        short = fmt.spec.rsplit("/", 1)[0].replace("16x16", "16")
        variants.append(KernelVariant.build(
            f"dequantize_pair[{short} column-wise x2]", ", ".join(presets), _dequantize_pair_kernel, types,
            constexprs, aligned=("a_codes_ptr", "b_codes_ptr", "a_out_ptr", "b_out_ptr", "a_O", "b_O"),
            options={"num_warps": PLAN_WARPS}, formats=(fmt, fmt), path=GemmPath.DEQUANT_MM))
    return variants
