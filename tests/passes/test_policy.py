"""The layer policy and shape rules: every decision to keep a matmul carries a reason."""

import dataclasses

import pytest
import torch

from ufp4_compile.passes.policy import (SiteFacts, block_of, block_ranges, gemm_keep_reason, head_by_name,
                                        site_keep_reason)
from ufp4_compile.recipes import BF16, NVFP4, UFP4, UFP4_MEAN, LayerPolicy, Role

BLOCKS = {"layers": 3}


def facts(name="layers.1.mlp.fc", **kw):
    base = dict(name=name, kind="mm", dtype=torch.float32, batch=None, m=64, k=64, n=128)
    base.update(kw)
    return SiteFacts(**base)


def test_block_of_and_ranges():
    assert block_of("layers.3.mlp.fc1") == ("layers", 3)
    assert block_of("model.h.10.attn") == ("model.h", 10)
    assert block_of("0") == ("", 0)
    assert block_of("lm_head") is None
    assert block_ranges(["layers.0.a", "layers.5.b", "enc.2.c", "head"]) == {"layers": 5, "enc": 2}


def test_default_policy_rewrites_a_block_linear():
    assert site_keep_reason(facts(), LayerPolicy(), BLOCKS) is None


@pytest.mark.parametrize("policy, name, expected", [
    (LayerPolicy(keep_first=1), "layers.0.attn.qkv", "block layers.0 is among the first 1 (layers.keep_first)"),
    (LayerPolicy(keep_first=1), "layers.1.attn.qkv", None),
    (LayerPolicy(keep_last=2), "layers.2.mlp.down", "block layers.2 is among the last 2 (layers.keep_last)"),
    (LayerPolicy(keep_last=2), "layers.1.mlp.down", None),
    (LayerPolicy(skip=("*.mlp.*",)), "layers.1.mlp.up", "module name matches skip pattern '*.mlp.*' (layers.skip)"),
    (LayerPolicy(skip=("*.mlp.*",)), "layers.1.attn.o", None),
    (LayerPolicy(min_features=256), "layers.1.mlp.fc", "K=64 or N=128 is below min_features=256"),
])
def test_layer_options(policy, name, expected):
    reason = site_keep_reason(facts(name), policy, BLOCKS)
    assert reason == expected or (expected and expected in reason)


def test_heads_and_attention():
    head = facts("lm_head", head=head_by_name("lm_head"))
    assert site_keep_reason(head, LayerPolicy(), {}) == "output head: module name 'lm_head' (layers.keep_output_head)"
    assert site_keep_reason(head, LayerPolicy(keep_output_head=False), {}) is None
    assert head_by_name("output") == "output head: module name 'output'"  # torchtitan's Llama head
    assert head_by_name("layers.0.attention.output") is None  # a block's own projection (BERT), not the head
    assert head_by_name("layers.0.mlp.down") is None
    attn = facts("layers.0.attn", kind="bmm", batch=8, attention_like=True)
    assert "attention score/value batched matmul" in site_keep_reason(attn, LayerPolicy(), BLOCKS)
    assert "no batched 4-bit GEMM op" in site_keep_reason(attn, LayerPolicy(keep_attention=False), BLOCKS)
    assert site_keep_reason(facts(kind="bmm", batch=1), LayerPolicy(), BLOCKS) is None


def test_dtype_and_dynamic_reasons():
    assert "float64 is not quantized" in site_keep_reason(facts(dtype=torch.float64), LayerPolicy(), {})
    assert "integer dtype torch.int32" in site_keep_reason(facts(dtype=torch.int32), LayerPolicy(), {})
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    sym = ShapeEnv().create_unbacked_symint()
    assert "dynamic shape (K=" in site_keep_reason(facts(k=sym), LayerPolicy(), {})
    assert site_keep_reason(facts(m=sym), LayerPolicy(), {}) is None  # a dynamic token count is fine...
    # ...Wgrad's too: its reduction over the tokens takes a zero-padded last block.
    assert gemm_keep_reason(Role.WGRAD, UFP4, sym, 64, 128, torch.float32) is None
    assert gemm_keep_reason(Role.FPROP, UFP4, sym, 64, 128, torch.float32) is None
    assert "mean split needs a static token count" in gemm_keep_reason(Role.FPROP, UFP4_MEAN, sym, 64, 128,
                                                                     torch.float32)


