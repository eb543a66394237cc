"""Which matmuls the recipe rewrites and which stay in their original precision (always with a reason).

The decisions are functions of plain facts (:class:`SiteFacts`), so the graph pass and the eager emulation
(:mod:`ufp4_compile.emulate`) take them from one place.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re

import torch

from ufp4_compile.recipes import GemmRecipe, LayerPolicy, MeanSplit, Recipe, Role

QUANTIZABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Last name components of output heads in common model code (GPT-2/HF ``lm_head``, Llama ``output``...).
HEAD_NAMES = ("lm_head", "output", "head", "embed_out", "classifier")
_BLOCK = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
# Routers and gates by name, in the last two name components: ``mlp.gate`` (Mixtral, Qwen2-MoE, OLMoE,
# DeepSeek), ``moe.router.gate`` (torchtitan), ``mlp.router`` (gpt-oss), ``router.layer`` (DBRX, Granite-MoE),
# ``shared_expert_gate`` (Qwen2-MoE). A SwiGLU ``gate``/``gate_proj`` matches too; its N > K tells it apart.
_ROUTER = re.compile(r"(?:^|_)(?:gate|gating|router)(?:_|$)")  # a whole word of the component: not "aggregate"


@dataclasses.dataclass(frozen=True)
class SiteFacts:
    """What the policy needs to know about one forward matmul (one call of a linear layer)."""

    name: str  # qualified module name, "" at the top level
    kind: str  # "mm", "addmm" or "bmm"
    dtype: torch.dtype
    batch: int | None  # bmm batch size, None for 2-D
    m: object  # rows (tokens); an int, or a SymInt under dynamic shapes (then Wgrad stays)
    k: object  # reduction (in-features)
    n: object  # columns (out-features)
    head: str | None = None  # why this is the output head, when it is
    attention_like: bool = False  # a batched matmul of two activations
    note: str | None = None  # a structural reason it cannot be rewritten


def block_of(name: str) -> tuple[str, int] | None:
    """``"layers.3.mlp.fc1"`` -> ``("layers", 3)``: the first numbered component and its container."""
    match = _BLOCK.search(name)
    if match is None:
        return None
    return name[: match.start(1)].rstrip("."), int(match.group(1))


def block_ranges(names) -> dict[str, int]:
    """Highest block index seen per container, e.g. ``{"layers": 11}``."""
    ranges: dict[str, int] = {}
    for name in names:
        block = block_of(name)
        if block is not None:
            ranges[block[0]] = max(ranges.get(block[0], -1), block[1])
    return ranges


def head_by_name(name: str) -> str | None:
    """The head by its name, outside numbered blocks: ``layers.3.output`` (BERT's per-block output
    projection) is a block's layer, not the model's head."""
    last = name.rsplit(".", 1)[-1]
    if last not in HEAD_NAMES or block_of(name) is not None:
        return None
    return f"output head: module name {last!r}"


def router_reason(name: str, k: int, n: int, keep_routers: int) -> str | None:
    """Why a linear is kept as a router or gate: its name says so, it narrows (N < K: a router maps the
    hidden state to one logit per expert, a GLU gate widens it) and N <= ``keep_routers``."""
    if not 0 < n <= keep_routers or n >= k:
        return None
    part = next((p for p in reversed(name.split(".")[-2:]) if _ROUTER.search(p)), None)
    return f"router or gate: name {part!r}, N={n} < K={k} and N <= {keep_routers}" if part else None


def _static(*dims) -> bool:
    """Every dim a known integer: an int, or a SymInt whose expression is a number (under ``dynamic=True``
    a size the guards fixed, e.g. a weight's in-features, is such a SymInt)."""
    return all(isinstance(d, int) or (isinstance(d, torch.SymInt) and d.node.expr.is_number)
               for d in dims if d is not None)


def site_keep_reason(facts: SiteFacts, layers: LayerPolicy, blocks: dict[str, int]) -> str | None:
    """Why every GEMM of this site stays as it is, or None."""
    if facts.note:
        return facts.note
    if facts.dtype not in QUANTIZABLE_DTYPES:
        kind = ("floating point" if facts.dtype.is_floating_point else
                "complex" if facts.dtype.is_complex else "integer")
        return f"{kind} dtype {facts.dtype} is not quantized (only float32, bfloat16, float16)"
    if not _static(facts.batch, facts.k, facts.n):
        return (f"dynamic shape (K={facts.k}, N={facts.n}): only a dynamic token count M is supported; "
                f"compile with dynamic=False")
    if facts.attention_like and layers.keep_attention:
        return "attention score/value batched matmul (layers.keep_attention)"
    if facts.batch not in (None, 1):
        return f"batched matmul with batch {facts.batch}: no batched 4-bit GEMM op"
    if facts.head and layers.keep_output_head:
        return f"{facts.head} (layers.keep_output_head)"
    router = router_reason(facts.name, facts.k, facts.n, layers.keep_routers)
    if router:
        return f"{router} (layers.keep_routers)"
    for pattern in layers.skip:
        if fnmatch.fnmatchcase(facts.name, pattern):
            return f"module name matches skip pattern {pattern!r} (layers.skip)"
    block = block_of(facts.name)
    if block is not None:
        container, index = block
        label = f"{container}.{index}" if container else str(index)
        if index < layers.keep_first:
            return f"block {label} is among the first {layers.keep_first} (layers.keep_first)"
        last = blocks.get(container, index)
        if index > last - layers.keep_last:
            return f"block {label} is among the last {layers.keep_last} (layers.keep_last)"
    if min(facts.k, facts.n) < layers.min_features:
        return f"K={facts.k} or N={facts.n} is below min_features={layers.min_features} (layers.min_features)"
    return None


def reduction_dim(role: Role, m: int, k: int, n: int) -> tuple[str, int]:
    """The reduction axis of ``role`` for a linear layer ``Y[m, n] = X[m, k] W[n, k]``."""
    return {Role.FPROP: ("K", k), Role.DGRAD: ("N", n), Role.WGRAD: ("M", m)}[role]


def gemm_keep_reason(role: Role, recipe: Recipe, m: int, k: int, n: int, dtype: torch.dtype) -> str | None:
    """Why this role of a rewritable site stays as it is (recipe or shape), or None."""
    gemm: GemmRecipe | None = recipe.gemm(role)
    if gemm is None:
        return f"recipe {recipe.name!r} keeps {role.value} in high precision"
    if dtype not in QUANTIZABLE_DTYPES:
        return f"dtype {dtype} is not quantized (only float32, bfloat16, float16)"
    label, length = reduction_dim(role, m, k, n)
    # Wgrad reduces over the tokens, whose count may be dynamic or ragged: the last block is padded with
    # zeros and a trailing partial Hadamard group left unrotated on both operands (docs/numerics.md).
    tokens = role is Role.WGRAD
    if not tokens and not _static(length):
        return f"{label}={length} (reduction of {role.value}) is dynamic; blocks need a static length"
    if gemm.mean_split is not MeanSplit.OFF and not _static(m):
        return f"mean split needs a static token count, M={m} is dynamic"
    multiple = math.lcm(gemm.a.block, gemm.rht or 1)
    if not tokens and length % multiple:
        what = f"block {gemm.a.block}" + (f" and RHT size {gemm.rht}" if gemm.rht else "")
        return f"{label}={length} (reduction of {role.value}) is not a multiple of {multiple} ({what})"
    if gemm.b.block_2d:
        other_label, other = {Role.FPROP: ("N", n), Role.DGRAD: ("K", k)}.get(role, ("", 16))
        if other % 16:
            return f"{other_label}={other} is not a multiple of 16 (16x16 weight blocks)"
    return None
