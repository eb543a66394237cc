"""Small models at fixed shapes for the backend's tests and snapshots (every dimension 4-bit-block friendly)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Linear -> ReLU -> Linear on (batch, tokens, features) inputs: view -> mm -> view in the graph."""

    def __init__(self, d: int = 32, hidden: int = 64, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, d, bias=bias)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, d: int = 32, hidden: int = 64):
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Attention(nn.Module):
    """QKV and output projections around causal SDPA."""

    def __init__(self, d: int = 32, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class ManualAttention(Attention):
    """The same with explicit score/value matmuls (``q @ k^T``, ``p @ v``: batched matmuls in the graph)."""

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5
        y = scores.softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(d), Attention(d, heads)
        self.mlp_norm, self.mlp = RMSNorm(d), SwiGLU(d, hidden)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TinyLM(nn.Module):
    """A Llama-style LM: embedding, ``layers.<i>`` blocks (RMSNorm, SDPA, SwiGLU), norm, ``lm_head``."""

    def __init__(self, vocab: int = 64, d: int = 32, layers: int = 2, heads: int = 2, hidden: int = 64,
                 tied: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.embed.weight
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, 0.1)

    def forward(self, idx, targets=None):
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class TiedHead(nn.Module):
    """Embedding -> Linear -> output projection sharing the embedding's weight."""

    def __init__(self, vocab: int = 64, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.proj = nn.Linear(d, d, bias=False)
        self.unembed = nn.Linear(d, vocab, bias=False)
        self.unembed.weight = self.embed.weight

    def forward(self, idx):
        return self.unembed(torch.relu(self.proj(self.embed(idx))))
