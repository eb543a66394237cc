"""Inductor lowerings of the ufp4 ops (``scaled_mm``: Triton template + extern choices, autotuned;
``quantize``, ``quantize_dequantize``, ``dequantize``: the Triton kernels launched from Inductor's generated
code) and the CUDA implementations of the ops (Triton launchers, for eager calls). :func:`register` is lazy and idempotent; the backend
calls it before compiling. Importing this package imports neither Inductor nor Triton.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """Register the ``ufp4::scaled_mm``, ``ufp4::round_to_bf16`` and ``ufp4::sample_median`` lowerings, the
    quantize and dequantize kernels' lowerings and the ops' CUDA kernels, once per process."""
    global _registered
    if _registered:
        return
    import torch
    from torch._inductor.lowering import fallbacks, register_lowering

    import ufp4_compile.ops  # noqa: F401  (defines the ops)
    from ufp4_compile.lowering import static_launch
    from ufp4_compile.lowering.cuda_impls import register_cuda_impls
    from ufp4_compile.lowering.kernel_calls import LOWERINGS, install_memos
    from ufp4_compile.lowering.median import lower_sample_median
    from ufp4_compile.lowering.rounding import lower_round_to_bf16
    from ufp4_compile.lowering.scaled_mm import lower_scaled_mm

    # Install unconditionally: an Inductor compile that met an op before this call has already put a
    # generic fallback into ``lowerings`` (graph.py's make_fallback), which would otherwise shadow ours.
    for name, lowering in {"scaled_mm": lower_scaled_mm, "round_to_bf16": lower_round_to_bf16,
                        "sample_median": lower_sample_median, **LOWERINGS}.items():
        op = getattr(torch.ops.ufp4, name).default
        fallbacks.discard(op)
        register_lowering(op, type_promotion_kind=None)(lowering)
    install_memos()
    static_launch.install()
    if torch.cuda.is_available():
        register_cuda_impls()
    _registered = True


def pairing(option):
    """The context of the backend option ``pair_launches`` (docs/backend.md): True pairs launches with the
    default policy (a tensor's two quantizations first, from one read: the dual kernel; then quantizations
    along the same kind of axis; without CUDA graphs along the other axis too), "same-axis" never pairs two
    tensors across axes, "all" does with CUDA graphs too, "no-dual" the default without the dual kernel (a
    tensor's two axes read twice, by the pair kernel), "dual-last" the dual kernel only for a quantization with
    no same-axis partner, "single-duals" the default with each tensor's dual launch its own (not two tensors'
    in one), "dequantize-apart" the default with the backward's dequantizations in launches of their own (not
    in dY's dual launch), False not at all (:func:`partners.pair_launches`)."""
    from ufp4_compile.lowering.partners import pair_launches

    return pair_launches(option is not False, other_axis={"same-axis": False, "all": True}.get(option),
                         dual={"no-dual": False, "dual-last": "last"}.get(option, "first"),
                         two_duals=option != "single-duals", dual_dequantize=option != "dequantize-apart")


def cache_key() -> str:
    """The lowering's process-wide settings that change generated code (``scaled_mm.force_choices``,
    ``partners.pair_launches``), for the backend's part of Inductor's cache keys."""
    from ufp4_compile.lowering import partners, scaled_mm

    return f"{scaled_mm.state_key()}-{partners.state_key()}"
