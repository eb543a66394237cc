"""Which GEMM paths honour the exactness contract for a pair of operand formats on a given GPU.

A pure function of (operand formats, compute dtype, target): no device is touched, so the decision can be
unit-tested for GPUs we do not have. It imports only ``numerics`` and ``recipes``, so the kernels (their
compile report) and the lowering (its choices) both read it. The contract (DESIGN §2, docs/numerics.md):
each operand is ``code x scale`` in FP32 rounded to the compute dtype, products accumulated in FP32, tensor
scales in the epilogue. The paths, fastest first:

- ``NATIVE``: ``tl.dot_scaled`` (``kernels/native_gemm.py``) where the hardware applies the block scales
  itself: Blackwell ``tcgen05.mma ... block_scale`` (sm_100/sm_103) and MI350 ``v_mfma_scale_f32_*_f8f6f4``
  (gfx950). Exact because code x E4M3 and code x E8M0 are exact in bf16, so the hardware's product is the
  reference's.
- ``EMULATED``: the Triton kernels of ``kernels/gemm.py`` (written for Hopper): packed codes are
  dequantized in registers to the compute dtype and fed to ``tl.dot`` (bf16 wgmma / MFMA).
- ``DEQUANT_MM``: dequantize to the compute dtype in memory, then ``torch.matmul`` (cuBLAS, hipBLAS or the
  CPU). Always available; exact as long as the BLAS accumulates in FP32 (the caller keeps
  ``torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction`` off for these calls).
"""

from __future__ import annotations

import dataclasses
import enum
import re

from ufp4_compile.numerics.formats import Grid, OperandFormat, ScaleFormat
from ufp4_compile.recipes import ComputeDtype, GemmRecipe, Recipe, Role, parse_enum

# Datacenter Blackwell: the architectures with tcgen05 block-scaled MMA (Triton's sm_100 backend).
NATIVE_CUDA_ARCHS = (100, 103)
# CDNA4 (MI350/MI355): v_mfma_scale_f32_{16x16x128,32x32x64}_f8f6f4.
NATIVE_HIP_ARCHS = ("gfx950",)
# bf16 tensor cores (mma.sync / wgmma) from Ampere on: what the emulated Triton kernels need.
MIN_EMULATED_CUDA_ARCH = 80
BACKENDS = ("cuda", "hip", "cpu")


@dataclasses.dataclass(frozen=True)
class Target:
    """A compilation target: ``Target("cuda", 100)``, ``Target("hip", "gfx950")``, ``Target("cpu")``."""

    backend: str
    arch: int | str | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} is not valid; valid values: {BACKENDS}")
        if self.backend == "cuda" and (not isinstance(self.arch, int) or isinstance(self.arch, bool)
                                       or self.arch < 10):
            raise ValueError(f"arch={self.arch!r} is not valid for backend 'cuda'; it must be the compute "
                             f"capability as an integer, e.g. 90 or 100")
        if self.backend == "hip" and not (isinstance(self.arch, str) and re.fullmatch(r"gfx[0-9a-f]+", self.arch)):
            raise ValueError(f"arch={self.arch!r} is not valid for backend 'hip'; it must be a gfx name, "
                             f"e.g. 'gfx942' or 'gfx950'")
        if self.backend == "cpu" and self.arch is not None:
            raise ValueError(f"arch={self.arch!r} is not valid for backend 'cpu'; it must be None")

    @classmethod
    def parse(cls, text: str) -> "Target":
        """``"sm_100"``, ``"sm100a"``, ``"cuda:90"``, ``"gfx950"``, ``"hip:gfx950"`` or ``"cpu"``."""
        value = str(text).strip().lower()
        if value == "cpu":
            return cls("cpu")
        match = re.fullmatch(r"(?:sm_?|cuda:)(\d+)[af]?", value)
        if match:
            return cls("cuda", int(match.group(1)))
        match = re.fullmatch(r"(?:hip:)?(gfx[0-9a-f]+)", value)
        if match:
            return cls("hip", match.group(1))
        raise ValueError(f"target {text!r} is not valid; use sm_<capability> (sm_90, sm_100), "
                         f"gfx<name> (gfx950) or cpu")

    @property
    def name(self) -> str:
        if self.backend == "cuda":
            return f"sm_{self.arch}"
        return self.arch if self.backend == "hip" else "cpu"

    @property
    def warp_size(self) -> int:
        # CDNA (gfx9xx) runs 64-wide waves; RDNA (gfx10xx and later) 32-wide.
        return 64 if self.backend == "hip" and str(self.arch).startswith("gfx9") else 32

    @property
    def has_native_block_scaled_mma(self) -> bool:
        return ((self.backend == "cuda" and self.arch in NATIVE_CUDA_ARCHS)
                or (self.backend == "hip" and self.arch in NATIVE_HIP_ARCHS))

    def gpu_target(self):
        """The ``triton.backends.compiler.GPUTarget`` to compile for (Triton imported here, lazily)."""
        if self.backend == "cpu":
            raise ValueError("target 'cpu' has no Triton GPU target; use sm_<capability> or gfx<name>")
        from triton.backends.compiler import GPUTarget

        return GPUTarget(self.backend, self.arch, self.warp_size)

    def __str__(self) -> str:
        return self.name


