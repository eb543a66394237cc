"""transformers models (random init, 2 layers, hidden 64): module names and layer options as
``model.named_modules()`` gives them, under transformers' ``*args`` forward wrappers."""

import pytest
import torch
from torch import nn

from ufp4_compile import explain

transformers = pytest.importorskip("transformers")


def _linears(model) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def llama():
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def test_llama_keep_first_keeps_block_0_only():
    """Dynamo records ``L['args'][0].model.layers.1...`` here: every layer used to look like block 0."""
    torch._dynamo.reset()
    model = llama()
    ids = torch.randint(0, 128, (2, 16))
    report = explain(model, input_ids=ids, attention_mask=torch.ones_like(ids), options={"keep_first": 1})
    assert {r.module for r in report.rows} == _linears(model)
    block0 = {n for n in _linears(model) if n.startswith("model.layers.0.")}
    block1 = {n for n in _linears(model) if n.startswith("model.layers.1.")}
    assert len(block0) == len(block1) == 7
    first = {r.module for r in report.kept if "layers.keep_first" in r.reason}
    assert first == block0
    assert {r.module for r in report.kept} == block0 | {"lm_head"}
    assert {r.module for r in report.rewritten} == block1


def test_qwen2_moe_router_and_shared_expert_gate_are_kept():
    config = transformers.Qwen2MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                         moe_intermediate_size=32, shared_expert_intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         num_experts=4, num_experts_per_tok=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.Qwen2MoeForCausalLM(config)
    torch._dynamo.reset()
    report = explain(model, torch.randint(0, 128, (2, 16)))
    routers = {f"model.layers.{i}.mlp.{m}" for i in range(2) for m in ("gate", "shared_expert_gate")}
    kept = {r.module for r in report.kept if "(layers.keep_routers)" in r.reason}
    assert kept == routers and len([r for r in report.kept if r.module in routers]) == 4 * 3
    assert {r.module for r in report.kept} == routers | {"lm_head"}


class _LossOf(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, labels=ids).loss


def test_gpt2_conv1d_layers_are_rewritten_in_all_three_roles():
    """GPT-2's projections are ``Conv1D`` (``addmm(b, x, W)`` with W stored (in, out), not ``nn.Linear``): each
    still gets Fprop, Dgrad and Wgrad rows, rewritten; attention and the tied head are kept with reasons."""
    from ufp4_compile.testing.run import compile_and_run

    config = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 128, (2, 32))
    eager = _LossOf(model)(ids).item()
    torch._dynamo.reset()
    run = compile_and_run(_LossOf(model), ids, options={"sr_seed_policy": "fixed"}, backend="aot", fullgraph=False)
    conv1d = {name for name, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    assert len(conv1d) == 8
    for name in conv1d:
        rows = [r for r in run.report.rows if r.module == f"model.{name}" or r.module == name]
        assert {r.role for r in rows} == {"fprop", "dgrad", "wgrad"}, (name, rows)
        assert all(r.rewritten for r in rows), [(r.role, r.reason) for r in rows if not r.rewritten]
    for row in run.report.kept:
        assert row.module.endswith("lm_head") or row.module.endswith(".attn"), (row.module, row.reason)
    assert abs(run.out.item() - eager) / eager < 0.05  # 4-bit noise on a random-init model's ~ln(128) loss


def test_llama_rewritten_graph_equals_the_eager_emulation():
    """A real model's code: the rewritten graph (on eager kernels) gives ``ufp4_compile.emulate``'s loss and
    every parameter gradient bit for bit (all linears but the head quantized, attention kept)."""
    import copy

    from ufp4_compile.emulate import emulate
    from ufp4_compile.testing.run import compile_and_run

    model = llama()
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(1))
    options = {"sr_seed_policy": "fixed"}
    compiled_model, emulated_model = copy.deepcopy(model), copy.deepcopy(model)
    torch._dynamo.reset()
    run = compile_and_run(_LossOf(compiled_model), ids, options=options, backend="aot", fullgraph=False)
    assert len(run.report.rewritten) == 3 * len(_linears(model) - {"lm_head"})
    loss = emulate(_LossOf(emulated_model), **options)(ids)  # the same module names as the compiled wrapper
    loss.backward()
    assert torch.equal(run.out, loss.detach())
    for (name, p), (_, q) in zip(compiled_model.named_parameters(), emulated_model.named_parameters()):
        assert torch.equal(p.grad, q.grad), name
