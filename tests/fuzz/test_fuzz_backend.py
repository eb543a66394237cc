"""Properties of the backend over random models, recipes, shapes, dtypes and inputs (with NaN and +-Inf):

- ``torch.compile(model, backend=make_backend({...}))`` (Inductor on CPU, with and without
  ``dense_gemms=True``) gives the eager emulation's (``ufp4_compile.emulate``) output and gradients, checked as
  tests/test_emulate.py checks parity (FP32: assert_close's tolerance; bf16 with Inductor emulating the
  casts: bit for bit);
- where the unquantized model gives a non-finite value, the compiled one does too;
- every matmul of every graph the pass sees has exactly one row in the report (``backend.report.rows``),
  with a role if rewritten and a reason if kept.

Two classes fail today and have their own tests, marked xfail(strict=True) with the falsifying example: a
single token (parity) and products with a vector (rows).

Settings tiers: tests/fuzz/conftest.py.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from torch import nn

from ufp4_compile.backend import make_aot_backend, make_backend
from ufp4_compile.emulate import emulate
from ufp4_compile.recipes import PRESETS

aten = torch.ops.aten
FIXED = {"sr_seed_policy": "fixed"}
# Every aten op that multiplies matrices or vectors, whether or not the pass handles it: the census the
# report is checked against must not share the pass's notion of a matmul.
MATMUL_OPS = {getattr(aten, name).default for name in
              ("mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "_trilinear", "_grouped_mm")
              if hasattr(aten, name)}
SPECIALS = (math.nan, math.inf, -math.inf, 0.0, 1e-45, 3e38)
FEATURES = (16, 32, 48, 64, 24, 40)  # 24 and 40: not a multiple of the block (kept for alignment)


class Census:
    """A debugging sink (ufp4_compile.debug's protocol) recording the matmul nodes of each joint graph before
    the pass rewrites it."""

    needs_pass = True

    def __init__(self):
        self.matmuls: dict[int, list[str]] = {}

    def graph_before(self, graph_id, graph):
        self.matmuls[graph_id] = sorted(n.name for n in graph.nodes
                                        if n.op == "call_function" and n.target in MATMUL_OPS)

    def graph_after(self, graph_id, graph, rows):
        pass

    def compiled(self, graph_id, gm, is_backward):
        pass


def assert_one_row_per_matmul(report, census: Census) -> None:
    rows = defaultdict(list)
    for row in report.rows:
        rows[row.graph].append(row.node)
        assert row.rewritten or row.reason, f"kept without a reason: {row}"
        assert not row.rewritten or row.role is not None, f"rewritten without a role: {row}"
    assert census.matmuls, "the pass saw no graph"
    for graph_id, names in census.matmuls.items():
        assert sorted(rows.pop(graph_id, [])) == names, f"graph {graph_id}: rows != matmul nodes {names}"
    assert not rows, f"rows of graphs the pass never saw: {dict(rows)}"


@st.composite
def inputs(draw, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Gaussian values of a random scale; sometimes a few runs of NaN, +-Inf, zeros, subnormals, 3e38."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    x = torch.randn(shape, generator=gen) * 2.0 ** draw(st.integers(-6, 6))
    runs = draw(st.lists(st.tuples(st.integers(0, x.numel() - 1), st.integers(1, 20), st.sampled_from(SPECIALS)),
                         max_size=2))
    for start, length, value in runs:
        x.view(-1)[start:start + length] = value
    return x.to(dtype)


class Chain(nn.Module):
    """Linear layers with an activation between them (what the emulation swaps: nn.Linear only)."""

    def __init__(self, features: list[int], bias: bool, activation: str):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(features, features[1:]))
        self.activation = activation

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 0 else layer(getattr(F, self.activation)(x) if self.activation else x)
        return x


@st.composite
def linear_cases(draw, tokens=st.sampled_from((16, 32, 48)) | st.integers(2, 40)) -> dict:
    """A chain of 1 to 3 linear layers (features a multiple of the block or not), an input of ``tokens`` rows
    as (M, d), (1, M, d) or (2, M/2, d), a recipe, with or without dense GEMMs and a gradient for the input."""
    features = draw(st.lists(st.sampled_from(FEATURES), min_size=2, max_size=4))
    dtype = draw(st.sampled_from((torch.float32, torch.bfloat16)))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = Chain(features, draw(st.booleans()), draw(st.sampled_from(("relu", "gelu", "tanh", "")))).to(dtype)
    tokens = draw(tokens)
    batch = draw(st.sampled_from(((tokens,), (1, tokens)) + (((2, tokens // 2),) if tokens % 2 == 0 else ())))
    return dict(model=model, x=draw(inputs((*batch, features[0]), dtype)), x_grad=draw(st.booleans()),
                recipe=draw(st.sampled_from(sorted(PRESETS))), dense=draw(st.sampled_from((False, True))))


def _run(model, x, x_grad, forward):
    x = x.detach().clone().requires_grad_(x_grad)
    out = forward(model, x)
    out.float().sum().backward()
    return [out.detach(), x.grad, *[p.grad for p in model.parameters()]]


def _assert_non_finite_kept(eager, compiled, what):
    """Where the unquantized model's value is NaN or +-Inf, the compiled model's is too."""
    lost = ~torch.isfinite(eager) & torch.isfinite(compiled)
    assert not lost.any(), f"{what}: {int(lost.sum())} non-finite values of the unquantized model became finite"


def check_parity(case: dict) -> None:
    model, x, recipe = case["model"], case["x"], case["recipe"]
    event(f"recipe {recipe}, {x.dtype}, dense_gemms={case['dense']}")
    event("non-finite input" if not torch.isfinite(x.float()).all() else "finite input")
    event("tokens a multiple of 16" if x.shape[:-1].numel() % 16 == 0 else "tokens not a multiple of 16")
    options = {"recipe": recipe, **FIXED, "dense_gemms": case["dense"]}
    bf16 = x.dtype == torch.bfloat16
    if bf16:  # Inductor keeps bf16 intermediates in FP32 unless told to round as eager does
        options["emulate_precision_casts"] = True
    tolerance = dict(rtol=0, atol=0) if bf16 else {}

    census = Census()
    backend = make_backend(options, sinks=[census])
    torch._dynamo.reset()
    compiled = _run(copy.deepcopy(model), x, case["x_grad"],
                    lambda m, xc: torch.compile(m, backend=backend, fullgraph=True)(xc))
    emulated = _run(emulate(copy.deepcopy(model), **options), x, case["x_grad"], lambda m, xe: m(xe))
    plain = _run(copy.deepcopy(model), x, case["x_grad"], lambda m, xp: m(xp))
    names = ["output", "x.grad"] + [f"{n}.grad" for n, _ in model.named_parameters()]
    for name, c, e, p in zip(names, compiled, emulated, plain):
        if e is None:
            assert c is None, name
            continue
        torch.testing.assert_close(c, e, equal_nan=True, msg=lambda m, name=name: f"{name}: {m}", **tolerance)
        _assert_non_finite_kept(p, c, name)
    assert_one_row_per_matmul(backend.report, census)


@settings(settings.get_profile("ufp4-fuzz-compile"))
@given(case=linear_cases())
def test_compiled_equals_emulation(case):
    check_parity(case)


def _one_token_case() -> dict:
    torch.manual_seed(0)
    return dict(model=Chain([16, 16], bias=False, activation=""), x=torch.randn(1, 16), x_grad=False,
                recipe="e2m1-ref", dense=False)


@pytest.mark.xfail(strict=True, reason=(
    "With one token the Wgrad dW = dY^T X reduces over a length of 1: Inductor's decomposition turns that "
    "mm into an outer product (a pointwise mul) before the pass runs, so the compiled Wgrad is exact and has "
    "no row, while the emulation quantizes it. Falsifying example: nn.Linear(16, 16, bias=False), x of shape "
    "(1, 16) float32, recipe e2m1-ref (any recipe that quantizes Wgrad): weight.grad differs in 240 of 256 "
    "elements"))
@settings(settings.get_profile("ufp4-fuzz-compile"))
@given(case=linear_cases(tokens=st.just(1)))
@example(case=_one_token_case())
def test_compiled_equals_emulation_one_token(case):
    """The class the property above leaves out: a single token (M = 1)."""
    check_parity(case)


# ---- every matmul has a row: matmuls written in many ways, through the AOT backend --------------------------

class Form(nn.Module):
    """One matmul written a given way, on (batch, tokens, d) inputs."""

    def __init__(self, form: str, d: int, n: int, dtype):
        super().__init__()
        self.form = form
        self.proj = nn.Linear(d, n, dtype=dtype)
        self.weight = nn.Parameter(torch.randn(n, d, dtype=dtype) / d**0.5)
        self.square = nn.Parameter(torch.randn(d, d, dtype=dtype) / d**0.5)
        self.vector = nn.Parameter(torch.randn(d, dtype=dtype))

    def extra_repr(self) -> str:
        return f"form={self.form!r}"

    def forward(self, x):
        f, w, b = self.form, self.weight, self.proj.bias
        if f == "linear":
            return self.proj(x)
        if f == "functional":
            return F.linear(x, w, b)
        if f == "matmul":
            return x @ w.t()
        if f == "einsum":
            return torch.einsum("btd,nd->btn", x, w)
        if f == "addmm":
            return torch.addmm(b, x.flatten(0, 1), w.t())
        if f == "attention":  # q.k^T and p.v: batched matmuls of activations
            q = x * self.vector
            return (q @ (2 * x).transpose(1, 2)).softmax(-1) @ x.flip(1)
        if f == "baddbmm":
            return torch.baddbmm(x, x, self.square.expand(x.shape[0], -1, -1))
        if f == "addbmm":
            return torch.addbmm(self.square, x.transpose(1, 2), x)
        if f == "dot":
            return x[0, 0] @ self.vector
        if f == "mv":
            return x @ self.vector
        if f == "addmv":
            return torch.addmv(b[:1].expand(x.shape[0] * x.shape[1]), x.flatten(0, 1), self.vector)
        if f == "bilinear":
            return F.bilinear(x, x, self.square.expand(2, -1, -1))
        raise ValueError(f"form={f!r} is not valid")


COVERED_FORMS = ("linear", "functional", "matmul", "einsum", "addmm", "attention", "baddbmm", "addbmm", "bilinear")
OTHER_FORMS = ("mv", "addmv", "dot")  # products with a vector: test_every_matmul_has_a_row_vector_forms


class Stack(nn.Module):
    """A few forms side by side on the same input, their outputs summed."""

    def __init__(self, forms, d: int, n: int, dtype):
        super().__init__()
        self.blocks = nn.ModuleList(Form(f, d, n, dtype) for f in forms)

    def forward(self, x):
        return sum(block(x).float().sum() for block in self.blocks)


@st.composite
def form_cases(draw, forms):
    chosen = draw(st.lists(st.sampled_from(forms), min_size=1, max_size=3))
    dtype = draw(st.sampled_from((torch.float32, torch.bfloat16, torch.float64)))
    d, n = draw(st.sampled_from(FEATURES)), draw(st.sampled_from(FEATURES))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    shape = (draw(st.integers(1, 3)), draw(st.sampled_from((16, 32)) | st.integers(1, 33)), d)
    return dict(model=Stack(chosen, d, n, dtype), x=torch.randn(shape, dtype=dtype), x_grad=draw(st.booleans()),
                recipe=draw(st.sampled_from(sorted(PRESETS))), dynamic=draw(st.booleans()))


def check_rows(case):
    event(f"{case['x'].dtype}, dynamic={case['dynamic']}")
    census = Census()
    backend = make_aot_backend({"recipe": case["recipe"], **FIXED}, sinks=[census])
    torch._dynamo.reset()
    x = case["x"].clone().requires_grad_(case["x_grad"])
    torch.compile(case["model"], backend=backend, fullgraph=True, dynamic=case["dynamic"])(x).backward()
    assert_one_row_per_matmul(backend.report, census)


@settings(settings.get_profile("ufp4-fuzz-trace"))
@given(case=form_cases(COVERED_FORMS))
def test_every_matmul_has_a_row(case):
    check_rows(case)


def _vector_case(form: str) -> dict:
    torch.manual_seed(0)
    return dict(model=Stack([form], 16, 16, torch.float32), x=torch.randn(1, 1, 16), x_grad=False, recipe="ufp4",
                dynamic=False)


@pytest.mark.xfail(strict=True, reason=(
    "issue 16 item 9, left: a matrix times a vector (x @ v, torch.addmv: aten.mv, aten.addmv) gets no row, and "
    "a vector dot product (aten.dot, reached without Inductor's decompositions) makes the pass raise "
    "IndexError in classify.dims. Falsifying examples: x of shape (1, 1, 16) float32, recipe ufp4, the AOT "
    "backend: 'x @ v' (v a 16-vector parameter): no row for the matmul nodes ['mv', 'mv_1']; 'x[0, 0] @ v': "
    "IndexError"))
@settings(settings.get_profile("ufp4-fuzz-trace"))
@given(case=form_cases(OTHER_FORMS))
@example(case=_vector_case("mv"))
@example(case=_vector_case("dot"))
def test_every_matmul_has_a_row_vector_forms(case):
    check_rows(case)
