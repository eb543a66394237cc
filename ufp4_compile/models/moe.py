"""A mixture-of-experts feed-forward layer: top-k routed SwiGLU experts plus a shared expert.

The UFP4 paper's MoE models route each token to ``top_k`` of ``n_experts`` experts and add a shared
expert. The routed experts run as grouped GEMMs (``torch._grouped_mm``, as torchtitan's MoE does): tokens
are sorted by expert, ``offs`` holds each expert's end row, and one call computes every expert's product
over its own rows, with static shapes (no data-dependent sizes, so one compiled graph serves every batch),
in bf16 whatever the input dtype (the only dtype torch's grouped GEMM takes everywhere).
The expert weights are stacked ``(n_experts, in, out)`` parameters; the router and the shared expert are
plain ``nn.Linear`` layers (the router is named ``router``, which the layer policy keeps in high precision).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SharedExpert(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MoE(nn.Module):
    """``forward(x)`` for ``x`` of shape (..., d_model): the routed experts' weighted sum plus the shared expert."""

    def __init__(self, d_model: int, hidden: int, n_experts: int, top_k: int, shared_hidden: int):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} is not valid for n_experts={n_experts}; valid values: 1..{n_experts}")
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(n_experts, d_model, 2 * hidden))  # (E, K, N): rows @ W[e]
        self.down = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.shared = SharedExpert(d_model, shared_hidden) if shared_hidden else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, out_scale: float = 1.0) -> None:
        nn.init.normal_(self.gate_up, std=std)
        nn.init.normal_(self.down, std=std * out_scale)

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row order sorted by expert, token of each sorted row, its routing weight, offs)."""
        probs = self.router(flat).float().softmax(dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        expert_of_row = experts.reshape(-1)
        order = torch.argsort(expert_of_row, stable=True)
        counts = F.one_hot(expert_of_row, self.n_experts).sum(dim=0)  # (E,): a static size
        offs = counts.cumsum(dim=0).to(torch.int32)
        return order, order // self.top_k, weights.reshape(-1)[order], offs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        order, token, weight, offs = self.route(flat)
        dtype = torch.bfloat16  # what torch's grouped GEMM takes on every device (its meta kernel checks)
        rows = flat[token].to(dtype)
        gate, up = torch._grouped_mm(rows, self.gate_up.to(dtype), offs=offs).chunk(2, dim=-1)
        y = torch._grouped_mm(F.silu(gate) * up, self.down.to(dtype), offs=offs)
        out = torch.zeros_like(flat).index_add(0, token, (y * weight[:, None].to(y.dtype)).to(flat.dtype))
        if self.shared is not None:
            out = out + self.shared(flat).to(flat.dtype)
        return out.reshape(shape)


def moe_param_count(d_model: int, hidden: int, n_experts: int, shared_hidden: int) -> int:
    return d_model * n_experts + n_experts * 3 * d_model * hidden + 3 * d_model * shared_hidden


def expert_out_scale(n_layers: int) -> float:
    """GPT-2's residual projection scaling, as the dense blocks use for their down projection."""
    return 1.0 / math.sqrt(2 * n_layers)
