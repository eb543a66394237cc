"""Seeds and Philox offsets: stable, distinct per quantize call, within the op's int64 argument."""

import dataclasses
import itertools

from ufp4_compile.passes.seeds import OFFSET_SHIFT, philox_offset, rht_seed_for
from ufp4_compile.recipes import UFP4, Role, SeedPolicy


def test_offsets_distinct_stable_and_in_range():
    keys = [f"layers.{i}.{m}#{c}" for i in range(24) for m in ("qkv", "o", "gate", "up", "down") for c in range(2)]
    offsets = [philox_offset(k, role, op) for k, role, op in itertools.product(keys, Role, ("a", "b", "mu"))]
    assert len(set(offsets)) == len(offsets)
    assert all(o % (1 << OFFSET_SHIFT) == 0 and 0 <= o < (1 << 63) for o in offsets)
    assert philox_offset("fc#0", Role.DGRAD, "a") == philox_offset("fc#0", Role.DGRAD, "a")


def test_rht_seed_policies():
    assert rht_seed_for(UFP4, "layers.0.fc") == rht_seed_for(UFP4, "layers.1.fc") == UFP4.rht_seed
    per_layer = dataclasses.replace(UFP4, rht_seed_policy=SeedPolicy.PER_LAYER, rht_seed=11)
    a, b = rht_seed_for(per_layer, "layers.0.fc"), rht_seed_for(per_layer, "layers.1.fc")
    assert a != b and a == rht_seed_for(per_layer, "layers.0.fc") and 0 <= a < (1 << 62)
    other = dataclasses.replace(per_layer, rht_seed=12)
    assert rht_seed_for(other, "layers.0.fc") != a
