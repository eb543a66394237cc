"""Seeds and Philox offsets of the quantize calls, derived from stable names, the graph call and the rank.

The graph pass and the eager emulation both derive them from the site key (``"layers.0.fc1#0"``: module
name and call index), the role and the operand, so the two produce identical random bits:

- Hadamard signs: ``recipe.rht_seed`` (``SeedPolicy.SHARED``, one sign vector for every layer) or
  ``recipe.rht_seed`` mixed with a hash of the module name (``SeedPolicy.PER_LAYER``).
- Stochastic rounding: the seed is ``recipe.sr_seed`` (``SRSeedPolicy.FIXED``) or drawn once per graph call
  (``PER_STEP``); every stochastic quantize gets its own Philox counter base ``offset = h << 32`` with ``h``
  a 31-bit hash of (site, role, operand), so no two quantize calls of a step share random bits as long
  as a tensor has fewer than 2**32 elements.

Identity that a graph does not carry is taken at run time or from the process:

- A graph shared by several blocks (per-block compile, a block's forward compiled once after a graph
  break) sees block-local names (``attn.qkv#0``) and gives every block the same offsets. Under
  ``PER_STEP`` every *call* of the graph draws its own seed, and Philox streams of different seeds are
  independent, so the blocks' streams still never repeat. Under ``FIXED`` they do repeat; the backend warns
  (:mod:`ufp4_compile.passes.shared_graph`).
- Ranks: processes seeded alike draw equal ``PER_STEP`` seeds, and equal random bits on different data
  correlate the rounding errors that data parallelism averages (two uniform fractions rounded with one
  uniform draw have error correlation 1/2). Every seed is therefore XORed with :func:`rank_salt`, 0 on rank
  0 (one process: nothing changes) and a 62-bit hash of the rank elsewhere.
"""

from __future__ import annotations

import hashlib

from ufp4_compile.recipes import Recipe, Role, SeedPolicy

OFFSET_SHIFT = 32
_HASH_BITS = 31
SALT_BITS = 62  # a salt keeps a seed in [0, 2**63): seeds are int64 op arguments


def stable_hash(text: str, bits: int = _HASH_BITS) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << bits) - 1)


def rht_seed_for(recipe: Recipe, module_name: str) -> int:
    if recipe.rht_seed_policy is SeedPolicy.SHARED:
        return recipe.rht_seed
    return (recipe.rht_seed ^ (stable_hash("rht:" + module_name, 62))) & ((1 << 62) - 1)


def philox_offset(site_key: str, role: Role, operand: str) -> int:
    """Counter base of one stochastic quantize call; ``operand`` is "a", "b" or "mu" (mean split)."""
    return stable_hash(f"{site_key}/{role.value}/{operand}") << OFFSET_SHIFT


def rank_salt(rank: int | None = None) -> int:
    """What this process XORs into every stochastic-rounding seed: 0 on rank 0 and without
    ``torch.distributed``, a 62-bit hash of the global rank elsewhere. ``rank`` overrides the lookup."""
    if rank is None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return 0 if rank == 0 else stable_hash(f"sr-rank:{rank}", SALT_BITS)
