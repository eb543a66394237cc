"""Eager emulation of a recipe: ``nn.Linear`` layers swapped for a version calling the ufp4 ops directly.

``emulate(model, recipe="ufp4", **options)`` changes every ``nn.Linear`` of ``model`` in place (its class,
not its parameters or their names) so that forward and backward make the same ``torch.ops.ufp4`` calls as
the compiled graph: the same operands, axes, formats, Hadamard seeds, stochastic-rounding seeds and Philox
offsets (all derived from the module name and call index, :mod:`ufp4_compile.passes.seeds`), and the same
keep/rewrite decisions (:mod:`ufp4_compile.passes.policy`). It is the oracle of the compiled path's parity
tests and a fallback that runs anywhere without ``torch.compile``. ``restore(model)`` undoes it.

Grouped GEMMs (``torch._grouped_mm``, mixture-of-experts layers) are emulated too, while the model runs its
forward (:mod:`ufp4_compile.emulate_grouped`). A matmul written any other way runs in its original precision
here. Backward holds the packed codes of X (Wgrad's operand), as the compiled graph does.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ufp4_compile import emulate_grouped, numerics, ops
from ufp4_compile.emulate_grouped import CallPlan
from ufp4_compile.passes.policy import SiteFacts, block_ranges, gemm_keep_reason, head_by_name, site_keep_reason
from ufp4_compile.passes.seeds import rank_salt, rht_seed_for
from ufp4_compile.recipes import GemmRecipe, MeanSplit, Recipe, Role, SRSeedPolicy

SEED_HIGH = 1 << 62


@dataclasses.dataclass
class _State:
    """Shared by every emulated layer of one model: recipe, facts about the model, per-step counters."""

    recipe: Recipe
    blocks: dict
    embeddings: dict  # id(weight) -> vocabulary size
    last_linear: str
    calls: dict = dataclasses.field(default_factory=dict)
    seed: torch.Tensor | None = None

    def new_step(self, *_):
        self.calls.clear()
        self.seed = None

    def step_seed(self, device) -> torch.Tensor:
        """The seed of this forward call, as the compiled graph makes it: ``sr_seed`` or a draw, XORed with
        the rank's salt (0 on rank 0)."""
        if self.seed is None:
            if self.recipe.sr_seed_policy is SRSeedPolicy.FIXED:
                self.seed = torch.tensor(self.recipe.sr_seed ^ rank_salt(), dtype=torch.int64, device=device)
            else:
                self.seed = torch.randint(0, SEED_HIGH, (), dtype=torch.int64, device=device) ^ rank_salt()
        return self.seed


def _quantize(x, axis, fmt, gemm: GemmRecipe, plan: CallPlan, role: Role, operand: str):
    return ops.quantize(x, axis, fmt.spec, *plan.quantize_args(fmt, gemm, role, operand))


def _transposed(q):
    codes, scales, tensor_scale = q
    return codes.t(), scales.t(), tensor_scale


