"""The Inductor lowering of ``ufp4::scaled_mm``: the choices the autotuner picks from (docs/kernels.md).

Every choice honours the exactness contract (DESIGN §2; ``kernels.gemm.mode_allowed`` decides which main
loops do for a pair of formats and a compute dtype; ``lowering.dispatch`` decides which paths a GPU runs):

- ``template``: the Triton template, in-register dequantization to the compute dtype, several tile configs;
- ``blockscale``: the same template with the per-block FP32 scaling main loop (bf16 or, for block 32, FP8
  E4M3 tensor cores) where it equals the reference;
- ``extern``: dequantize + cuBLAS (``ufp4_dequant_mm``).

Without ``max_autotune`` one choice is taken without benchmarking: ``extern``, the fastest on the H100 at
every measured shape (benchmarks/results/gemm_*.md); the template's epilogue fusion does not make up for a
main loop 2.5-4x slower. With ``max_autotune`` all of them are benchmarked. :func:`force_choices` narrows
the set (tests, benchmarks). CPU tensors (and any case with no choice) go to the op's own implementation.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch._inductor import config as inductor_config
from torch._inductor import ir
from torch._inductor.lowering import fallback_handler
from torch._inductor.select_algorithm import autotune_select_algorithm

from ufp4_compile.kernels import gemm
from ufp4_compile.kernels.common import format_constants
from ufp4_compile.lowering import dispatch
from ufp4_compile.lowering.templates import dequant_mm_choice, scaled_mm_template
from ufp4_compile.numerics.quantize import as_format

log = logging.getLogger(__name__)

CHOICE_NAMES = ("template", "blockscale", "extern")

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); the first is the default.
DEQUANT_CONFIGS = (
    (128, 128, 128, 8, 8, 3),
    (128, 256, 64, 8, 8, 3),
    (64, 128, 128, 8, 4, 3),
)
BLOCKSCALE_CONFIGS = (
    (128, 128, 0, 8, 8, 3),
    (128, 256, 0, 8, 8, 3),
)

_forced: tuple[str, ...] | None = None


@contextlib.contextmanager
def force_choices(*names: str, allow_cpu: bool = False):
    """Offer exactly these choices (``"template"``, ``"blockscale"``, ``"extern"``) while compiling.

    ``allow_cpu=True`` lets the extern choice run for CPU tensors (tests of the lowering without a GPU).
    """
    global _forced
    bad = [n for n in names if n not in CHOICE_NAMES]
    if bad:
        raise ValueError(f"choices {bad} are not valid; valid values: {CHOICE_NAMES}")
    saved = _forced
    _forced = tuple(names) + (("cpu",) if allow_cpu else ())
    try:
        yield
    finally:
        _forced = saved


def _fallback(*args):
    return fallback_handler(torch.ops.ufp4.scaled_mm.default, add_to_fallback_set=False)(*args)


def _wanted(name: str) -> bool:
    return _forced is None or name in _forced


def _template_choices(choices, inputs, layout, a_fmt, b_fmt, compute, K2, autotune: bool) -> None:
    ca, cb = format_constants(a_fmt), format_constants(b_fmt)
    common = dict(A_GRID=ca.grid, A_SCALE=ca.scale, B_GRID=cb.grid, B_SCALE=cb.scale, BLOCK=a_fmt.block)
    plans = []
    if _wanted("template") and gemm.mode_allowed(gemm.MODE_DEQUANT, compute, a_fmt, b_fmt, compute):
        plans += [(gemm.MODE_DEQUANT, compute, cfg) for cfg in (DEQUANT_CONFIGS if autotune else DEQUANT_CONFIGS[:1])]
    if _wanted("blockscale") and (autotune or _forced is not None):
        for dot in ("fp8", "bf16", "fp32"):
            if gemm.mode_allowed(gemm.MODE_BLOCKSCALE, dot, a_fmt, b_fmt, compute):
                plans += [(gemm.MODE_BLOCKSCALE, dot, cfg) for cfg in BLOCKSCALE_CONFIGS]
                break  # the fastest exact dot dtype only
    for mode, dot, (bm, bn, bk, group_m, warps, stages) in plans:
        bk = bk or a_fmt.block
        even_k = isinstance(K2, int) and (2 * K2) % bk == 0
        scaled_mm_template.maybe_append_choice(
            choices, input_nodes=inputs, layout=layout, num_stages=stages, num_warps=warps, BLOCK_M=bm,
            BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m, EVEN_K=even_k, MODE=mode, DOT=gemm.DOT_DTYPES[dot], **common)


def lower_scaled_mm(a_codes, a_scales, a_ts, b_codes, b_scales, b_ts, a_fmt, b_fmt, compute_dtype, out_dtype):
    """The lowering registered for ``torch.ops.ufp4.scaled_mm.default``."""
    args = (a_codes, a_scales, a_ts, b_codes, b_scales, b_ts, a_fmt, b_fmt, compute_dtype, out_dtype)
    device = a_codes.get_device()
    on_cpu = device is None or device.type != "cuda"
    if on_cpu and not (_forced and "cpu" in _forced):
        return _fallback(*args)
    fa, fb = as_format(a_fmt), as_format(b_fmt)
    inputs = [ir.ExternKernel.realize_input(t) for t in (a_codes, a_scales, a_ts, b_codes, b_scales, b_ts)]
    M, K2 = inputs[0].get_size()
    N = inputs[3].get_size()[0]
    layout = ir.FixedLayout(device, out_dtype, [M, N])
    paths = {d.path for d in dispatch.gemm_paths(fa, fb, compute_dtype, "cpu" if on_cpu else None)}
    autotune = bool(inductor_config.max_autotune or inductor_config.max_autotune_gemm)
    choices = []
    extern_ok = dispatch.GemmPath.DEQUANT_MM in paths and _wanted("extern")
    if dispatch.GemmPath.EMULATED in paths and (autotune or _forced is not None or not extern_ok):
        _template_choices(choices, inputs, layout, fa, fb, compute_dtype, K2, autotune)
    if extern_ok:
        choices.append(dequant_mm_choice.bind(inputs, layout, a_fmt=fa.spec, b_fmt=fb.spec,
                                              compute_dtype=compute_dtype))
    if not choices:
        log.info("ufp4.scaled_mm %s x %s (%s): no choice fits, falling back", fa.spec, fb.spec, compute_dtype)
        return _fallback(*args)
    result = autotune_select_algorithm("ufp4_scaled_mm", choices, inputs, layout)
    return result[0] if isinstance(result, tuple) else result
