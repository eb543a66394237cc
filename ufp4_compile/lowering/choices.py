"""Which choices the ``ufp4::scaled_mm`` lowering offers: a plain function of (formats, compute dtype,
target, K), so the decision is unit-tested for GPUs we do not have (docs/kernels.md, docs/support.md).

The choices, in the order offered (the autotuner picks among them; with one choice it is taken as is):

- ``native``: ``kernels/native_gemm.py``'s ``tl.dot_scaled`` kernel, wherever ``ufp4_compile.dispatch`` puts
  the native path first (sm_100 / gfx950 for NVFP4, MXFP4, INT4 with E8M0 scales of block 32);
- ``template``: the Triton template with the dequant main loop (``kernels.gemm.MODE_DEQUANT``);
- ``blockscale``: the same template with the per-block FP32 scaling main loop;
- ``extern``: dequantize + matmul (cuBLAS / hipBLAS with FP32 accumulation).

Policy: with ``max_autotune`` every exact choice goes to the autotuner. Without it, ``extern`` (the fastest
choice at every shape measured on the H100) plus, where the dispatch offers it, ``native`` (unmeasured on
hardware, so it is benchmarked against ``extern`` rather than taken blind); the template only where no
other choice exists. :func:`plan_choices` takes a set of names to narrow the choices to (tests,
benchmarks): those are offered whenever they are exact, autotune or not.
"""

from __future__ import annotations

import dataclasses

from ufp4_compile.dispatch import GemmPath, Target, gemm_paths
from ufp4_compile.kernels import gemm
from ufp4_compile.numerics.formats import OperandFormat
from ufp4_compile.recipes import ComputeDtype, parse_enum

CHOICE_NAMES = ("native", "template", "blockscale", "extern")

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); the first is the default. BLOCK_K 0: the
# format block (one dot per block).
DEQUANT_CONFIGS = (
    (128, 128, 128, 8, 8, 3),
    (128, 256, 64, 8, 8, 3),
    (64, 128, 128, 8, 4, 3),
)
BLOCKSCALE_CONFIGS = (
    (128, 128, 0, 8, 8, 3),
    (128, 256, 0, 8, 8, 3),
)

# CUDA archs on which Triton 3.6 compiles an FP32 tl.dot(input_precision="ieee") of computed operands to
# tcgen05.mma kind::tf32 (seen in the PTX; docs/support.md): TF32 keeps 10 mantissa bits, so the dequant
# loop's FP32 operands (code x FP32 scale) would not be multiplied exactly.
_TF32_FP32_DOT_MIN_CUDA_ARCH = 100


@dataclasses.dataclass(frozen=True)
class ChoicePlan:
    """One choice for the lowering to build (``mode``, ``dot``, ``config``, ``even_k``: template choices)."""

    name: str
    path: GemmPath
    mode: int | None = None
    dot: str | None = None
    config: tuple[int, int, int, int, int, int] | None = None
    even_k: bool | None = None


def _check_names(names) -> tuple[str, ...] | None:
    if names is None:
        return None
    names = tuple(names)
    bad = [n for n in names if n not in CHOICE_NAMES]
    if bad:
        raise ValueError(f"choices {bad} are not valid; valid values: {CHOICE_NAMES}")
    return names


def fp32_dot_is_ieee(target: Target) -> bool:
    """Whether an FP32 ``tl.dot(..., input_precision="ieee")`` of dequantized operands stays IEEE there."""
    return not (target.backend == "cuda" and target.arch >= _TF32_FP32_DOT_MIN_CUDA_ARCH)


def template_loops(a_fmt: OperandFormat, b_fmt: OperandFormat, compute: str, target: Target) -> list[tuple[int, str]]:
    """The exact template main loops on ``target``: ``kernels.gemm.main_loops`` less FP32 dequant loops
    where the FP32 dot would run as TF32 (the blockscale loop's dots take raw codes, exact in any of them)."""
    loops = gemm.main_loops(a_fmt, b_fmt, compute)
    if fp32_dot_is_ieee(target):
        return loops
    return [(mode, dot) for mode, dot in loops if not (mode == gemm.MODE_DEQUANT and dot == "fp32")]


def _template_plans(a_fmt, b_fmt, compute, target, K, autotune: bool, forced: bool, wanted) -> list[ChoicePlan]:
    """Template choices: every config under autotuning, else the first; blockscale only when autotuning or
    asked for by name (a slow exact loop, never a default)."""
    plans = []
    for mode, dot in template_loops(a_fmt, b_fmt, compute, target):
        name = "template" if mode == gemm.MODE_DEQUANT else "blockscale"
        if not wanted(name) or (name == "blockscale" and not (autotune or forced)):
            continue
        configs = DEQUANT_CONFIGS if mode == gemm.MODE_DEQUANT else BLOCKSCALE_CONFIGS
        for bm, bn, bk, group_m, warps, stages in (configs if autotune or name == "blockscale" else configs[:1]):
            bk = bk or a_fmt.block
            even_k = isinstance(K, int) and K % bk == 0
            plans.append(ChoicePlan(name, GemmPath.EMULATED, mode, dot, (bm, bn, bk, group_m, warps, stages), even_k))
    return plans


def plan_choices(a_fmt: OperandFormat, b_fmt: OperandFormat, compute_dtype: ComputeDtype | str, target: Target | str,
                 K: int | None = None, *, autotune: bool = False, only=None) -> tuple[ChoicePlan, ...]:
    """The choices for ``C = A B^T`` (reduction length ``K``, None if symbolic) on ``target``, in order.

    ``only`` (names from :data:`CHOICE_NAMES`) offers exactly those of them that are exact here.
    """
    only = _check_names(only)
    compute = parse_enum(ComputeDtype, compute_dtype, "compute_dtype").value
    target = target if isinstance(target, Target) else Target.parse(target)
    paths = [d.path for d in gemm_paths(a_fmt, b_fmt, compute, target)]

    def wanted(name: str) -> bool:
        return only is None or name in only

    plans = []
    if GemmPath.NATIVE in paths and wanted("native"):
        plans.append(ChoicePlan("native", GemmPath.NATIVE))
    extern = GemmPath.DEQUANT_MM in paths and wanted("extern")
    if GemmPath.EMULATED in paths and (autotune or only is not None or not (extern or plans)):
        plans += _template_plans(a_fmt, b_fmt, compute, target, K, autotune, only is not None, wanted)
    if extern:
        plans.append(ChoicePlan("extern", GemmPath.DEQUANT_MM))
    return tuple(plans)
