"""``ufp4 analyze --model``: the UFP4 paper's mechanism (arXiv 2606.20381), measured per layer on a trained GPT.

Three measurements on one held-out batch (the first validation batch) of one trained model, all against the
same model run exactly:

1. **Operands.** For every ``nn.Linear`` the recipes rewrite and every GEMM role, each operand (X, W, dY along
   the role's reduction axis, :data:`diagnose.OPERANDS`) is quantized on the E2M1 and the INT4 grid (1x16
   blocks, FP32 scales amax/q_max, round to nearest), without and with RHT-16: shrinkage
   alpha = <Q(A), A>/||A||^2 and SQNR against the unquantized operand, in the original domain (the rotation
   undone with ``rht_inverse``; it is orthogonal, so this equals the rotated domain up to FP32 rounding).
2. **Forward compounding.** The batch through the model with each recipe's Fprop GEMMs quantized (the eager
   emulation, Dgrad and Wgrad exact): per block, the hidden state against the exact one (norm ratio,
   projection alpha_h = <h_q, h>/||h||^2, cosine, SQNR), then the logits and the loss.
3. **Backward compounding.** Exact forward, the recipe's Dgrad and Wgrad quantized (stochastic rounding with
   a fixed seed): per block the gradient of the residual stream at the block's input, and per layer dX (the
   gradient of the Linear's input) and dW, with the same ratios.

The paper's prediction: E2M1's round-to-nearest shrinks every operand (alpha < 1, largest where the grid's
step widens), the shrinkage of a GEMM is about alpha_a * alpha_b and compounds over depth, and the RHT (which
makes blocks more Gaussian) worsens it; the uniform INT4 grid has no shrinkage, and the RHT helps it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from ufp4_compile.data.corpus import Corpus, val_batches
from ufp4_compile.emulate import emulate, restore
from ufp4_compile.models.gpt import GPT, GPTConfig
from ufp4_compile.numerics import (Grid, OperandFormat, ScaleFormat, dequantize, quantize, rht_inverse,
                                   shrinkage_alpha, sqnr_db)
from ufp4_compile.passes.seeds import rht_seed_for
from ufp4_compile.recipes import UFP4, Recipe, Role, SRSeedPolicy, get_recipe
from ufp4_compile.training import checkpoint, diagnose

BLOCK = 16
RHT_SIZES = (0, 16)
GRIDS = (Grid.E2M1, Grid.INT4)
MAX_TOKENS = diagnose.MAX_TOKENS  # token rows kept per captured X, dY and dX
SR_DRAWS = 4  # stochastic-rounding seeds the backward figures are averaged over
_RHT_ON, _RHT_OFF = "+rht16", "-rht0"  # recipe-name suffixes: RHT-16 switched on / off in Fprop and Dgrad


# ---- recipes ------------------------------------------------------------------------------------------------

def with_rht(recipe: Recipe, size: int, name: str) -> Recipe:
    """``recipe`` with RHT of ``size`` (0 = off) in Fprop and Dgrad; Wgrad unchanged (every preset rotates it)."""
    change = {role.value: dataclasses.replace(recipe.gemm(role), rht=size)
              for role in (Role.FPROP, Role.DGRAD) if recipe.gemm(role) is not None}
    return dataclasses.replace(recipe, name=name, **change)


def parse_recipe(text: str) -> Recipe:
    """A preset name, optionally with ``+rht16`` (RHT-16 on in Fprop and Dgrad) or ``-rht0`` (off)."""
    name = text.strip()
    for suffix, size in ((_RHT_ON, 16), (_RHT_OFF, 0)):
        if name.endswith(suffix):
            return with_rht(get_recipe(name[: -len(suffix)]), size, name)
    recipe = get_recipe(name)
    if not recipe.quantized_roles:
        raise ValueError(f"recipe={name!r} quantizes nothing; give 4-bit recipes (bf16 is the exact reference)")
    return recipe


def parse_recipes(text: str) -> list[Recipe]:
    names = [n for n in (part.strip() for part in text.split(",")) if n]
    if not names:
        raise ValueError(f"--recipes={text!r} is empty; e.g. e2m1-ref,e2m1-ref+rht16,ufp4")
    return [parse_recipe(n) for n in dict.fromkeys(names)]


def fprop_only(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, dgrad=None, wgrad=None)


def backward_only(recipe: Recipe, sr_seed: int = 0) -> Recipe:
    """Dgrad and Wgrad as in ``recipe``, stochastic rounding from the fixed ``sr_seed`` so the figures repeat."""
    return dataclasses.replace(recipe, fprop=None, sr_seed_policy=SRSeedPolicy.FIXED, sr_seed=sr_seed)


# ---- the model ----------------------------------------------------------------------------------------------

def train_model(config: GPTConfig, corpus: Corpus, steps: int, batch_size: int, lr: float, seed: int,
                device: str, bf16: bool) -> tuple[GPT, dict]:
    """A bf16-recipe GPT trained in-process (eager, no compilation) for ``steps`` steps of ``ufp4 train``'s loop."""
    from ufp4_compile.recipes import BF16
    from ufp4_compile.training.loop import Run, RunSpec, TrainConfig

    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=steps // 10, device=device,
                      autocast_bf16=bf16, backend="eager", eval_batches=1, log_every=max(1, steps),
                      progress=False)
    run = Run(RunSpec(BF16, seed), config, corpus, cfg)
    result = run.execute(reset=False)
    info = {"source": "trained in-process", "recipe": "bf16", "steps": steps, "batch_size": batch_size, "lr": lr,
            "seed": seed, "final_train_loss": result["losses"][-1], "val_loss": result["val_loss"],
            "wall_s": result["wall_s"]}
    return run.model, info


