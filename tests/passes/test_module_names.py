"""Module names in reports and policy decisions are the ones ``model.named_modules()`` gives, however the
compiled function reached the model (its own forward, a ``*args`` decorator as in transformers, keyword
arguments, bound methods, closures, functools.partial)."""

import functools

import pytest
import torch
from torch import nn

from ufp4_compile import explain
from ufp4_compile.passes.fx_utils import module_name, normalize_module_path


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return self.fc(x)


class Net(nn.Module):
    """Three numbered blocks, a ModuleDict item whose key is not an identifier, a head."""

    def __init__(self, d=32):
        super().__init__()
        self.layers = nn.ModuleList([Block(d) for _ in range(3)])
        self.extra = nn.ModuleDict({"a-b": nn.Linear(d, d)})
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.proj(self.extra["a-b"](x))


def args_decorator(forward):
    """What transformers' ``can_return_tuple`` / ``check_model_inputs`` do: ``forward(*args, **kwargs)``."""

    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        return forward(*args, **kwargs)

    return wrapper


class WrappedNet(Net):
    @args_decorator
    def forward(self, x):
        return super().forward(x)


class Outer(nn.Module):
    """A causal-LM-like wrapper: ``model.layers.N`` under a decorated forward."""

    def __init__(self, d=32):
        super().__init__()
        self.model = Net(d)

    @args_decorator
    def forward(self, x):
        return self.model(x)


@pytest.mark.parametrize("recorded, expected", [
    # What torch 2.13's Dynamo records in nn_module_stack for each calling convention.
    ("L['self'].layers.0.fc", "layers.0.fc"),
    ("L['args'][0].model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj"),
    ("L['kwargs']['model'].layers.1.fc", "layers.1.fc"),
    ("L['fn'].__self__.layers.2.fc", "layers.2.fc"),
    ("L['f'].__closure__[0].cell_contents.layers.0.fc", "layers.0.fc"),
    ("L['fn'].args[0].proj", "proj"),
    ("L['a'][1][0].layers.0.fc", "layers.0.fc"),
    ("G['net'].extra.a-b", "extra.a-b"),
    ("L['fn'].0", "0"),  # nn.Sequential compiled directly
    ("L['self']", ""),
    ("getattr(L['self'], 'my-fc')", "my-fc"),
    ("getattr(getattr(L['args'][0], 'a-b'), 'c')", "a-b.c"),
    ("L['self'].layers[0]._modules['fc']", "layers.0.fc"),  # older spellings of module steps
])
def test_normalize_module_path(recorded, expected):
    assert normalize_module_path(recorded) == expected


def _traced_names(fn, *args, **kwargs) -> set[str]:
    """Names of the modules Dynamo traced ``F.linear`` calls in, as the pass reads them."""
    names = set()

    def backend(gm, example_inputs):
        names.update(module_name(n) for n in gm.graph.nodes
                     if n.op == "call_function" and n.target is torch._C._nn.linear)
        return gm

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args, **kwargs)
    return names


def _closure(net):
    def run(x):
        return net(x)

    return run


CONVENTIONS = {  # model -> (function to compile, its args, its kwargs)
    "own forward": lambda net, x: (net, (x,), {}),
    "positional argument": lambda net, x: (lambda model, x: model(x), (net, x), {}),
    "*args": lambda net, x: (lambda *args: args[0](args[1]), (net, x), {}),
    "**kwargs": lambda net, x: (lambda **kwargs: kwargs["model"](kwargs["x"]), (), {"model": net, "x": x}),
    "bound method as argument": lambda net, x: (lambda fn, x: fn(x), (net.forward, x), {}),
    "closure as argument": lambda net, x: (lambda fn, x: fn(x), (_closure(net), x), {}),
    "functools.partial": lambda net, x: (functools.partial(lambda model, x: model(x), net), (x,), {}),
}


@pytest.mark.parametrize("model_class", [Net, WrappedNet])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_names_match_named_modules_for_every_calling_convention(convention, model_class):
    net = model_class()
    fn, args, kwargs = CONVENTIONS[convention](net, torch.randn(4, 32))
    expected = {name for name, m in net.named_modules() if isinstance(m, nn.Linear)}
    assert _traced_names(fn, *args, **kwargs) == expected


def test_keep_first_last_and_skip_under_an_args_decorator():
    """A decorated forward used to make every block look like block 0 (``0.model.layers.2.fc``)."""
    torch._dynamo.reset()
    model, x = Outer(), torch.randn(16, 32)
    report = explain(model, x, options={"keep_first": 1, "keep_last": 1})
    assert {r.module for r in report.rows} == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {r.module for r in report.kept} == {"model.layers.0.fc", "model.layers.2.fc"}
    assert {r.module for r in report.rewritten} == {"model.layers.1.fc", "model.extra.a-b", "model.proj"}
    torch._dynamo.reset()
    report = explain(model, x, options={"skip": ["model.layers.1.*"]})
    assert {r.module for r in report.kept} == {"model.layers.1.fc"}