def _gemm(a, qb, gemm: GemmRecipe, plan: CallPlan, role: Role, out_dtype, bias=None, b_high=None):
    """``a @ b^T`` as the pass builds it: optional mean split of ``a`` (rows = tokens), then + bias."""
    extra = gemm.mean_split is not MeanSplit.OFF or bias is not None
    mm_dtype = torch.float32 if extra else out_dtype
    mu = None
    if gemm.mean_split is not MeanSplit.OFF:
        mu, a = numerics.mean_split(a)
    qa = _quantize(a, 1, gemm.a, gemm, plan, role, "a")
    out = ops.scaled_mm(*qa, *qb, gemm.a.spec, gemm.b.spec, plan.compute, mm_dtype)
    if gemm.mean_split is MeanSplit.FP4:
        qmu = _quantize(mu, 1, gemm.a, gemm, plan, role, "mu")
        out = out + ops.scaled_mm(*qmu, *qb, gemm.a.spec, gemm.b.spec, plan.compute, torch.float32)
    elif gemm.mean_split is MeanSplit.HIGH:
        out = out + mu @ b_high.float()
    if bias is not None:
        out = out + bias
    return out.to(out_dtype)


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, plan: CallPlan):
        fprop = plan.gemms[Role.FPROP]
        wgrad = plan.gemms[Role.WGRAD] if ctx.needs_input_grad[1] else None
        if fprop is None:
            y = F.linear(x, weight, bias)
        else:
            qw = _quantize(weight, 1, fprop.b, fprop, plan, Role.FPROP, "b")
            y = _gemm(x, qw, fprop, plan, Role.FPROP, x.dtype, bias, b_high=weight.t())
        # Wgrad's X operand is quantized now, as the compiled forward does: backward holds codes, not X.
        x_saved = _transposed(_quantize(x, 0, wgrad.b, wgrad, plan, Role.WGRAD, "b")) if wgrad else (x,)
        ctx.save_for_backward(weight, *x_saved)
        ctx.plan, ctx.has_bias, ctx.x_dtype = plan, bias is not None, x.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        weight, *x_saved = ctx.saved_tensors
        plan = ctx.plan
        dgrad, wgrad = plan.gemms[Role.DGRAD], plan.gemms[Role.WGRAD] if ctx.needs_input_grad[1] else None
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            if dgrad is None:
                dx = dy @ weight
            else:
                qw = _transposed(_quantize(weight, 0, dgrad.b, dgrad, plan, Role.DGRAD, "b"))
                dx = _gemm(dy, qw, dgrad, plan, Role.DGRAD, dy.dtype, b_high=weight)
        if ctx.needs_input_grad[1]:
            if wgrad is None:
                dw = dy.t() @ x_saved[0]
            else:
                qdy = _transposed(_quantize(dy, 0, wgrad.a, wgrad, plan, Role.WGRAD, "a"))
                dw = ops.scaled_mm(*qdy, *x_saved, wgrad.a.spec, wgrad.b.spec, plan.compute, dy.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dx, dw, db, None


class EmulatedLinear(nn.Linear):
    """An ``nn.Linear`` whose matmuls follow a recipe through the ufp4 ops (see :func:`emulate`)."""

    _ufp4_state: _State
    _ufp4_name: str

    def _plan(self, x2: torch.Tensor) -> tuple[CallPlan, dict]:
        state, name = self._ufp4_state, self._ufp4_name
        recipe = state.recipe
        call = state.calls.get(name, 0)
        state.calls[name] = call + 1
        m, k, n = x2.shape[0], self.in_features, self.out_features
        head = head_by_name(name)
        if id(self.weight) in state.embeddings:
            head = "output head: weight tied to an input embedding"
        elif head is None and name == state.last_linear and n in state.embeddings.values():
            head = f"output head: last matmul, N={n} equals the embedding vocabulary"
        facts = SiteFacts(name, "addmm" if self.bias is not None else "mm", x2.dtype, None, m, k, n, head)
        keep = site_keep_reason(facts, recipe.layers, state.blocks)
        reasons = {role: keep or gemm_keep_reason(role, recipe, m, k, n, x2.dtype) for role in Role}
        gemms = {role: None if reasons[role] else recipe.gemm(role) for role in Role}
        seed = state.step_seed(x2.device) if any(gemms.values()) else None
        plan = CallPlan(f"{name or '<root>'}#{call}", gemms, rht_seed_for(recipe, name), seed,
                     recipe.compute_dtype.value)
        return plan, reasons

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        x2 = x.reshape(-1, self.in_features)
        plan, _ = self._plan(x2)
        if not any(plan.gemms.values()):
            return F.linear(x, weight, bias)
        with torch.autocast(device, enabled=False):
            y2 = _LinearFunction.apply(x2, weight, bias, plan)
        return y2.reshape(*x.shape[:-1], self.out_features)


def emulate(model: nn.Module, recipe: str | Recipe | None = None, **options) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` (in place) for :class:`EmulatedLinear` following ``recipe``
    with the backend's layer and seed ``options`` (``skip``, ``keep_first``, ``sr_seed_policy``...), over the
    process defaults (``ufp4_compile.configure``, ``UFP4_OPTIONS``) as the backend takes them; ``recipe``
    None means the process default or ``"ufp4"``."""
    from ufp4_compile.backend import resolve_options
    from ufp4_compile.defaults import with_defaults

    resolved = resolve_options(with_defaults({**({"recipe": recipe} if recipe is not None else {}), **options}))
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    embeddings = {id(m.weight): m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    state = _State(resolved.recipe, block_ranges(name for name, _ in linears), embeddings,
                   linears[-1][0] if linears else "")
    for name, module in linears:
        module.__class__ = EmulatedLinear
        module._ufp4_state, module._ufp4_name = state, name
    model._ufp4_emulation_hook = model.register_forward_pre_hook(state.new_step)
    model._ufp4_emulation_grouped_hooks = emulate_grouped.install(model, state)
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`emulate`: the layers are plain ``nn.Linear`` again."""
    for module in model.modules():
        if isinstance(module, EmulatedLinear):
            module.__class__ = nn.Linear
            del module._ufp4_state, module._ufp4_name
    hook = getattr(model, "_ufp4_emulation_hook", None)
    if hook is not None:
        hook.remove()
        del model._ufp4_emulation_hook
    for handle in getattr(model, "_ufp4_emulation_grouped_hooks", ()):
        handle.remove()
    model.__dict__.pop("_ufp4_emulation_grouped_hooks", None)
    return model
