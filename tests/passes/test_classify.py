"""Finding and classifying matmuls: every way a linear layer reaches the graph, with Fprop/Dgrad/Wgrad."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ufp4_compile.backend import make_aot_backend
from ufp4_compile.testing.models import MLP, ManualAttention

ROLES3 = {"fprop", "dgrad", "wgrad"}


def roles(model, *inputs, grad=True, ctx=None, **options):
    """{module: sorted roles} of the dry-run report, plus the report."""
    torch._dynamo.reset()
    backend = make_aot_backend({"recipe": "ufp4", **options}, dry_run=True, inductor_decompositions=True)
    with ctx or contextlib.nullcontext():
        out = torch.compile(model, backend=backend, fullgraph=True)(*inputs)
    if grad:
        out.float().sum().backward()
    found: dict[str, set] = {}
    for row in backend.report.rows:
        found.setdefault(row.module, set()).add(row.role)
    return found, backend.report


class Weight(nn.Module):
    """A module holding a weight used through functional calls."""

    def __init__(self, fn, out=64, inp=32):
        super().__init__()
        self.fn = fn
        self.w = nn.Parameter(torch.randn(out, inp) / 8)
        self.b = nn.Parameter(torch.zeros(out))

    def forward(self, x):
        return self.fn(x, self.w, self.b)


@pytest.mark.parametrize("name, fn", [
    ("F.linear 2-D", lambda x, w, b: F.linear(x, w, b)),
    ("x @ w.t()", lambda x, w, b: x @ w.t()),
    ("einsum", lambda x, w, b: torch.einsum("bsd,ed->bse", x, w)),
    ("matmul with transposed weight", lambda x, w, b: torch.matmul(x, w.transpose(0, 1)) + b),
])
def test_functional_forms_give_three_roles(name, fn):
    x = torch.randn(2, 16, 32, requires_grad=True)
    if name == "F.linear 2-D":
        x = torch.randn(32, 32, requires_grad=True)
    found, report = roles(Weight(fn), x)
    assert found == {"": ROLES3}, name
    assert all(r.rewritten for r in report.rows), [r.reason for r in report.rows]


def test_linear_3d_input_shapes_and_bias():
    found, report = roles(MLP(32, 64), torch.randn(2, 16, 32, requires_grad=True))
    assert found == {"fc1": ROLES3, "fc2": ROLES3}
    shapes = {(r.module, r.role): r.shape for r in report.rows}
    # (rows, reduction, cols): Fprop M x K x N, Dgrad M x N x K, Wgrad N x M x K, with M = 2 * 16 tokens.
    assert shapes[("fc1", "fprop")] == (32, 32, 64)
    assert shapes[("fc1", "dgrad")] == (32, 64, 32)
    assert shapes[("fc1", "wgrad")] == (64, 32, 32)
    assert {r.kind for r in report.rows if r.role == "fprop"} == {"addmm"}


def test_missing_dgrad_when_input_has_no_grad():
    found, _ = roles(MLP(32, 64), torch.randn(2, 16, 32))
    assert found == {"fc1": {"fprop", "wgrad"}, "fc2": ROLES3}


def test_inference_graph_has_fprop_only():
    with torch.no_grad():
        found, report = roles(MLP(32, 64), torch.randn(2, 16, 32), grad=False)
    assert found == {"fc1": {"fprop"}, "fc2": {"fprop"}}
    assert all(r.rewritten for r in report.rows)


def test_autocast_converts_are_looked_through():
    found, report = roles(MLP(32, 64), torch.randn(2, 16, 32, requires_grad=True),
                          ctx=torch.autocast("cpu", dtype=torch.bfloat16))
    assert found == {"fc1": ROLES3, "fc2": ROLES3}
    assert {r.dtype for r in report.rows} == {"torch.bfloat16"}


def test_activation_checkpointing():
    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = MLP(32, 64)

        def forward(self, x):
            return checkpoint(self.mlp, x, use_reentrant=False)

    found, _ = roles(Checkpointed(), torch.randn(2, 16, 32, requires_grad=True))
    assert found == {"mlp.fc1": ROLES3, "mlp.fc2": ROLES3}


def test_module_called_twice_gives_two_sites():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 32)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    _, report = roles(Twice(), torch.randn(16, 32, requires_grad=True))
    fprops = [r for r in report.rows if r.role == "fprop"]
    assert len(fprops) == 2 and len([r for r in report.rows if r.role == "wgrad"]) == 2


def test_attention_batched_matmuls_are_found_and_kept():
    found, report = roles(ManualAttention(32, 2), torch.randn(2, 16, 32, requires_grad=True))
    bmm_rows = [r for r in report.rows if r.kind == "bmm"]
    assert len(bmm_rows) == 6  # q @ k^T and p @ v, each with two backward matmuls
    assert all(not r.rewritten and "attention" in r.reason for r in bmm_rows)
    assert found["qkv"] == ROLES3 and found["o"] == ROLES3
