"""What the Dynamo graph tells the pass about its inputs: a head tied to an embedding compiled in another
graph is still the tied head (DDP graph splits, graph breaks), recognized by the parameter's identity."""

import pytest
import torch
from torch import nn

from ufp4_compile.backend import make_aot_backend
from ufp4_compile.passes.graph_inputs import parameter_name


@pytest.mark.parametrize("source, name", [
    ("L['self']._modules['embed']._parameters['weight']", "embed.weight"),
    ("L['args'][0]._modules['model']._modules['embed_tokens']._parameters['weight']", "model.embed_tokens.weight"),
    ("L['self'].layers.0.__dict__['_modules']['_checkpoint_wrapped_module'].attn.qkv._parameters['weight']",
     "layers.0._checkpoint_wrapped_module.attn.qkv.weight"),
    ("L['self']._buffers['rope_cos']", "rope_cos"),
])
def test_parameter_names(source, name):
    assert parameter_name(source) == name


class BrokenTiedHead(nn.Module):
    """An embedding, a projection, and an output projection named like no head; a graph break puts the
    embedding and the output projection in different graphs."""

    def __init__(self, tied: bool, vocab: int = 64, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.proj = nn.Linear(d, d, bias=False)
        self.unembed = nn.Linear(d, vocab, bias=False)
        if tied:
            self.unembed.weight = self.embed.weight

    def forward(self, idx):
        h = self.embed(idx)
        torch._dynamo.graph_break()
        return self.unembed(torch.relu(self.proj(h)))


def _decisions(model):
    torch._dynamo.reset()
    backend = make_aot_backend({})
    torch.compile(model, backend=backend)(torch.randint(0, 64, (2, 16))).sum().backward()
    assert backend.report.graphs == 2
    return {(r.module, r.role): r.reason for r in backend.report.rows}


def test_tied_head_in_another_graph_than_its_embedding_is_kept():
    decisions = _decisions(BrokenTiedHead(tied=True))
    for role in ("fprop", "dgrad", "wgrad"):
        assert decisions[("unembed", role)].startswith("output head: weight tied to an input embedding")
        assert decisions[("proj", role)] is None


def test_untied_projection_of_the_same_names_is_rewritten():
    """Identity, not names: a later model whose output projection has its own weight is not taken for a
    tied head, although an earlier model of the process had an embedding called ``embed``."""
    _decisions(BrokenTiedHead(tied=True))
    decisions = _decisions(BrokenTiedHead(tied=False))
    assert all(decisions[("unembed", role)] is None for role in ("fprop", "dgrad", "wgrad"))