def current_target(device=None) -> Target:
    """The target of ``device`` (a ``torch.device``; default: the current GPU), ``Target("cpu")`` for a CPU
    device or without a GPU."""
    import torch

    if device is not None and torch.device(device).type == "cpu":
        return Target("cpu")
    if not torch.cuda.is_available():
        return Target("cpu")
    index = torch.device(device).index if device is not None else None  # None: the current device
    if getattr(torch.version, "hip", None):
        arch = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index).gcnArchName
        return Target("hip", arch.split(":")[0])
    major, minor = torch.cuda.get_device_capability(index)
    return Target("cuda", 10 * major + minor)


class GemmPath(enum.Enum):
    NATIVE = "native"  # tl.dot_scaled on block-scaled MMA hardware (kernels/native_gemm.py)
    EMULATED = "emulated"  # codes dequantized in registers, tl.dot in the compute dtype (kernels/gemm.py)
    DEQUANT_MM = "dequant-mm"  # dequantize to the compute dtype in memory, then torch.matmul


@dataclasses.dataclass(frozen=True)
class GemmDecision:
    """One allowed path for a GEMM, with what it runs on and why it was chosen."""

    path: GemmPath
    target: Target
    reason: str
    # Only for NATIVE: the tl.dot_scaled element formats, the scale format and the expected instruction.
    a_elem: str | None = None
    b_elem: str | None = None
    scale: ScaleFormat | None = None
    instruction: str | None = None


@dataclasses.dataclass(frozen=True)
class _NativeOperand:
    elem: str  # tl.dot_scaled format: "e2m1" (packed E2M1) or "e4m3" (INT4 codes converted to FP8 E4M3)
    scale: ScaleFormat


def _native_operand(fmt: OperandFormat) -> tuple[_NativeOperand | None, str]:
    """How ``fmt`` reaches tl.dot_scaled, or None and why it cannot."""
    if fmt.scale is ScaleFormat.FP32:
        return None, (f"{fmt.spec}: FP32 block scales exist in no hardware (the MMA takes E8M0 or E4M3 "
                      f"scales only)")
    if fmt.scale is ScaleFormat.E8M0:
        if fmt.block != 32:
            return None, (f"{fmt.spec}: E8M0 scales reach tl.dot_scaled per 32 elements only "
                          f"(Triton infers the block from the scale dtype)")
        elem = "e2m1" if fmt.grid is Grid.E2M1 else "e4m3"
        return _NativeOperand(elem, fmt.scale), ""
    # E4M3 two-level scales: NVFP4 proper only.
    if fmt.block != 16:
        return None, f"{fmt.spec}: E4M3 block scales reach tl.dot_scaled per 16 elements only (NVFP4)"
    if fmt.grid is not Grid.E2M1:
        return None, (f"{fmt.spec}: INT4 codes are exact only as FP8 elements, and the FP8-element "
                      f"block-scaled MMA (kind::mxf8f6f4 / f8f6f4 MFMA) takes E8M0 scales of block 32 only")
    return _NativeOperand("e2m1", fmt.scale), ""


def _instruction(target: Target, a: _NativeOperand, b: _NativeOperand) -> str:
    if target.backend == "hip":
        return "v_mfma_scale_f32_*_f8f6f4"
    if a.scale is ScaleFormat.E4M3:
        return "tcgen05.mma kind::mxf4nvf4"
    if a.elem == b.elem == "e2m1":
        return "tcgen05.mma kind::mxf4"
    return "tcgen05.mma kind::mxf8f6f4"


