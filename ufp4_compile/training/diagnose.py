"""``--diagnose``: shrinkage alpha and SQNR of every rewritten GEMM operand, per layer, on live tensors.

A measurement beside training, not the training path: an eager forward and backward of the (uncompiled)
model on the current batch, with hooks on its ``nn.Linear`` modules, captures X, W and dY; for each GEMM the
backend rewrites (the decisions of :mod:`ufp4_compile.passes.policy`), each operand is quantized with ``ufp4_compile.numerics.quantize`` per the recipe's
``OperandFormat`` and RHT and compared with the unquantized (rotated) operand. Gradients are discarded.
"""

from __future__ import annotations

import torch
from torch import nn

from ufp4_compile.numerics import dequantize, mean_split, quantize, rht, shrinkage_alpha, sqnr_db
from ufp4_compile.passes import policy
from ufp4_compile.passes.seeds import rht_seed_for
from ufp4_compile.recipes import GemmRecipe, MeanSplit, Recipe, Role

_MEASURE_SEED = 0  # fixed stochastic-rounding seed for the measurement (E[Q(x)] = x whatever the seed)
MAX_TOKENS = 4096  # token rows measured per layer (a multiple of 32: blocks and RHT along tokens still fit)

# (operand a, its axis; operand b, its axis) for Y = X W^T, with X: tokens x in, W: out x in, dY: tokens x out.
OPERANDS = {
    Role.FPROP: (("X", 1), ("W", 1)),
    Role.DGRAD: (("dY", 1), ("W", 0)),
    Role.WGRAD: (("dY", 0), ("X", 0)),
}


def plan(model: nn.Module, recipe: Recipe, tokens: dict[str, int], dtype: torch.dtype) -> dict[str, dict]:
    """Per ``nn.Linear``: ``{role: rht_seed}`` for the GEMMs the backend rewrites, or ``{"kept": reason}``.

    The decisions come from :mod:`ufp4_compile.passes.policy`, as in the graph pass and the emulation;
    ``tokens[name]`` is the layer's token count (Wgrad's reduction length).
    """
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    embeddings = {id(m.weight): m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    blocks = policy.block_ranges(name for name, _ in linears)
    out = {}
    for name, module in linears:
        if name not in tokens:
            continue
        m, k, n = tokens[name], module.in_features, module.out_features
        head = policy.head_by_name(name)
        if id(module.weight) in embeddings:
            head = "output head: weight tied to an input embedding"
        elif head is None and name == linears[-1][0] and n in embeddings.values():
            head = f"output head: last matmul, N={n} equals the embedding vocabulary"
        facts = policy.SiteFacts(name, "mm" if module.bias is None else "addmm", dtype, None, m, k, n, head)
        keep = policy.site_keep_reason(facts, recipe.layers, blocks)
        roles = {role: rht_seed_for(recipe, name) for role in Role
                 if not (keep or policy.gemm_keep_reason(role, recipe, m, k, n, dtype))}
        out[name] = roles if roles else {"kept": keep or "no GEMM of this layer is rewritten"}
    return out


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
    """{module name: {role: {"a": {operand, alpha, sqnr_db}, "b": {...}, "eta": alpha_a * alpha_b}}}, and
    ``{"kept": reason}`` for a layer the recipe leaves in high precision."""
    if not recipe.quantized_roles:
        return {}
    modules = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
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
    tokens = {name: len(t["X"]) for name, t in store.items() if "X" in t and "dY" in t}
    decisions = plan(model, recipe, tokens, low or next(model.parameters()).dtype)
    result = {}
    with torch.no_grad():
        for name, roles in decisions.items():
            if "kept" in roles:
                result[name] = roles
                continue
            # The decisions saw the full token count; the statistics use the first MAX_TOKENS rows.
            tensors = {k: v[:MAX_TOKENS] for k, v in store[name].items()}
            tensors["W"] = modules[name].weight.detach()
            if low is not None:  # under autocast the GEMM sees bf16 operands
                tensors = {k: v.to(low) for k, v in tensors.items()}
            result[name] = {role.value: gemm_stats(tensors, recipe.gemm(role), role, seed)
                            for role, seed in roles.items()}
    return result
