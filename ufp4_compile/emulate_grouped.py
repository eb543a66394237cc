"""Eager emulation of the grouped-GEMM rewrite (mixture-of-experts layers), beside :mod:`ufp4_compile.emulate`.

While an emulated model runs its forward, a ``TorchFunctionMode`` routes every ``torch._grouped_mm`` /
``torch.nn.functional.grouped_mm`` call through :class:`_GroupedFunction`, which makes the calls the pass
(:mod:`ufp4_compile.passes.rewrite_grouped_mm`) puts into the compiled graph: the same operands, axes,
formats, Hadamard seeds, stochastic-rounding seeds and Philox offsets (the site is the innermost module that
holds a 3-D parameter, as Dynamo names the module that called the GEMM), each expert's tokens padded to the
block for the Wgrad, and the same keep decisions. A role that is kept runs the product autograd would.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ufp4_compile import ops
from ufp4_compile.ops import compute_dtype_of
from ufp4_compile.numerics.formats import Rounding
from ufp4_compile.passes.policy import SiteFacts, block_ranges, site_keep_reason
from ufp4_compile.passes.rewrite_grouped_mm import grouped_role_reason, pad_groups
from ufp4_compile.passes.seeds import philox_offset, rht_seed_for
from ufp4_compile.recipes import GemmRecipe, Role

_GROUPED = tuple(f for f in (getattr(torch, "_grouped_mm", None), getattr(F, "grouped_mm", None)) if f is not None)


@dataclasses.dataclass
class CallPlan:
    """One call of one layer (a Linear or a grouped GEMM): which roles are quantized and with which seeds."""

    key: str
    gemms: dict  # Role -> GemmRecipe or None (kept)
    rht_seed: int
    seed: torch.Tensor | None
    compute: str  # the recipe's compute dtype, "bf16" or "fp32"

    def quantize_args(self, fmt, gemm: GemmRecipe, role: Role, operand: str) -> tuple:
        """``(rht, rht_seed, seed, offset)`` of one operand's quantization, as the pass passes them."""
        stochastic = fmt.rounding is Rounding.STOCHASTIC
        return (gemm.rht, self.rht_seed if gemm.rht else 0, self.seed if stochastic else None,
                philox_offset(self.key, role, operand) if stochastic else 0)


def role_reasons(recipe, facts: SiteFacts, blocks: dict) -> dict:
    """Why each role of a grouped GEMM is kept (None: rewritten), as the pass decides it."""
    site = site_keep_reason(facts, recipe.layers, blocks)
    return {role: site or grouped_role_reason(recipe, role, facts) for role in Role}


def _values(x, axis, fmt, gemm: GemmRecipe, plan: CallPlan, role: Role, operand: str) -> torch.Tensor:
    values, _ = ops.quantize_dequantize(x, axis, fmt.spec, *plan.quantize_args(fmt, gemm, role, operand),
                                        compute_dtype_of(plan.compute))
    return values


class _GroupedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, offs, plan: CallPlan):
        gemm = plan.gemms[Role.FPROP]
        if gemm is None:
            out = torch._grouped_mm(x, w, offs)
        else:
            out = torch._grouped_mm(_values(x, 1, gemm.a, gemm, plan, Role.FPROP, "a"),
                                    _values(w, 1, gemm.b, gemm, plan, Role.FPROP, "b"), offs)
        ctx.save_for_backward(x, w, offs)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, dy):
        x, w, offs = ctx.saved_tensors
        plan = ctx.plan
        dx = dw = None
        if ctx.needs_input_grad[0]:
            gemm = plan.gemms[Role.DGRAD]
            if gemm is None:
                dx = torch._grouped_mm(dy, w.transpose(-2, -1), offs)
            else:
                b = _values(w, 2, gemm.b, gemm, plan, Role.DGRAD, "b").permute(0, 2, 1)
                dx = torch._grouped_mm(_values(dy, 1, gemm.a, gemm, plan, Role.DGRAD, "a"), b, offs)
        if ctx.needs_input_grad[1]:
            gemm = plan.gemms[Role.WGRAD]
            if gemm is None:
                dw = torch._grouped_mm(x.transpose(-2, -1), dy, offs)
            else:
                block = math.lcm(gemm.a.block, gemm.b.block, gemm.rht or 1)
                x_pad, dy_pad, padded_offs = pad_groups(x, dy, offs, block)
                a = _values(dy_pad, 0, gemm.a, gemm, plan, Role.WGRAD, "a")
                b = _values(x_pad, 0, gemm.b, gemm, plan, Role.WGRAD, "b").permute(1, 0)
                dw = torch._grouped_mm(b, a, padded_offs)
        return dx, dw, None, None


class GroupedMode(TorchFunctionMode):
    """Routes the grouped GEMMs of an emulated model's forward through the recipe (see the module doc)."""

    def __init__(self, state, blocks: dict):
        super().__init__()
        self.state, self.blocks = state, blocks
        self.names: list[str] = []  # the modules with 3-D parameters whose forward is running, innermost last

    def _plan(self, x: torch.Tensor, w: torch.Tensor) -> CallPlan:
        state = self.state
        recipe = state.recipe
        name = self.names[-1] if self.names else ""
        call = state.calls.get(("grouped", name), 0)
        state.calls[("grouped", name)] = call + 1
        facts = SiteFacts(name, "_grouped_mm", x.dtype, None, x.shape[0], x.shape[1], w.shape[-1])
        reasons = role_reasons(recipe, facts, self.blocks)
        gemms = {role: None if reasons[role] else recipe.gemm(role) for role in Role}
        seed = state.step_seed(x.device) if any(gemms.values()) else None
        return CallPlan(f"{name or '<root>'}#{call}", gemms, rht_seed_for(recipe, name), seed,
                     recipe.compute_dtype.value)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _GROUPED:
            x, w = args[0], args[1]
            offs = args[2] if len(args) > 2 else kwargs.get("offs")
            extra = {k: v for k, v in kwargs.items() if k != "offs" and v is not None}
            # Tokens x K by experts x K x N with offsets, as the pass rewrites; any other form runs as called.
            if offs is not None and not extra and len(args) <= 3 and x.dim() == 2 and w.dim() == 3:
                plan = self._plan(x, w)
                if any(plan.gemms.values()):
                    return _GroupedFunction.apply(x, w, offs, plan)
        return func(*args, **kwargs)


def install(model: nn.Module, state) -> list:
    """Hooks that run ``model``'s forward under a :class:`GroupedMode` and name the grouped GEMMs' modules;
    the handles, for :func:`ufp4_compile.emulate.restore`."""
    experts = [(name, m) for name, m in model.named_modules()
               if any(p.dim() == 3 for p in m.parameters(recurse=False))]
    mode = GroupedMode(state, block_ranges(name for name, _ in experts))
    handles = []

    def enter(*_):
        mode.__enter__()

    def leave(*_):
        mode.__exit__(None, None, None)

    handles.append(model.register_forward_pre_hook(enter))
    handles.append(model.register_forward_hook(leave, always_call=True))

    def push(name):
        def hook(*_):
            mode.names.append(name)  # a hook's return value would replace the module's input or output
        return hook

    def pop(*_):
        mode.names.pop()

    for name, module in experts:
        handles.append(module.register_forward_pre_hook(push(name)))
        handles.append(module.register_forward_hook(pop, always_call=True))
    return handles