def _native_decision(a_fmt: OperandFormat, b_fmt: OperandFormat, target: Target) -> tuple[GemmDecision | None, str]:
    if not target.has_native_block_scaled_mma:
        return None, (f"{target.name} has no block-scaled MMA (native only on "
                      f"{', '.join(f'sm_{a}' for a in NATIVE_CUDA_ARCHS)}, {', '.join(NATIVE_HIP_ARCHS)})")
    a, why_a = _native_operand(a_fmt)
    b, why_b = _native_operand(b_fmt)
    if a is None or b is None:
        return None, why_a or why_b
    # Both operands have the same block (GemmRecipe checks it), so E8M0 (block 32) and E4M3 (block 16)
    # scales never meet in one GEMM here.
    if target.backend == "hip" and a.scale is ScaleFormat.E4M3:
        return None, (f"{target.name}'s scaled MFMA takes E8M0 scales only (Triton 3.6 does not lower "
                      f"E4M3-scaled dot_scaled for it)")
    instruction = _instruction(target, a, b)
    how = {"e2m1": "E2M1 codes", "e4m3": "INT4 codes as FP8 E4M3 (exact)"}
    reason = (f"{target.name}: tl.dot_scaled {a.elem} x {b.elem} with {a.scale.value} block scales -> "
              f"{instruction}; a: {how[a.elem]}, b: {how[b.elem]}; code x {a.scale.value} scale is exact in "
              f"bf16, so this is the reference product")
    if a.scale is ScaleFormat.E4M3:
        reason += "; FP32 tensor scales applied in the epilogue"
    return GemmDecision(GemmPath.NATIVE, target, reason, a.elem, b.elem, a.scale, instruction), ""


def _emulated_decision(a_fmt: OperandFormat, b_fmt: OperandFormat, compute: ComputeDtype, target: Target,
                       why_not_native: str) -> tuple[GemmDecision | None, str]:
    if target.backend == "cpu":
        return None, "cpu: the Triton kernels need a GPU"
    if target.backend == "cuda" and target.arch < MIN_EMULATED_CUDA_ARCH:
        return None, f"{target.name}: no bf16 tensor cores (sm_{MIN_EMULATED_CUDA_ARCH} or newer needed)"
    if compute is ComputeDtype.FP32:
        how = "FP32 operands (FP32 block scales applied to FP32 partial sums per block), tl.dot in FP32"
    elif ScaleFormat.FP32 in (a_fmt.scale, b_fmt.scale):
        how = ("codes x FP32 scale rounded to bf16 in registers (the contract's rounding, at most 2^-9 "
               "relative), tl.dot in bf16 with FP32 accumulation")
    else:
        how = "codes x scale dequantized to bf16 in registers (exact), tl.dot in bf16 with FP32 accumulation"
    reason = f"{target.name}: {how}"
    if why_not_native:
        reason += f"; not native: {why_not_native}"
    return GemmDecision(GemmPath.EMULATED, target, reason), ""


def gemm_paths(a_fmt: OperandFormat, b_fmt: OperandFormat, compute_dtype: ComputeDtype | str = ComputeDtype.BF16,
               target: Target | str | None = None) -> tuple[GemmDecision, ...]:
    """The paths that honour the exactness contract for ``C = A B^T`` on ``target``, preferred first.

    ``target`` defaults to :func:`current_target`; a string is read with :meth:`Target.parse`.
    """
    if not isinstance(a_fmt, OperandFormat) or not isinstance(b_fmt, OperandFormat):
        raise ValueError(f"a_fmt and b_fmt must be OperandFormat, got {type(a_fmt).__name__} and "
                         f"{type(b_fmt).__name__}")
    compute = parse_enum(ComputeDtype, compute_dtype, "compute_dtype")
    if target is None:
        target = current_target()
    elif not isinstance(target, Target):
        target = Target.parse(target)
    if a_fmt.block != b_fmt.block:
        raise ValueError(f"operands of one GEMM need the same block size, got a.block={a_fmt.block}, "
                         f"b.block={b_fmt.block}")
    decisions = []
    native, why_not_native = _native_decision(a_fmt, b_fmt, target)
    if native is not None:
        decisions.append(native)
    emulated, why_not_emulated = _emulated_decision(a_fmt, b_fmt, compute, target, why_not_native)
    if emulated is not None:
        decisions.append(emulated)
    fallback = f"{target.name}: dequantize to {compute.value} in memory, then torch.matmul with FP32 accumulation"
    if not decisions:
        fallback += f"; no Triton path: {why_not_emulated}"
    decisions.append(GemmDecision(GemmPath.DEQUANT_MM, target, fallback))
    return tuple(decisions)


def gemm_recipe_paths(gemm: GemmRecipe, compute_dtype: ComputeDtype | str = ComputeDtype.BF16,
                      target: Target | str | None = None) -> tuple[GemmDecision, ...]:
    """:func:`gemm_paths` for one GEMM of a recipe (RHT and mean split do not change the product's formats)."""
    return gemm_paths(gemm.a, gemm.b, compute_dtype, target)


def recipe_paths(recipe: Recipe, target: Target | str | None = None) -> dict[Role, tuple[GemmDecision, ...]]:
    """The allowed paths of every quantized GEMM of ``recipe`` on ``target``."""
    return {role: gemm_recipe_paths(recipe.gemm(role), recipe.compute_dtype, target)
            for role in recipe.quantized_roles}
