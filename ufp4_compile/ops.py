"""The custom ops of the ``torch.ops.ufp4`` namespace (docs/pipeline.md).

``quantize``, ``quantize_dequantize`` (the GEMM operand ``code x block scale`` in the compute dtype, without
writing codes: what a bf16 GEMM consumes where there are no 4-bit tensor cores), ``dequantize`` and
``scaled_mm``: each has a fake implementation (shape arithmetic only, so
symbolic shapes work) and a reference implementation that calls :mod:`ufp4_compile.numerics` and runs on
any device. ``sample_median`` is the mean split's ``mu`` (``numerics.sample_median``); ``round_to_bf16`` is
the FP32 -> bfloat16 conversion that Inductor keeps a rounding (the tensor-scale epilogue of the dense
GEMMs, ``passes/dense_gemms.py``). Kernels and Inductor lowerings replace
the reference on GPUs; Inductor turns an op without a lowering into an extern fallback call. Formats travel
as ``OperandFormat.spec`` strings.

Importing this module registers the ops; importing it again (or reloading it) is harmless.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ufp4_compile.numerics.formats import OperandFormat, ScaleFormat
from ufp4_compile.recipes import ComputeDtype, parse_enum

NAMESPACE = "ufp4"

QUANTIZE_SCHEMA = ("(Tensor x, int axis, str fmt, int rht, int rht_seed, Tensor? seed, int offset, "
                   "Tensor? shift=None) -> (Tensor codes, Tensor scales, Tensor tensor_scale)")
QUANTIZE_DEQUANTIZE_SCHEMA = ("(Tensor x, int axis, str fmt, int rht, int rht_seed, Tensor? seed, int offset, "
                              "ScalarType dtype, Tensor? shift=None) -> (Tensor values, Tensor tensor_scale)")
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
OUT_DTYPES = QUANTIZABLE_DTYPES  # what dequantize and scaled_mm may return


def compute_dtype_of(name: str) -> torch.dtype:
    """``"bf16"`` -> ``torch.bfloat16``; ValueError lists the valid names."""
    return COMPUTE_DTYPES[parse_enum(ComputeDtype, name, "compute_dtype")]


def _check_axis(op: str, axis, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis={axis!r} is not valid for a {ndim}-d tensor; valid values: "
                         f"{-ndim}..{ndim - 1}" if ndim else f"{op}: a 0-d tensor has no axis")
    return axis % ndim


def quantized_shapes(shape, axis: int, fmt: OperandFormat) -> tuple[list, list]:
    """Shapes of (codes, scales) for a tensor of ``shape`` quantized along ``axis`` (SymInt-safe): the axis
    rounded up to whole blocks, ``P = ceil(L / block) * block``, gives ``P / 2`` codes and ``P / block``
    scales (docs/numerics.md)."""
    axis = _check_axis("quantize", axis, len(shape))
    blocks = (shape[axis] + fmt.block - 1) // fmt.block
    codes, scales = list(shape), list(shape)
    codes[axis] = blocks * (fmt.block // 2)
    scales[axis] = blocks
    return codes, scales


def _static(*sizes) -> bool:
    return all(isinstance(s, int) for s in sizes)


def check_quantized(op: str, name: str, codes: Tensor, scales: Tensor, tensor_scale: Tensor, axis: int,
                    fmt: OperandFormat) -> None:
    """Codes, scales and tensor scale of one quantized operand must fit ``fmt`` (dtypes and shapes, where
    static): a ValueError naming the field and what it should be, instead of a wrong result."""
    if codes.dtype != torch.uint8:
        raise ValueError(f"{op}: {name}codes.dtype={codes.dtype} is not valid; valid values: torch.uint8 "
                         f"(packed 4-bit codes)")
    want = SCALE_DTYPES[fmt.scale]
    if scales.dtype != want:
        raise ValueError(f"{op}: {name}scales.dtype={scales.dtype} does not match the format {fmt.spec!r}; "
                         f"valid values: {want} ({fmt.scale.value} scales)")
    if tensor_scale.dtype != torch.float32 or tensor_scale.dim() != 0:
        raise ValueError(f"{op}: {name}tensor_scale must be a 0-d torch.float32 tensor, got "
                         f"{tensor_scale.dtype} of shape {tuple(tensor_scale.shape)}")
    expected = list(codes.shape)
    length = codes.shape[axis]
    if _static(length):
        if (2 * length) % fmt.block:
            raise ValueError(f"{op}: {name}codes hold {2 * length} elements along axis {axis}, not whole blocks "
                             f"of {fmt.block} ({fmt.spec!r})")
        expected[axis] = 2 * length // fmt.block
    if scales.dim() != codes.dim() or any(_static(a, b) and a != b for a, b in zip(scales.shape, expected)):
        shown = tuple(e if _static(e) else "?" for e in expected)
        raise ValueError(f"{op}: {name}scales has shape {tuple(scales.shape)}, expected {shown} for codes of shape "
                         f"{tuple(codes.shape)} along axis {axis} with {fmt.spec!r} (one scale per block of "
                         f"{fmt.block})")


def _check_out_dtype(op: str, field: str, dtype) -> None:
    if dtype not in OUT_DTYPES:
        raise ValueError(f"{op}: {field}={dtype} is not valid; valid values: "
                         f"{', '.join(map(str, OUT_DTYPES))}")


# ---- quantize ------------------------------------------------------------------------------------------

def _quantize_reference(x: Tensor, axis: int, fmt: str, rht: int, rht_seed: int, seed: Tensor | None,
                        offset: int, shift: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    from ufp4_compile import numerics

    q = numerics.quantize(x, axis, OperandFormat.from_spec(fmt), rht=rht, rht_seed=rht_seed, seed=seed,
                          offset=offset, shift=shift)
    # Outputs of a custom op may not alias its inputs or each other: hand back fresh tensors.
    return q.codes.contiguous().clone(), q.scales.contiguous().clone(), q.tensor_scale.reshape(()).clone()


def _check_shift(op: str, x, axis, shift) -> None:
    from ufp4_compile.numerics.quantize import check_shift

    try:
        check_shift(x, _check_axis(op, axis, x.dim()), shift)
    except ValueError as e:
        raise ValueError(f"{op}: {e}") from None


def _quantize_fake(x, axis, fmt, rht, rht_seed, seed, offset, shift=None):
    spec = OperandFormat.from_spec(fmt)
    if x.dtype not in QUANTIZABLE_DTYPES:
        raise ValueError(f"quantize: x.dtype={x.dtype} is not valid; valid values: float32, bfloat16, float16")
    _check_shift("quantize", x, axis, shift)
    codes, scales = quantized_shapes(x.shape, axis, spec)
    return (x.new_empty(codes, dtype=torch.uint8), x.new_empty(scales, dtype=SCALE_DTYPES[spec.scale]),
            x.new_empty((), dtype=torch.float32))


def _quantized(codes: Tensor, scales: Tensor, tensor_scale: Tensor, axis: int, fmt: str):
    """The numerics view of op arguments: codes packed along ``axis`` (a transposed view is fine). Codes
    carry no length: the view covers their whole blocks (a padded last block reads as zeros)."""
    from ufp4_compile import numerics

    shape = list(codes.shape)
    shape[axis] *= 2
    return numerics.QuantizedTensor(codes, scales, tensor_scale, axis, OperandFormat.from_spec(fmt),
                                    shape=tuple(shape))


# ---- quantize_dequantize -----------------------------------------------------------------------------------

def _quantize_dequantize_reference(x: Tensor, axis: int, fmt: str, rht: int, rht_seed: int, seed: Tensor | None,
                                   offset: int, dtype: torch.dtype, shift: Tensor | None = None
                                   ) -> tuple[Tensor, Tensor]:
    from ufp4_compile import numerics

    values, tensor_scale = numerics.quantize_dequantize(x, axis, OperandFormat.from_spec(fmt), rht=rht,
                                                        rht_seed=rht_seed, seed=seed, offset=offset, dtype=dtype,
                                                        shift=shift)
    return values.contiguous().clone(), tensor_scale.reshape(()).clone()


def _quantize_dequantize_fake(x, axis, fmt, rht, rht_seed, seed, offset, dtype, shift=None):
    quantized_shapes(x.shape, axis, OperandFormat.from_spec(fmt))  # validates the spec and the axis
    _check_shift("quantize_dequantize", x, axis, shift)
    _check_out_dtype("quantize_dequantize", "dtype", dtype)
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((), dtype=torch.float32)


# ---- dequantize ----------------------------------------------------------------------------------------

def _check_dequantize(codes, scales, tensor_scale, axis, fmt: str, dtype) -> int:
    axis = _check_axis("dequantize", axis, codes.dim())
    check_quantized("dequantize", "", codes, scales, tensor_scale, axis, OperandFormat.from_spec(fmt))
    _check_out_dtype("dequantize", "dtype", dtype)
    return axis


def _dequantize_reference(codes: Tensor, scales: Tensor, tensor_scale: Tensor, axis: int, fmt: str,
                          dtype: torch.dtype) -> Tensor:
    from ufp4_compile import numerics

    axis = _check_dequantize(codes, scales, tensor_scale, axis, fmt, dtype)
    return numerics.dequantize(_quantized(codes, scales, tensor_scale, axis, fmt), dtype).clone()


def _dequantize_fake(codes, scales, tensor_scale, axis, fmt, dtype):
    axis = _check_dequantize(codes, scales, tensor_scale, axis, fmt, dtype)
    shape = list(codes.shape)
    shape[axis] = shape[axis] * 2
    return codes.new_empty(shape, dtype=dtype)


# ---- scaled_mm -----------------------------------------------------------------------------------------

def _check_mm_operands(a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale, a_fmt: str,
                       b_fmt: str, compute_dtype: str, out_dtype) -> None:
    if a_codes.dim() != 2 or b_codes.dim() != 2:
        raise ValueError(f"scaled_mm: operands must be 2-D codes (M, K/2) and (N, K/2), got shapes "
                         f"{tuple(a_codes.shape)} and {tuple(b_codes.shape)}")
    ka, kb = a_codes.shape[1], b_codes.shape[1]
    if _static(ka, kb) and ka != kb:
        raise ValueError(f"scaled_mm: reduction lengths differ: a has K/2={ka}, b has K/2={kb}")
    check_quantized("scaled_mm", "a_", a_codes, a_scales, a_tensor_scale, 1, OperandFormat.from_spec(a_fmt))
    check_quantized("scaled_mm", "b_", b_codes, b_scales, b_tensor_scale, 1, OperandFormat.from_spec(b_fmt))
    compute_dtype_of(compute_dtype)
    _check_out_dtype("scaled_mm", "out_dtype", out_dtype)


def _scaled_mm_reference(a_codes: Tensor, a_scales: Tensor, a_tensor_scale: Tensor, b_codes: Tensor,
                         b_scales: Tensor, b_tensor_scale: Tensor, a_fmt: str, b_fmt: str, compute_dtype: str,
                         out_dtype: torch.dtype) -> Tensor:
    from ufp4_compile import numerics

    _check_mm_operands(a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale, a_fmt, b_fmt,
                       compute_dtype, out_dtype)
    a = _quantized(a_codes, a_scales, a_tensor_scale, 1, a_fmt)
    b = _quantized(b_codes, b_scales, b_tensor_scale, 1, b_fmt)
    out = numerics.gemm_reference(a, b, compute_dtype=compute_dtype_of(compute_dtype))
    return out.to(out_dtype).contiguous()


def _scaled_mm_fake(a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale, a_fmt, b_fmt,
                    compute_dtype, out_dtype):
    _check_mm_operands(a_codes, a_scales, a_tensor_scale, b_codes, b_scales, b_tensor_scale, a_fmt, b_fmt,
                       compute_dtype, out_dtype)
    return a_codes.new_empty((a_codes.shape[0], b_codes.shape[0]), dtype=out_dtype)


ROUND_TO_BF16_SCHEMA = "(Tensor x) -> Tensor"


def _check_round_to_bf16(x) -> None:
    if x.dtype != torch.float32:
        raise ValueError(f"ufp4.round_to_bf16: x.dtype={x.dtype} is not supported; valid: torch.float32")


def _round_to_bf16_reference(x: Tensor) -> Tensor:
    _check_round_to_bf16(x)
    return x.to(torch.bfloat16)


def _round_to_bf16_fake(x):
    _check_round_to_bf16(x)
    return torch.empty_like(x, dtype=torch.bfloat16)


SAMPLE_MEDIAN_SCHEMA = "(Tensor x) -> Tensor"


def _sample_median_reference(x: Tensor) -> Tensor:
    from ufp4_compile import numerics

    return numerics.sample_median(x)


def _sample_median_fake(x):
    from ufp4_compile.numerics.mean_split import check_split_input

    check_split_input(x)
    return x.new_empty((1, *x.shape[1:]), dtype=torch.float32)


# ---- registration --------------------------------------------------------------------------------------

_OPS = {
    "quantize": (QUANTIZE_SCHEMA, _quantize_reference, _quantize_fake),
    "quantize_dequantize": (QUANTIZE_DEQUANTIZE_SCHEMA, _quantize_dequantize_reference, _quantize_dequantize_fake),
    "dequantize": (DEQUANTIZE_SCHEMA, _dequantize_reference, _dequantize_fake),
    "scaled_mm": (SCALED_MM_SCHEMA, _scaled_mm_reference, _scaled_mm_fake),
    # FP32 -> bfloat16 (nearest, ties to even) that stays a rounding inside Inductor's fused kernels, which
    # otherwise keep a bf16 intermediate in FP32 (lowering/rounding.py): the tensor-scale epilogue of dense GEMMs
    "round_to_bf16": (ROUND_TO_BF16_SCHEMA, _round_to_bf16_reference, _round_to_bf16_fake),
    # the mean split's mu (numerics.sample_median): one selection launch on GPUs (kernels/median.py)
    "sample_median": (SAMPLE_MEDIAN_SCHEMA, _sample_median_reference, _sample_median_fake),
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
round_to_bf16 = torch.ops.ufp4.round_to_bf16.default
sample_median = torch.ops.ufp4.sample_median.default
UFP4_OPS = (quantize, quantize_dequantize, dequantize, scaled_mm)
