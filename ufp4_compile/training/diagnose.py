"""``--diagnose``: shrinkage alpha and SQNR of every rewritten GEMM operand, per layer, on live tensors.

A measurement beside training, not the training path: an eager forward and backward of the (uncompiled)
model on the current batch, with hooks on the ``nn.Linear`` modules the recipe rewrites, captures X, W and
dY; each GEMM operand is quantized with ``ufp4_compile.numerics.quantize`` per the recipe's
``OperandFormat`` and RHT and compared with the unquantized (rotated) operand. Gradients are discarded.
"""

from __future__ import annotations

import fnmatch
import re

import torch
from torch import nn

from ufp4_compile.numerics import dequantize, mean_split, quantize, rht, shrinkage_alpha, sqnr_db
from ufp4_compile.recipes import GemmRecipe, LayerPolicy, MeanSplit, Recipe, Role

_BLOCK_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)")
_MEASURE_SEED = 0  # fixed stochastic-rounding seed for the measurement (E[Q(x)] = x whatever the seed)

# (operand a, its axis; operand b, its axis) for Y = X W^T, with X: tokens x in, W: out x in, dY: tokens x out.
OPERANDS = {
    Role.FPROP: (("X", 1), ("W", 1)),
    Role.DGRAD: (("dY", 1), ("W", 0)),
    Role.WGRAD: (("dY", 0), ("X", 0)),
}


def rewritten_linears(model: nn.Module, policy: LayerPolicy, n_blocks: int) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules a recipe with ``policy`` quantizes (the output head is ``lm_head``)."""
    chosen = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if policy.keep_output_head and name.split(".")[-1] == "lm_head":
            continue
        match = _BLOCK_INDEX.search(name)
        if match and (int(match.group(1)) < policy.keep_first
                      or int(match.group(1)) >= n_blocks - policy.keep_last):
            continue
        if any(fnmatch.fnmatch(name, pattern) for pattern in policy.skip):
            continue
        if min(module.in_features, module.out_features) < policy.min_features:
            continue
        chosen[name] = module
    return chosen


def operand_stats(x: torch.Tensor, axis: int, fmt, gemm: GemmRecipe, rht_seed: int, split: bool) -> dict:
    """alpha and SQNR of one operand quantized along ``axis`` (in the RHT-rotated domain when rht > 0)."""
    xf = x.float()
    reference = rht(xf, axis, gemm.rht, rht_seed) if gemm.rht else xf
    kwargs = {"rht": gemm.rht, "rht_seed": rht_seed, "seed": _MEASURE_SEED}
    if split:  # mean-residual split: Q(R) + mu (HIGH) or Q(R) + Q(mu) (FP4)
        mu, residual = mean_split(xf)
        approx = dequantize(quantize(residual, axis, fmt, **kwargs))
        if gemm.mean_split is MeanSplit.FP4:
            approx = approx + dequantize(quantize(mu, axis, fmt, **kwargs))
        else:
            approx = approx + (rht(mu, axis, gemm.rht, rht_seed) if gemm.rht else mu)
    else:
        approx = dequantize(quantize(xf, axis, fmt, **kwargs))
    return {"alpha": shrinkage_alpha(reference, approx), "sqnr_db": sqnr_db(reference, approx)}


def gemm_stats(tensors: dict[str, torch.Tensor], gemm: GemmRecipe, role: Role, rht_seed: int) -> dict:
    (a_name, a_axis), (b_name, b_axis) = OPERANDS[role]
    split = gemm.mean_split is not MeanSplit.OFF
    a = operand_stats(tensors[a_name], a_axis, gemm.a, gemm, rht_seed, split)
    b = operand_stats(tensors[b_name], b_axis, gemm.b, gemm, rht_seed, False)
    return {"a": {"operand": a_name, **a}, "b": {"operand": b_name, **b}, "eta": a["alpha"] * b["alpha"]}


def _capture(modules: dict[str, nn.Linear], store: dict[str, dict[str, torch.Tensor]]) -> list:
    handles = []
    for name, module in modules.items():
        def pre(mod, args, name=name):
            store[name]["X"] = args[0].detach().reshape(-1, mod.in_features)

        def back(mod, grad_input, grad_output, name=name):
            store[name]["dY"] = grad_output[0].detach().reshape(-1, mod.out_features)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_full_backward_hook(back))
    return handles


def measure(model: nn.Module, recipe: Recipe, x: torch.Tensor, y: torch.Tensor, autocast) -> dict:
    """{module name: {role: {"a": {operand, alpha, sqnr_db}, "b": {...}, "eta": alpha_a * alpha_b}}}."""
    if not recipe.quantized_roles:
        return {}
    n_blocks = len(getattr(model, "layers", ()))
    modules = rewritten_linears(model, recipe.layers, n_blocks)
    store = {name: {} for name in modules}
    handles = _capture(modules, store)
    try:
        with autocast:
            loss = model(x, y)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        for p in model.parameters():
            p.grad = None
    low = torch.bfloat16 if isinstance(autocast, torch.autocast) else None
    result = {}
    with torch.no_grad():
        for name, module in modules.items():
            tensors = dict(store[name], W=module.weight.detach())
            if low is not None:  # under autocast the GEMM sees bf16 operands
                tensors = {k: v.to(low) for k, v in tensors.items()}
            result[name] = {role.value: gemm_stats(tensors, recipe.gemm(role), role, recipe.rht_seed)
                            for role in recipe.quantized_roles}
    return result
