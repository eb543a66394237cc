"""transformers' mixture-of-experts models (random-init, tiny) through the ufp4 pass: with the grouped experts
implementation the expert GEMMs are ``_grouped_mm`` calls, rewritten in all three roles; routers and the shared-expert gate are kept as routers; every other linear but the head is
rewritten."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ufp4_compile.testing import compile_and_run  # noqa: E402


def _mixtral():
    config = transformers.MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                        num_experts_per_tok=2)
    return transformers.MixtralForCausalLM, config


def _qwen2_moe():
    config = transformers.Qwen2MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
                                         shared_expert_intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                                         num_experts_per_tok=2)
    return transformers.Qwen2MoeForCausalLM, config


class _Loss(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize("build", [_mixtral, _qwen2_moe], ids=["mixtral", "qwen2-moe"])
def test_grouped_experts_are_rewritten(build):
    cls, config = build()
    config._experts_implementation = "grouped_mm"  # the grouped path (torch's grouped GEMM), bf16
    torch.manual_seed(0)
    model = cls(config).to(torch.bfloat16)
    ids = torch.randint(0, 128, (2, 32))
    eager = _Loss(model)(ids).item()
    run = compile_and_run(_Loss(model), ids, options={"sr_seed_policy": "fixed"}, backend="aot", fullgraph=False)
    rows = run.report.rows
    grouped = [r for r in rows if r.kind == "_grouped_mm"]
    assert grouped, "no grouped GEMM found: the experts ran another way"
    assert {r.role for r in grouped} == {"fprop", "dgrad", "wgrad"}
    assert all(r.rewritten for r in grouped), [(r.module, r.role, r.reason) for r in grouped if not r.rewritten]
    for row in rows:
        if row.kind == "_grouped_mm":
            continue
        last = row.module.rsplit(".", 1)[-1]
        if last == "lm_head":
            assert not row.rewritten
        elif last in ("gate", "shared_expert_gate"):
            assert not row.rewritten and "router" in row.reason
        else:
            assert row.rewritten, (row.module, row.role, row.reason)
    loss = run.out.item()
    assert abs(loss - eager) / eager < 0.05  # 4-bit noise on a random-init model's ~ln(128) loss


@pytest.mark.parametrize("build", [_mixtral, _qwen2_moe], ids=["mixtral", "qwen2-moe"])
def test_grouped_experts_equal_the_eager_emulation(build):
    """The rewritten graph against ``ufp4_compile.emulate`` of the same module (the grouped experts
    included): the loss and every parameter gradient bit for bit."""
    import copy

    from ufp4_compile.emulate import emulate

    cls, config = build()
    config._experts_implementation = "grouped_mm"
    torch.manual_seed(0)
    model = cls(config).to(torch.bfloat16)
    twin = copy.deepcopy(model)
    ids = torch.randint(0, 128, (2, 32))
    run = compile_and_run(_Loss(model), ids, options={"sr_seed_policy": "fixed"}, backend="aot", fullgraph=False)
    loss = emulate(_Loss(twin), sr_seed_policy="fixed")(ids)
    loss.backward()
    assert run.out.item() == loss.item()
    different = [name for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters())
                 if (p.grad is None) != (q.grad is None) or (p.grad is not None and not torch.equal(p.grad, q.grad))]
    assert not different
