"""The custom ops of the ``torch.ops.ufp4`` namespace (docs/pipeline.md).

``quantize``, ``quantize_dequantize`` (the GEMM operand ``code x block scale`` in the compute dtype, without
writing codes: what a bf16 GEMM consumes where there are no 4-bit tensor cores), ``dequantize`` and
``scaled_mm``: each has a fake implementation (shape arithmetic only, so
symbolic shapes work) and a reference implementation that calls :mod:`ufp4_compile.numerics` and runs on
any device. Kernels and Inductor lowerings replace the reference on GPUs; Inductor turns an op without a
lowering into an extern fallback call. Formats travel as ``OperandFormat.spec`` strings.

Importing this module registers the ops; importing it again (or reloading it) is harmless.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ufp4_compile.numerics.formats import OperandFormat, ScaleFormat
from ufp4_compile.recipes import ComputeDtype, parse_enum

NAMESPACE = "ufp4"

QUANTIZE_SCHEMA = ("(Tensor x, int axis, str fmt, int rht, int rht_seed, Tensor? seed, int offset) "
                   "-> (Tensor codes, Tensor scales, Tensor tensor_scale)")
QUANTIZE_DEQUANTIZE_SCHEMA = ("(Tensor x, int axis, str fmt, int rht, int rht_seed, Tensor? seed, int offset, "
                              "ScalarType dtype) -> (Tensor values, Tensor tensor_scale)")
DEQUANTIZE_SCHEMA = ("(Tensor codes, Tensor scales, Tensor tensor_scale, int axis, str fmt, ScalarType dtype) "
                     "-> Tensor")
SCALED_MM_SCHEMA = ("(Tensor a_codes, Tensor a_scales, Tensor a_tensor_scale, Tensor b_codes, Tensor b_scales, "
                    "Tensor b_tensor_scale, str a_fmt, str b_fmt, str compute_dtype, ScalarType out_dtype) "
                    "-> Tensor")

SCALE_DTYPES = {
    ScaleFormat.FP32: torch.float32,
    ScaleFormat.E4M3: torch.float8_e4m3fn,
    ScaleFormat.E8M0: torch.uint8,
}
COMPUTE_DTYPES = {ComputeDtype.BF16: torch.bfloat16, ComputeDtype.FP32: torch.float32}
QUANTIZABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def compute_dtype_of(name: str) -> torch.dtype:
    """``"bf16"`` -> ``torch.bfloat16``; ValueError lists the valid names."""
    return COMPUTE_DTYPES[parse_enum(ComputeDtype, name, "compute_dtype")]


def quantized_shapes(shape, axis: int, fmt: OperandFormat) -> tuple[list, list]:
    """Shapes of (codes, scales) for a tensor of ``shape`` quantized along ``axis`` (SymInt-safe)."""
    axis = axis % len(shape)
    length = shape[axis]
    if isinstance(length, int) and length % fmt.block:
        raise ValueError(f"quantize: axis {axis} has length {length}, not a multiple of the block {fmt.block}")
    codes, scales = list(shape), list(shape)
    codes[axis] = length // 2
    scales[axis] = length // fmt.block
    return codes, scales


# ---- quantize ------------------------------------------------------------------------------------------

def _quantize_reference(x: Tensor, axis: int, fmt: str, rht: int, rht_seed: int, seed: Tensor | None,
                        offset: int) -> tuple[Tensor, Tensor, Tensor]:
    from ufp4_compile import numerics

    q = numerics.quantize(x, axis, OperandFormat.from_spec(fmt), rht=rht, rht_seed=rht_seed, seed=seed,
                          offset=offset)
    # Outputs of a custom op may not alias its inputs or each other: hand back fresh tensors.
    return q.codes.contiguous().clone(), q.scales.contiguous().clone(), q.tensor_scale.reshape(()).clone()


def _quantize_fake(x, axis, fmt, rht, rht_seed, seed, offset):
    spec = OperandFormat.from_spec(fmt)
    codes, scales = quantized_shapes(x.shape, axis, spec)
    return (x.new_empty(codes, dtype=torch.uint8), x.new_empty(scales, dtype=SCALE_DTYPES[spec.scale]),
            x.new_empty((), dtype=torch.float32))


def _quantized(codes: Tensor, scales: Tensor, tensor_scale: Tensor, axis: int, fmt: str):
    """The numerics view of op arguments: codes packed along ``axis`` (a transposed view is fine)."""
    from ufp4_compile import numerics

    shape = list(codes.shape)
    shape[axis] *= 2
    return numerics.QuantizedTensor(codes, scales, tensor_scale, axis, OperandFormat.from_spec(fmt),
                                    shape=tuple(shape))


# ---- quantize_dequantize -----------------------------------------------------------------------------------

def _quantize_dequantize_reference(x: Tensor, axis: int, fmt: str, rht: int, rht_seed: int, seed: Tensor | None,
                                   offset: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    from ufp4_compile import numerics

    values, tensor_scale = numerics.quantize_dequantize(x, axis, OperandFormat.from_spec(fmt), rht=rht,
                                                        rht_seed=rht_seed, seed=seed, offset=offset, dtype=dtype)
    return values.contiguous().clone(), tensor_scale.reshape(()).clone()


def _quantize_dequantize_fake(x, axis, fmt, rht, rht_seed, seed, offset, dtype):
    OperandFormat.from_spec(fmt)  # validates the spec
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((), dtype=torch.float32)


# ---- dequantize ----------------------------------------------------------------------------------------

def _dequantize_reference(codes: Tensor, scales: Tensor, tensor_scale: Tensor, axis: int, fmt: str,
                          dtype: torch.dtype) -> Tensor:
    from ufp4_compile import numerics

    q = _quantized(codes, scales, tensor_scale, axis % codes.dim(), fmt)
    return numerics.dequantize(q, dtype).clone()


def _dequantize_fake(codes, scales, tensor_scale, axis, fmt, dtype):
    shape = list(codes.shape)
    shape[axis % codes.dim()] = shape[axis % codes.dim()] * 2
    return codes.new_empty(shape, dtype=dtype)


# ---- scaled_mm -----------------------------------------------------------------------------------------

def _check_mm_operands(a_codes, b_codes) -> None:
    if a_codes.dim() != 2 or b_codes.dim() != 2:
        raise ValueError(f"scaled_mm: operands must be 2-D codes (M, K/2) and (N, K/2), got shapes "
                         f"{tuple(a_codes.shape)} and {tuple(b_codes.shape)}")
    ka, kb = a_codes.shape[1], b_codes.shape[1]
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise ValueError(f"scaled_mm: reduction lengths differ: a has K/2={ka}, b has K/2={kb}")


def _scaled_mm_reference(a_codes: Tensor, a_scales: Tensor, a_tensor_scale: Tensor, b_codes: Tensor,
                         b_scales: Tensor, b_tensor_scale: Tensor, a_fmt: str, b_fmt: str, compute_dtype: str,
                         out_dtype: torch.dtype) -> Tensor:
    from ufp4_compile import numerics

    _check_mm_operands(a_codes, b_codes)
    a = _quantized(a_codes, a_scales, a_tensor_scale, 1, a_fmt)
    b = _quantized(b_codes, b_scales, b_tensor_scale, 1, b_fmt)
    out = numerics.gemm_reference(a, b, compute_dtype=compute_dtype_of(compute_dtype))
    return out.to(out_dtype).contiguous()


def _scaled_mm_fake(a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale, a_fmt, b_fmt,
                    compute_dtype, out_dtype):
    _check_mm_operands(a_codes, b_codes)
    return a_codes.new_empty((a_codes.shape[0], b_codes.shape[0]), dtype=out_dtype)


# ---- registration --------------------------------------------------------------------------------------

_OPS = {
    "quantize": (QUANTIZE_SCHEMA, _quantize_reference, _quantize_fake),
    "quantize_dequantize": (QUANTIZE_DEQUANTIZE_SCHEMA, _quantize_dequantize_reference, _quantize_dequantize_fake),
    "dequantize": (DEQUANTIZE_SCHEMA, _dequantize_reference, _dequantize_fake),
    "scaled_mm": (SCALED_MM_SCHEMA, _scaled_mm_reference, _scaled_mm_fake),
}


def _is_registered(name: str) -> bool:
    try:
        getattr(getattr(torch.ops, NAMESPACE), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def register() -> None:
    """Define the ``torch.ops.ufp4`` ops once per process (idempotent)."""
    for name, (schema, reference, fake) in _OPS.items():
        if _is_registered(name):
            continue
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", reference, mutates_args=(), schema=schema)
        op.register_fake(fake)


register()

quantize = torch.ops.ufp4.quantize.default
quantize_dequantize = torch.ops.ufp4.quantize_dequantize.default
dequantize = torch.ops.ufp4.dequantize.default
scaled_mm = torch.ops.ufp4.scaled_mm.default
UFP4_OPS = (quantize, quantize_dequantize, dequantize, scaled_mm)