def load_model(path: pathlib.Path, device: str) -> tuple[GPT, dict]:
    """The model of a ``ufp4 train`` checkpoint (``checkpoints/<run>.pt``), read with ``weights_only=True``."""
    if not path.is_file():
        raise ValueError(f"--checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        identity, progress = json.loads(payload["identity"]), json.loads(payload["progress"])
        model = GPT(GPTConfig(**identity["model"]))
        model.load_state_dict(payload["model"])
    except Exception as exc:  # noqa: BLE001 (zip, unpickling, key and shape errors all mean the same here)
        raise ValueError(f"--checkpoint {path}: not a checkpoint of ufp4 train ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    if payload.get("format_version") != checkpoint.FORMAT_VERSION:
        raise ValueError(f"--checkpoint {path}: format {payload.get('format_version')!r}, expected "
                         f"{checkpoint.FORMAT_VERSION}")
    info = {"source": str(path), "run_id": identity.get("run_id"), "seed": identity.get("seed"),
            "steps": progress.get("step"), "corpus_sha256": identity.get("corpus"),
            "final_train_loss": (progress.get("losses") or [None])[-1]}
    return model.to(device), info


# ---- one pass with hooks ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Trace:
    """What one forward (and backward) of the GPT leaves: per block and per ``nn.Linear``."""

    hidden: list = dataclasses.field(default_factory=list)  # block outputs
    logits: torch.Tensor | None = None
    loss: float = math.nan
    X: dict = dataclasses.field(default_factory=dict)  # Linear inputs (first MAX_TOKENS rows)
    Y: dict = dataclasses.field(default_factory=dict)  # Linear outputs (first MAX_TOKENS rows)
    dY: dict = dataclasses.field(default_factory=dict)  # gradients of the Linear outputs
    dX: dict = dataclasses.field(default_factory=dict)  # gradients of the Linear inputs
    dW: dict = dataclasses.field(default_factory=dict)
    block_grad: dict = dataclasses.field(default_factory=dict)  # gradient of the residual stream at block i's input


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    return t.detach().reshape(-1, width)[:MAX_TOKENS]


def _hooks(model: GPT, trace: Trace, backward: bool) -> list:
    def on_grad(store, key, width=None):
        def hook(g):
            store[key] = _rows(g, width) if width else g.detach().float()
        return hook

    handles = []
    for i, layer in enumerate(model.layers):
        handles.append(layer.register_forward_hook(lambda m, a, out: trace.hidden.append(out.detach().float())))
        if backward:
            def block_pre(m, args, i=i):
                if args[0].requires_grad:
                    args[0].register_hook(on_grad(trace.block_grad, i))
            handles.append(layer.register_forward_pre_hook(block_pre))
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue

        def pre(m, args, name=name):
            trace.X[name] = _rows(args[0], m.in_features)
            if backward and args[0].requires_grad:
                args[0].register_hook(on_grad(trace.dX, name, m.in_features))

        def post(m, args, out, name=name):
            trace.Y[name] = _rows(out, m.out_features)
            if backward and out.requires_grad:
                out.register_hook(on_grad(trace.dY, name, m.out_features))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def run_trace(model: GPT, x: torch.Tensor, y: torch.Tensor, autocast, backward: bool) -> Trace:
    """One forward (and backward, leaving no gradients behind) of ``model`` on (x, y), hooked."""
    trace = Trace()
    handles = _hooks(model, trace, backward)
    try:
        with (contextlib.nullcontext() if backward else torch.no_grad()):
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            if backward:
                loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    trace.logits, trace.loss = logits.detach().float(), float(loss.detach())
    if backward:
        trace.dW = {name: m.weight.grad.detach().float().clone() for name, m in model.named_modules()
                    if isinstance(m, nn.Linear) and m.weight.grad is not None}
        for p in model.parameters():
            p.grad = None
    return trace


def compare(reference: torch.Tensor, approx: torch.Tensor) -> dict:
    """Norm ratio ||a||/||r||, projection alpha = <a, r>/||r||^2, cosine and SQNR (dB) of ``approx`` against
    ``reference``."""
    r, a = reference.double().flatten(), approx.double().flatten()
    rn, an = float(r.norm()), float(a.norm())
    cosine = float(r @ a) / (rn * an) if rn and an else math.nan
    return {"norm_ratio": an / rn if rn else math.nan, "alpha": shrinkage_alpha(reference, approx) if rn else math.nan,
            "cosine": cosine, "sqnr_db": sqnr_db(reference, approx)}


# ---- the three measurements -----------------------------------------------------------------------------------

def measured_layers(model: GPT, exact: Trace, dtype: torch.dtype) -> tuple[list[str], dict[str, str]]:
    """The ``nn.Linear`` names the recipes rewrite (``passes.policy`` for ufp4) and the kept ones with reasons."""
    tokens = {name: exact.X[name].shape[0] for name in exact.X}
    decisions = diagnose.plan(model, UFP4, tokens, dtype)
    kept = {name: roles["kept"] for name, roles in decisions.items() if "kept" in roles}
    return [name for name in decisions if name not in kept], kept


def operand_stats(t: torch.Tensor, axis: int, grid: Grid, size: int, rht_seed: int) -> dict:
    fmt = OperandFormat(grid, BLOCK, ScaleFormat.FP32)
    approx = dequantize(quantize(t, axis, fmt, rht=size, rht_seed=rht_seed))
    if size:
        approx = rht_inverse(approx, axis, size, rht_seed)
    reference = t.float()
    return {"alpha": shrinkage_alpha(reference, approx), "sqnr_db": sqnr_db(reference, approx)}


def operand_rows(model: GPT, exact: Trace, layers: list[str], low: torch.dtype | None) -> list[dict]:
    """One row per (layer, role, operand, grid, RHT size): alpha and SQNR, round to nearest, FP32 scales."""
    modules = dict(model.named_modules())
    rows = []
    with torch.no_grad():
        for name in layers:
            usable = exact.X[name].shape[0] // BLOCK * BLOCK  # Wgrad's blocks run along the tokens
            tensors = {"X": exact.X[name][:usable], "dY": exact.dY[name][:usable], "W": modules[name].weight.detach()}
            if low is not None:  # under autocast the GEMMs see bf16 operands
                tensors = {k: v.to(low) for k, v in tensors.items()}
            seed = rht_seed_for(UFP4, name)
            for role, operands in diagnose.OPERANDS.items():
                for operand, axis in operands:
                    for grid in GRIDS:
                        for size in RHT_SIZES:
                            stats = operand_stats(tensors[operand], axis, grid, size, seed)
                            rows.append({"layer": name, "role": role.value, "operand": operand, "axis": axis,
                                         "grid": grid.value, "rht": size, **stats})
    return rows


def operand_summary(rows: list[dict]) -> list[dict]:
    """Mean and median alpha and mean SQNR over layers per (role, operand, grid, RHT), and over every operand
    per (grid, RHT) (role and operand ``"all"``)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["role"], r["operand"], r["grid"], r["rht"]), []).append(r)
        groups.setdefault(("all", "all", r["grid"], r["rht"]), []).append(r)
    return [{"role": role, "operand": operand, "grid": grid, "rht": size, "count": len(group),
             "alpha": sum(r["alpha"] for r in group) / len(group),
             "alpha_median": statistics.median(r["alpha"] for r in group),
             "alpha_min": min(r["alpha"] for r in group),
             "sqnr_db": sum(r["sqnr_db"] for r in group) / len(group)}
            for (role, operand, grid, size), group in groups.items()]


def forward_depth(model: GPT, recipe: Recipe, x, y, autocast, exact: Trace, layers: list[str]) -> dict:
    """Fprop quantized as in ``recipe``: hidden states per block, every Linear's output Y, the logits and the
    loss, against the exact pass (each quantized GEMM sees the already perturbed inputs: the errors accumulate)."""
    emulate(model, fprop_only(recipe))
    try:
        trace = run_trace(model, x, y, autocast, backward=False)
    finally:
        restore(model)
    blocks = [{"block": i, **compare(h, hq)} for i, (h, hq) in enumerate(zip(exact.hidden, trace.hidden))]
    per_layer = {name: {"Y": compare(exact.Y[name], trace.Y[name])} for name in layers if name in trace.Y}
    return {"blocks": blocks, "layers": per_layer, "logits": compare(exact.logits, trace.logits), "loss": trace.loss,
            "loss_exact": exact.loss, **decay(blocks)}


def _mean(results: list):
    """The mean of each number across ``results`` (dicts and lists of the same shape)."""
    first = results[0]
    if isinstance(first, dict):
        return {k: _mean([r[k] for r in results]) for k in first}
    if isinstance(first, list):
        return [_mean(list(column)) for column in zip(*results)]
    if isinstance(first, float):
        return sum(results) / len(results)
    return first


def backward_depth(model: GPT, recipe: Recipe, x, y, autocast, exact: Trace, layers: list[str],
                   draws: int = SR_DRAWS) -> dict:
    """Dgrad and Wgrad quantized as in ``recipe`` (exact forward): residual-stream gradients per block, dX and
    dW per layer, against the exact backward; each figure the mean over ``draws`` stochastic-rounding seeds
    (``alpha_end_draws``: each draw's alpha_h at block 0, whose spread is the rounding noise)."""
    results = []
    for draw in range(draws):
        emulate(model, backward_only(recipe, sr_seed=draw))
        try:
            trace = run_trace(model, x, y, autocast, backward=True)
        finally:
            restore(model)
        blocks = [{"block": i, **compare(exact.block_grad[i], trace.block_grad[i])}
                  for i in sorted(exact.block_grad) if i in trace.block_grad]
        per_layer = {name: {"dX": compare(exact.dX[name], trace.dX[name]),
                            "dW": compare(exact.dW[name], trace.dW[name])}
                     for name in layers if name in trace.dX and name in trace.dW}
        results.append({"blocks": blocks, "layers": per_layer})
    mean = _mean(results)
    # Gradients flow from the last block to the first: depth counts from the loss.
    return {**mean, **decay(mean["blocks"][::-1]), "draws": draws,
            "alpha_end_draws": [r["blocks"][0]["alpha"] if r["blocks"] else math.nan for r in results]}


def predicted_eta(model: GPT, recipe: Recipe, exact: Trace, layers: list[str], low: torch.dtype | None) -> dict:
    """Per layer and rewritten role, eta = alpha_a * alpha_b of the recipe's own formats on the exact operands
    (:func:`diagnose.gemm_stats`): what one GEMM alone would do to the signal, before any accumulation."""
    modules = dict(model.named_modules())
    tokens = {name: exact.X[name].shape[0] // BLOCK * BLOCK for name in layers}
    decisions = diagnose.plan(model, recipe, tokens, low or torch.float32)
    out = {}
    with torch.no_grad():
        for name in layers:
            roles = decisions.get(name, {})
            if "kept" in roles:
                continue
            n = tokens[name]
            tensors = {"X": exact.X[name][:n], "dY": exact.dY[name][:n], "W": modules[name].weight.detach()}
            if low is not None:
                tensors = {k: v.to(low) for k, v in tensors.items()}
            out[name] = {role.value: diagnose.gemm_stats(tensors, recipe.gemm(role), role, seed)["eta"]
                         for role, seed in roles.items()}
    return out


def decay(blocks: list[dict]) -> dict:
    """alpha_h after the last block (in the order given) and its geometric mean per block."""
    if not blocks:
        return {"alpha_end": math.nan, "alpha_per_block": math.nan}
    end = blocks[-1]["alpha"]
    per_block = end ** (1 / len(blocks)) if end > 0 else math.nan
    return {"alpha_end": end, "alpha_per_block": per_block}


# ---- the paper's directions ------------------------------------------------------------------------------------

def paper_checks(summary: list[dict], forward: dict, backward: dict) -> list[dict]:
    """The paper's directions on this model: a claim, the measured value(s) and whether it holds."""
    every = {(s["grid"], s["rht"]): s for s in summary if s["role"] == "all"}
    e2, e2r, i4, i4r = (every[g, s] for g in ("e2m1", "int4") for s in RHT_SIZES)
    med = "alpha_median"  # the median over operands: one atypical operand does not decide a direction
    checks = [
        ("operands: E2M1 shrinks (median alpha < 1)", e2[med], e2[med] < 1),
        ("operands: INT4 shrinks less than E2M1 (|median alpha - 1|: INT4, E2M1)", [i4[med], e2[med]],
         abs(i4[med] - 1) < abs(e2[med] - 1)),
        ("operands: RHT makes E2M1 shrink more (median alpha)", [e2[med], e2r[med]], e2r[med] < e2[med]),
        ("operands: RHT lowers E2M1's mean SQNR (dB)", [e2["sqnr_db"], e2r["sqnr_db"]], e2r["sqnr_db"] < e2["sqnr_db"]),
        ("operands: RHT raises INT4's mean SQNR (dB)", [i4["sqnr_db"], i4r["sqnr_db"]], i4r["sqnr_db"] > i4["sqnr_db"]),
    ]
    for label, results in (("forward", forward), ("backward", backward)):
        e2m1, e2m1_rht, ufp4 = (results.get(n) for n in ("e2m1-ref", "e2m1-ref" + _RHT_ON, "ufp4"))
        if e2m1 is not None:
            first = e2m1["blocks"][0 if label == "forward" else -1]["alpha"]
            checks.append((f"{label}: e2m1-ref's alpha_h decays with depth (first -> last block)",
                           [first, e2m1["alpha_end"]], e2m1["alpha_end"] < min(first, 1.0)))
        if e2m1 is not None and e2m1_rht is not None:
            checks.append((f"{label}: RHT worsens the E2M1 decay (alpha_h at the end)",
                           [e2m1["alpha_end"], e2m1_rht["alpha_end"]], e2m1_rht["alpha_end"] < e2m1["alpha_end"]))
        if e2m1 is not None and ufp4 is not None:
            checks.append((f"{label}: the uniform grid decays less (|1 - alpha_h|: ufp4 vs e2m1-ref)",
                           [ufp4["alpha_end"], e2m1["alpha_end"]],
                           abs(1 - ufp4["alpha_end"]) < abs(1 - e2m1["alpha_end"])))
    return [{"claim": c, "value": v, "holds": bool(h)} for c, v, h in checks]


# ---- all of it -------------------------------------------------------------------------------------------------

def analyze_model(model: GPT, corpus: Corpus, recipes: list[Recipe], batch_size: int, device: str, bf16: bool,
                  log=print) -> dict:
    """Every measurement on the first validation batch; a JSON-ready dict."""
    model.eval()
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    x, y = val_batches(corpus.val, 1, batch_size, model.config.seq_len)[0]
    x, y = x.to(device), y.to(device)
    low = torch.bfloat16 if bf16 else None
    exact = run_trace(model, x, y, autocast, backward=True)
    layers, kept = measured_layers(model, exact, low or torch.float32)
    log(f"exact pass: loss {exact.loss:.4f}; measuring {len(layers)} layers' operands")
    rows = operand_rows(model, exact, layers, low)
    summary = operand_summary(rows)
    forward, backward = {}, {}
    for recipe in recipes:
        log(f"{recipe.name}: forward (Fprop quantized) and backward (Dgrad, Wgrad quantized)")
        forward[recipe.name] = forward_depth(model, recipe, x, y, autocast, exact, layers)
        backward[recipe.name] = backward_depth(model, recipe, x, y, autocast, exact, layers)
        for name, etas in predicted_eta(model, recipe, exact, layers, low).items():
            if name in forward[recipe.name]["layers"]:
                forward[recipe.name]["layers"][name]["eta"] = etas.get("fprop")
            if name in backward[recipe.name]["layers"]:
                backward[recipe.name]["layers"][name].update(eta_dgrad=etas.get("dgrad"), eta_wgrad=etas.get("wgrad"))
    return {"batch": {"sequences": int(x.shape[0]), "seq_len": int(x.shape[1]), "tokens": int(x.numel())},
            "loss_exact": exact.loss, "layers": layers, "kept": kept,
            "recipes": {r.name: r.to_dict() for r in recipes},
            "operands": rows, "operand_summary": summary, "forward": forward, "backward": backward,
            "checks": paper_checks(summary, forward, backward)}
