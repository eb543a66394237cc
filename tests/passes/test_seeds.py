"""Seeds and Philox offsets: stable, distinct per quantize call and per rank, within the op's int64
argument."""

import dataclasses
import itertools

from ufp4_compile.passes.seeds import OFFSET_SHIFT, SALT_BITS, philox_offset, rank_salt, rht_seed_for
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


def test_rank_salt():
    """Rank 0 (and one process) salts nothing, so single-process seeds are unchanged; other ranks get
    distinct salts that keep a seed an int64 (the XOR of two values below 2**63 stays below it)."""
    assert rank_salt() == 0 == rank_salt(0)
    salts = [rank_salt(r) for r in range(1, 1025)]
    assert len(set(salts)) == len(salts) and all(0 < s < (1 << SALT_BITS) for s in salts)
    assert ((1 << 63) - 1) ^ rank_salt(7) < (1 << 63)


def test_each_rank_compiles_its_own_seed(monkeypatch):
    """The salt is part of the graph (a constant XORed into the drawn seed), so it is part of the pass's
    cache key: a rank must never reuse another rank's compiled graph from Inductor's cache."""
    import importlib

    import torch

    from ufp4_compile.passes import joint_pass
    from ufp4_compile.testing import compile_and_run
    from ufp4_compile.testing.models import MLP

    rewrite_matmuls = importlib.import_module("ufp4_compile.passes.rewrite_matmuls")  # the module, not the pass
    uuids = set()
    for salt in (0, 12345):
        monkeypatch.setattr(rewrite_matmuls, "rank_salt", lambda: salt)
        monkeypatch.setattr(joint_pass, "rank_salt", lambda: salt)
        uuids.add(joint_pass.Ufp4JointPass(UFP4).uuid())
        run = compile_and_run(MLP(32, 64), torch.randn(2, 16, 32, requires_grad=True), backend="aot")
        xors = [n.args[1] for n in run.backward.graph.nodes if "bitwise_xor" in str(n.target)]
        assert xors == ([] if salt == 0 else [12345])
    assert len(uuids) == 2
