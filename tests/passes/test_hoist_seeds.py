"""hoist_seeds: the stochastic-rounding seed that the partitioner places before its first backward user moves
to the graph's start, so it exists before dY's sample_median is lowered; nothing else moves."""

import pytest
import torch
import torch.fx as fx

import ufp4_compile.ops  # noqa: F401  (registers torch.ops.ufp4)
from ufp4_compile.backend import make_backend
from ufp4_compile.passes.hoist_seeds import hoist_seeds
from ufp4_compile.testing import GraphCapture
from ufp4_compile.testing.models import MLP

aten, prims, ufp4 = torch.ops.aten, torch.ops.prims, torch.ops.ufp4


def _node(graph, target, args, value, **kwargs):
    node = graph.call_function(target, args, kwargs)
    node.meta["val"] = value
    return node


def test_moves_the_input_free_seed_chains_of_ufp4_ops_and_nothing_else():
    graph = fx.Graph()
    x = graph.placeholder("x")
    mu = graph.call_function(ufp4.sample_median.default, (x,))
    seeds = _node(graph, prims.inductor_seeds.default, (2, torch.device("cpu")), torch.zeros(2, dtype=torch.int64))
    lookup = _node(graph, prims.inductor_lookup_seed.default, (seeds, 1), torch.tensor(0))
    draw = _node(graph, prims.inductor_randint.default, (0, 1 << 62, [], lookup), torch.tensor(0))
    salted = _node(graph, aten.bitwise_xor.Scalar, (draw, 5), torch.tensor(0))
    q = graph.call_function(ufp4.quantize.default, (x, 1, "int4/16/fp32/stochastic", 16, 0, salted, 1 << 32, mu))
    fixed = _node(graph, aten.full.default, ([], 7), torch.tensor(7))
    q2 = graph.call_function(ufp4.quantize.default, (x, 0, "int4/16/fp32/stochastic", 16, 0, fixed, 2 << 32))
    zeros = _node(graph, aten.full.default, ([16, 16], 0), torch.zeros(16, 16))  # too large: stays
    other = _node(graph, aten.scalar_tensor.default, (3,), torch.tensor(3))  # no ufp4 user: stays
    from_x = _node(graph, aten.bitwise_xor.Scalar, (x, 1), torch.tensor(0))  # reads a tensor: stays
    graph.output((q, q2, zeros, other, from_x))
    gm = fx.GraphModule(torch.nn.Module(), graph)
    before = [n.name for n in gm.graph.nodes]
    chain = [seeds.name, lookup.name, draw.name, salted.name, fixed.name]
    assert hoist_seeds(gm) == len(chain)
    after = [n.name for n in gm.graph.nodes]
    assert after == [x.name, *chain] + [name for name in before[1:] if name not in chain]
    assert hoist_seeds(gm) == 0 and [n.name for n in gm.graph.nodes] == after  # in place already


@pytest.mark.parametrize("policy", ["per_step", "fixed"])
def test_seed_precedes_dys_selection_in_the_backward(policy):
    """ufp4-mean: without the move the partitioner placed the seed (a draw, or a constant) after the selection
    of dY (the backward's input), and the selection launch could not quantize mu."""
    capture = GraphCapture()
    torch.manual_seed(0)
    model = MLP(32, 64)
    x = torch.randn(2, 16, 32, requires_grad=True)
    backend = make_backend({"recipe": "ufp4-mean", "sr_seed_policy": policy}, sinks=[capture])
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        torch.compile(model, backend=backend, fullgraph=True)(x).square().sum().backward()
    nodes = list(capture.backward[0].graph.nodes)
    medians = [i for i, n in enumerate(nodes) if n.target is ufp4.sample_median.default]
    seeds = {n.args[5] for n in nodes if n.target is ufp4.quantize.default and isinstance(n.args[5], fx.Node)}
    assert medians and seeds
    assert all(nodes.index(seed) < min(medians) for seed in seeds)
