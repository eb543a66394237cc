"""One compiled graph for every block (per-block compile, as torchtitan does): decisions that need the
block's identity fail loudly, randomness is taken per call, and nothing changes for a whole-model graph."""

import copy
import warnings

import pytest
import torch
from torch import nn

from ufp4_compile.backend import make_aot_backend, make_backend
from ufp4_compile.passes.shared_graph import SharedGraphError, guard_shared_graph, matmul_modules
from ufp4_compile.recipes import UFP4
from ufp4_compile.testing.models import Block, TinyLM

BLOCK_NAMES = ("'attn.qkv', 'attn.o', 'mlp.gate', 'mlp.up', 'mlp.down'")


def per_block(model, backend):
    """torchtitan's apply_compile: each block compiled on its own, Dynamo reuses one graph for all."""
    for i, block in enumerate(model.layers):
        model.layers[i] = torch.compile(block, backend=backend)
    return model


def run_blocks(options, layers=2):
    torch._dynamo.reset()
    torch.manual_seed(0)
    backend = make_aot_backend(options)
    model = per_block(TinyLM(layers=layers), backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(torch.randint(0, 64, (2, 16))).sum().backward()
    return backend.report, [str(w.message) for w in caught if str(w.message).startswith("ufp4:")]


@pytest.mark.parametrize("options, message", [
    ({"keep_first": 1}, "keep_first=1 needs the block number of each matmul"),
    ({"keep_last": 2}, "keep_last=2 needs the block number of each matmul"),
    ({"rht_seed_policy": "per_layer"}, "rht_seed_policy='per_layer' would give every block the same Hadamard signs"),
])
def test_block_identity_options_fail_loudly(options, message):
    with pytest.raises(SharedGraphError) as error:
        run_blocks(options)
    text = str(error.value)
    assert message in text and BLOCK_NAMES in text
    assert "compile the whole model as one graph" in text.lower()


def test_fixed_seeds_and_unmatched_skip_patterns_warn():
    report, caught = run_blocks({"sr_seed_policy": "fixed", "skip": ["layers.0.*", "mlp.*"]})
    assert len(caught) == 2
    assert caught[0].startswith("ufp4: skip pattern 'layers.0.*' matches no matmul of this graph")
    assert caught[1].startswith("ufp4: sr_seed_policy='fixed': every block that shares this graph repeats")
    assert {r.module for r in report.kept} == {"mlp.gate", "mlp.up", "mlp.down"}  # 'mlp.*' is block-local


def test_default_options_add_no_wrapper_and_no_warning():
    report, caught = run_blocks({})
    assert not caught and len(report.rewritten) == 5 * 3
    gm = torch.fx.symbolic_trace(Block(32, 2, 64))
    compiled = object()
    assert guard_shared_graph(compiled, gm, [], UFP4) is compiled
    assert matmul_modules(gm) == ["attn.qkv", "attn.o", "mlp.gate", "mlp.up", "mlp.down"]


def test_whole_model_graph_is_not_shared():
    """One graph, called once per step with the same parameters: keep_first works as documented, also after
    the parameters are replaced by new tensors (load_state_dict(assign=True))."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyLM(layers=2)
    backend = make_aot_backend({"keep_first": 1})
    compiled = torch.compile(model, backend=backend)
    idx = torch.randint(0, 64, (2, 16))
    compiled(idx).sum().backward()
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    compiled(idx).sum().backward()
    assert {r.module for r in backend.report.kept} >= {"layers.0.attn.qkv", "layers.0.mlp.down"}
    assert not any(r.module.startswith("layers.1") for r in backend.report.kept)


def test_per_block_options_keep_a_block_apart():
    """The documented way to keep blocks under per-block compile: other options for those blocks make
    Dynamo compile them apart."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x = TinyLM(layers=3), torch.randint(0, 64, (2, 16))
    kept, quantized = make_aot_backend({"recipe": "bf16"}), make_aot_backend({})
    for i, block in enumerate(model.layers):
        model.layers[i] = torch.compile(block, backend=kept if i == 0 else quantized)
    model(x).sum().backward()
    assert not kept.report.rewritten and len(quantized.report.rewritten) == 15


class Twins(nn.Module):
    """Two copies of one block on the same input: equal weights, equal gradients dY."""

    def __init__(self):
        super().__init__()
        block = Block(32, 2, 64)
        self.layers = nn.ModuleList([block, copy.deepcopy(block)])

    def forward(self, x):
        return self.layers[0](x) + self.layers[1](x)


@pytest.mark.parametrize("policy", ["per_step", "fixed"])
def test_every_call_of_a_shared_graph_draws_its_own_seed(policy):
    """Under Inductor, per_step: the two calls of the shared graph round dY with different random bits, so
    the twins' weight gradients differ; fixed: they repeat each other's bits (and a warning says so)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Twins()
    per_block(model, make_backend({"sr_seed_policy": policy}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(torch.randn(2, 16, 32)).square().sum().backward()
    grads = [layer.mlp.down.weight.grad for layer in model.layers]
    same = torch.equal(grads[0], grads[1])
    assert same == (policy == "fixed")
    assert any("sr_seed_policy='fixed'" in str(w.message) for w in caught) == (policy == "fixed")
