"""The Inductor lowering of ``ufp4::scaled_mm``: the choices the autotuner picks from (docs/kernels.md).

Which choices, in which order, is :func:`ufp4_compile.lowering.choices.plan_choices`, a plain function of
(formats, compute dtype, target, K); this module builds them:

- ``native``: ``ufp4_native_mm`` (the ``tl.dot_scaled`` kernel) where ``ufp4_compile.dispatch`` puts the
  native path first (sm_100, gfx950);
- ``template``: the Triton template, in-register dequantization to the compute dtype, several tile configs;
- ``blockscale``: the same template with the per-block FP32 scaling main loop where it equals the reference;
- ``extern``: dequantize + cuBLAS (``ufp4_dequant_mm``).

Without ``max_autotune`` the plan is ``extern`` alone on Hopper (measured fastest), ``native`` + ``extern``
where the native path exists (benchmarked against each other). :func:`force_choices` narrows the set
(tests, benchmarks). CPU tensors (and any case with no choice) go to the op's own implementation.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch._inductor import config as inductor_config
from torch._inductor import ir
from torch._inductor.lowering import fallback_handler
from torch._inductor.select_algorithm import autotune_select_algorithm

from ufp4_compile import dispatch
from ufp4_compile.kernels import gemm
from ufp4_compile.kernels.common import format_constants
from ufp4_compile.lowering.choices import (  # the configs are re-exported for benchmarks/gemm.py
    BLOCKSCALE_CONFIGS, CHOICE_NAMES, DEQUANT_CONFIGS, ChoicePlan, plan_choices)
from ufp4_compile.lowering.templates import dequant_mm_choice, native_mm_choice, scaled_mm_template
from ufp4_compile.numerics.quantize import as_format

log = logging.getLogger(__name__)

__all__ = ["BLOCKSCALE_CONFIGS", "CHOICE_NAMES", "DEQUANT_CONFIGS", "force_choices", "lower_scaled_mm", "state_key"]

_forced: tuple[str, ...] | None = None
_allow_cpu = False
_target: dispatch.Target | None = None


def state_key() -> str:
    """What :func:`force_choices` has set, for the compile caches' keys: it changes the code a graph lowers
    to, so a graph compiled under it must not be served to a compile without it (nor the other way)."""
    return f"forced{_forced}-cpu{int(_allow_cpu)}-target{_target}"


@contextlib.contextmanager
def force_choices(*names: str, allow_cpu: bool = False, target: dispatch.Target | str | None = None):
    """Offer exactly these choices (``"native"``, ``"template"``, ``"blockscale"``, ``"extern"``) while
    compiling, where they are exact.

    ``allow_cpu=True`` lets extern choices run for CPU tensors (tests of the lowering without a GPU);
    ``target`` plans the choices for that target instead of the tensors' device (for example ``"sm_100"``,
    with ``allow_cpu``, to run the native choice's generated code on CPU).
    """
    global _forced, _allow_cpu, _target
    bad = [n for n in names if n not in CHOICE_NAMES]
    if bad:
        raise ValueError(f"choices {bad} are not valid; valid values: {CHOICE_NAMES}")
    if target is not None and not isinstance(target, dispatch.Target):
        target = dispatch.Target.parse(target)
    saved = (_forced, _allow_cpu, _target)
    _forced, _allow_cpu, _target = tuple(names), allow_cpu, target
    try:
        yield
    finally:
        _forced, _allow_cpu, _target = saved


def _fallback(*args):
    return fallback_handler(torch.ops.ufp4.scaled_mm.default, add_to_fallback_set=False)(*args)


def _append_choice(choices, plan: ChoicePlan, inputs, layout, fa, fb, compute_dtype) -> None:
    if plan.name == "native":
        choices.append(native_mm_choice.bind(inputs, layout, a_fmt=fa.spec, b_fmt=fb.spec))
    elif plan.name == "extern":
        choices.append(dequant_mm_choice.bind(inputs, layout, a_fmt=fa.spec, b_fmt=fb.spec,
                                              compute_dtype=compute_dtype))
    else:
        ca, cb = format_constants(fa), format_constants(fb)
        bm, bn, bk, group_m, warps, stages = plan.config
        scaled_mm_template.maybe_append_choice(
            choices, input_nodes=inputs, layout=layout, num_stages=stages, num_warps=warps, BLOCK_M=bm,
            BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m, EVEN_K=plan.even_k, MODE=plan.mode,
            DOT=gemm.DOT_DTYPES[plan.dot], A_GRID=ca.grid, A_SCALE=ca.scale, B_GRID=cb.grid, B_SCALE=cb.scale,
            BLOCK=fa.block)


def lower_scaled_mm(a_codes, a_scales, a_ts, b_codes, b_scales, b_ts, a_fmt, b_fmt, compute_dtype, out_dtype):
    """The lowering registered for ``torch.ops.ufp4.scaled_mm.default``."""
    args = (a_codes, a_scales, a_ts, b_codes, b_scales, b_ts, a_fmt, b_fmt, compute_dtype, out_dtype)
    device = a_codes.get_device()
    on_cpu = device is None or device.type != "cuda"
    if on_cpu and not (_forced is not None and _allow_cpu):
        return _fallback(*args)
    fa, fb = as_format(a_fmt), as_format(b_fmt)
    inputs = [ir.ExternKernel.realize_input(t) for t in (a_codes, a_scales, a_ts, b_codes, b_scales, b_ts)]
    M, K2 = inputs[0].get_size()
    N = inputs[3].get_size()[0]
    layout = ir.FixedLayout(device, out_dtype, [M, N])
    target = _target or dispatch.current_target(device)
    K = 2 * int(K2) if isinstance(K2, int) or getattr(K2, "is_number", False) else None
    autotune = bool(inductor_config.max_autotune or inductor_config.max_autotune_gemm)
    plans = plan_choices(fa, fb, compute_dtype, target, K, autotune=autotune, only=_forced)
    choices = []
    for plan in plans:
        _append_choice(choices, plan, inputs, layout, fa, fb, compute_dtype)
    log.debug("ufp4.scaled_mm %s x %s (%s) on %s: %s", fa.spec, fb.spec, compute_dtype, target,
              [p.name for p in plans])
    if not choices:
        log.info("ufp4.scaled_mm %s x %s (%s): no choice fits, falling back", fa.spec, fb.spec, compute_dtype)
        return _fallback(*args)
    result = autotune_select_algorithm("ufp4_scaled_mm", choices, inputs, layout)
    return result[0] if isinstance(result, tuple) else result