@pytest.mark.parametrize("role, m, k, n, expected", [
    (Role.FPROP, 64, 40, 128, "K=40 (reduction of fprop) is not a multiple of 16 (block 16 and RHT size 16)"),
    (Role.DGRAD, 64, 64, 24, "N=24 (reduction of dgrad) is not a multiple of 16"),
    (Role.WGRAD, 8, 64, 128, None),  # 8 tokens: Wgrad pads its last block along the tokens
    (Role.WGRAD, 64, 40, 128, None),  # Wgrad reduces over tokens: K = 40 does not matter to it
])
def test_reduction_alignment(role, m, k, n, expected):
    reason = gemm_keep_reason(role, UFP4, m, k, n, torch.float32)
    assert reason == expected or (expected and reason.startswith(expected))


def test_rht_size_and_2d_weight_blocks():
    big_rht = dataclasses.replace(UFP4, fprop=dataclasses.replace(UFP4.fprop, rht=64))
    assert "not a multiple of 64 (block 16 and RHT size 64)" in gemm_keep_reason(Role.FPROP, big_rht, 64, 96, 128,
                                                                                  torch.float32)
    # NVFP4 weights use 16x16 blocks: the other weight dimension must be a multiple of 16 too.
    assert "N=40 is not a multiple of 16 (16x16 weight blocks)" == gemm_keep_reason(Role.FPROP, NVFP4, 64, 64, 40,
                                                                                     torch.float32)
    # Wgrad reduces over M = 64 and its operands use 1-D blocks: N = 40 does not matter to it.
    assert gemm_keep_reason(Role.WGRAD, NVFP4, 64, 64, 40, torch.float32) is None
    bf16 = gemm_keep_reason(Role.FPROP, BF16, 64, 64, 64, torch.float32)
    assert bf16 == "recipe 'bf16' keeps fprop in high precision"


@pytest.mark.parametrize("name, k, n, kept", [
    ("model.layers.0.mlp.gate", 4096, 8, True),  # Mixtral router: 8 experts
    ("model.layers.0.mlp.gate", 2048, 60, True),  # Qwen2-MoE router: 60 experts
    ("model.layers.0.mlp.gate", 7168, 256, True),  # DeepSeek-V3 router: 256 experts
    ("model.layers.0.mlp.shared_expert_gate", 64, 1, True),  # Qwen2-MoE's scalar gate
    ("layers.0.moe.router.gate", 256, 64, True),  # torchtitan
    ("model.layers.0.ffn.router.layer", 512, 16, True),  # DBRX
    ("model.layers.0.mlp.router", 2880, 32, True),  # gpt-oss
    ("model.layers.0.mlp.gate", 7168, 384, False),  # more outputs than keep_routers
    ("layers.0.mlp.gate", 32, 64, False),  # a SwiGLU gate widens: N > K
    ("model.layers.0.mlp.gate_proj", 4096, 14336, False),
    ("layers.0.mlp.gate_up", 64, 256, False),
    ("layers.0.attn.o", 64, 4, False),  # narrow, but not named as a gate
    ("layers.0.mlp.aggregate", 64, 4, False),  # "gate" inside another word
])
def test_routers_and_gates_are_kept(name, k, n, kept):
    reason = site_keep_reason(facts(name, k=k, n=n), LayerPolicy(), BLOCKS)
    if kept:
        assert reason.startswith("router or gate: name ") and f"N={n} < K={k} and N <= 256" in reason and \
            reason.endswith("(layers.keep_routers)"), reason
    else:
        assert reason is None, reason


def test_keep_routers_option():
    router = facts("model.layers.0.mlp.gate", k=4096, n=64)
    assert site_keep_reason(router, LayerPolicy(keep_routers=0), BLOCKS) is None  # routers quantized
    assert site_keep_reason(router, LayerPolicy(keep_routers=63), BLOCKS) is None
    reason = site_keep_reason(router, LayerPolicy(keep_routers=64), BLOCKS)
    assert reason == "router or gate: name 'gate', N=64 < K=4096 and N <= 64 (layers.keep_routers)"
    with pytest.raises(ValueError, match="keep_routers=-1 is not valid"):
        LayerPolicy(keep_routers=-1)
