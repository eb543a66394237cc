"""Seeds and Philox offsets of the quantize calls, derived from stable names.

The graph pass and the eager emulation both derive them from the site key (``"layers.0.fc1#0"``: module
name and call index), the role and the operand, so the two produce identical random bits:

- Hadamard signs: ``recipe.rht_seed`` (``SeedPolicy.SHARED``, one sign vector for every layer) or
  ``recipe.rht_seed`` mixed with a hash of the module name (``SeedPolicy.PER_LAYER``).
- Stochastic rounding: the seed is ``recipe.sr_seed`` (``SRSeedPolicy.FIXED``) or drawn once per graph call
  (``PER_STEP``); every stochastic quantize gets its own Philox counter base ``offset = h << 32`` with ``h``
  a 31-bit hash of (site, role, operand), so no two quantize calls of a step share random bits as long
  as a tensor has fewer than 2**32 elements.
"""

from __future__ import annotations

import hashlib

from ufp4_compile.recipes import Recipe, Role, SeedPolicy

OFFSET_SHIFT = 32
_HASH_BITS = 31


def stable_hash(text: str, bits: int = _HASH_BITS) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << bits) - 1)


def rht_seed_for(recipe: Recipe, module_name: str) -> int:
    if recipe.rht_seed_policy is SeedPolicy.SHARED:
        return recipe.rht_seed
    return (recipe.rht_seed ^ (stable_hash("rht:" + module_name, 62))) & ((1 << 62) - 1)


def philox_offset(site_key: str, role: Role, operand: str) -> int:
    """Counter base of one stochastic quantize call; ``operand`` is "a", "b" or "mu" (mean split)."""
    return stable_hash(f"{site_key}/{role.value}/{operand}") << OFFSET_SHIFT
