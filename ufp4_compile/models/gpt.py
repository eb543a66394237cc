"""A Llama-style GPT: RMSNorm, rotary position embeddings, SwiGLU, causal SDPA, optional tied head.

Plain ``nn.Linear`` layers everywhere, so ``torch.compile(model, backend="ufp4")`` finds every matmul without
any change to this file. Module names follow the conventions the recipes' layer policy reads: the blocks
are ``layers.<i>`` and the output head is ``lm_head``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    seq_len: int = 128
    ffn_hidden: int = 0  # SwiGLU hidden width; 0 = 8/3 * d_model rounded up to a multiple of 64
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    init_std: float = 0.02
    # Mixture of experts (models/moe.py): 0 = a dense SwiGLU in every block; else routed experts per block.
    n_experts: int = 0
    top_k: int = 2
    expert_hidden: int = 0  # each routed expert's SwiGLU width; 0 = hidden / top_k rounded to a multiple of 64
    shared_expert: bool = True  # a shared expert of width expert_hidden beside the routed ones

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} is not valid; it must be a positive integer")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim=d_model/n_heads={self.head_dim} must be even for rotary embeddings")
        if self.ffn_hidden < 0:
            raise ValueError(f"ffn_hidden={self.ffn_hidden!r} is not valid; it must be >= 0 (0 = default)")
        for name in ("n_experts", "expert_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} is not valid; it must be an integer >= 0")
        if self.n_experts and not (isinstance(self.top_k, int) and 1 <= self.top_k <= self.n_experts):
            raise ValueError(f"top_k={self.top_k!r} is not valid; valid values: 1..n_experts={self.n_experts}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return 64 * math.ceil(8 * self.d_model / 3 / 64)  # Llama's 8/3 expansion, kept 4-bit-block friendly

    @property
    def expert_width(self) -> int:
        """Each routed expert's hidden width: top_k experts together match the dense block's width."""
        return self.expert_hidden or 64 * math.ceil(self.hidden / self.top_k / 64)


# Presets. Every matmul dimension is a multiple of 64 so that 16- and 32-element blocks and the RHT fit.
PRESETS: dict[str, GPTConfig] = {
    # CPU: bf16 + ufp4 within about two minutes (the README's main-job command); on the CPU the 4-bit ops
    # run their pure-PyTorch reference, so tokens per step are kept small.
    "tiny": GPTConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, seq_len=64),
    # GPU (H100): ~103M parameters, byte-level vocabulary.
    "small": GPTConfig(vocab_size=256, d_model=1024, n_layers=8, n_heads=16, seq_len=512),
    # benchmarks/train_step.py (issue 6): D=1024, 12 layers, 16 heads, T=1024, vocabulary 32000.
    "bench": GPTConfig(vocab_size=32000, d_model=1024, n_layers=12, n_heads=16, seq_len=1024),
    # The paper's MoE shape at toy scale: 8 routed experts, top-2, plus a shared expert (CPU, like tiny).
    "tiny-moe": GPTConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, seq_len=64, n_experts=8, top_k=2),
    # GPU: the small preset's attention with 8 routed experts (top-2) and a shared expert per block.
    "small-moe": GPTConfig(vocab_size=256, d_model=1024, n_layers=8, n_heads=16, seq_len=512, n_experts=8,
                           top_k=2),
    # GPU (H200), loss gaps beyond the noise floor (docs/train.md): 38.8 M parameters, 12 layers (depth, for the
    # compounding the UFP4 paper describes), 3200 steps x 32 x 1024 = 105 M tokens a run, cosine to the end
    # (defaults in cli/train.py), on the python-sources corpus (about 190 M training bytes with this package's
    # test extras installed, 260 M where it was measured: a run does not repeat data).
    # Sizing: FLOPs/token = 6 N + 12 L T D = 6 x 38.8 M + 12 x 12 x 1024 x 512 = 308 M; x 32768 tokens/step =
    # 10.1 TFLOP/step. bf16 Inductor runs the 12-layer D=1024 bench model (6 x 217 M + 12 x 12 x 1024 x 1024 =
    # 1453 MFLOP/token x 8192 tokens = 11.9 TFLOP/step) in about 25 ms on an H200, 476 TFLOP/s: at that rate a
    # step here takes 21 ms and a bf16 run 68 s; with GEMMs half as wide (K = 512) at half that efficiency,
    # 2.3 min. A 4-bit recipe at the ~2x of bf16 measured with host overhead removed (CUDA graphs) takes about
    # 5 minutes; at the 4.5x of the default mode measured before the Hopper fast path, up to 10.
    "evidence": GPTConfig(vocab_size=256, d_model=512, n_layers=12, n_heads=8, seq_len=1024),
}


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def get_config(preset: str, **overrides) -> GPTConfig:
    """A preset by name with field overrides (``None`` values ignored); ValueError lists the valid names."""
    try:
        config = PRESETS[preset]
    except (KeyError, TypeError):
        raise ValueError(f"preset={preset!r} is not a known preset; valid names: {', '.join(PRESETS)}") from None
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config, **changes)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).type_as(x)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (seq_len, head_dim/2): angle(t, i) = t * theta^(-2i/head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2i], x[2i+1]) of x (..., T, head_dim) by the angles of their position."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    cos, sin = cos[: x.shape[-2]], sin[: x.shape[-2]]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.hidden, bias=False)
        self.down = nn.Linear(config.hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        if config.n_experts:
            from ufp4_compile.models.moe import MoE

            self.mlp = MoE(config.d_model, config.expert_width, config.n_experts, config.top_k,
                           config.expert_width if config.shared_expert else 0)
        else:
            self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """``forward(idx)`` gives logits (B, T, V); ``forward(idx, targets)`` gives the mean cross-entropy."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(config.seq_len, config.head_dim, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std); residual output projections scaled by 1/sqrt(2 n_layers) (GPT-2)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        scale = 1.0 / math.sqrt(2 * self.config.n_layers)
        for layer in self.layers:
            projections = [layer.attn.out]
            if self.config.n_experts:
                layer.mlp.reset_parameters(std, scale)
                if layer.mlp.shared is not None:
                    projections.append(layer.mlp.shared.down)
            else:
                projections.append(layer.mlp.down)
            for proj in projections:
                proj.weight.mul_(scale)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if idx.shape[-1] > self.config.seq_len:
            raise ValueError(f"sequence length {idx.shape[-1]} exceeds config.seq_len={self.config.seq_len}")
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x, self.rope_cos, self.rope_sin)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def expected_num_params(config: GPTConfig) -> int:
    """Parameter count from the config alone (embedding, head unless tied, blocks, norms)."""
    d, h, v = config.d_model, config.hidden, config.vocab_size
    per_block = 3 * d * d + d * d + 2 * d * h + h * d + 2 * d
    if config.n_experts:
        from ufp4_compile.models.moe import moe_param_count

        e = config.expert_width
        per_block = 3 * d * d + d * d + 2 * d + moe_param_count(d, e, config.n_experts, e if config.shared_expert else 0)
    head = 0 if config.tie_embeddings else v * d
    return v * d + head + config.n_layers * per_block + d
