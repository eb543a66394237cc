"""Properties of the backend over random models, recipes, shapes, dtypes and inputs (with NaN and +-Inf):

- ``torch.compile(model, backend=make_backend({...}))`` (Inductor on CPU, with and without
  ``dense_gemms=True``) gives the eager emulation's (``ufp4_compile.emulate``) output and gradients, checked as
  tests/test_emulate.py checks parity (FP32: assert_close's tolerance; bf16 with Inductor emulating the
  casts: bit for bit); the rewritten graph run on eager kernels (the AOT backend) gives them bit for bit;
- where a NaN or +-Inf input makes the unquantized model's value non-finite, the compiled model's value is
  non-finite too (a finite input that overflows the unquantized model to Inf may saturate in the quantized
  one, as docs/numerics.md specifies);
- every matmul of every graph the pass sees has exactly one row in the report (``backend.report.rows``),
  with a role if rewritten and a reason if kept.

Two classes fail today and have their own tests, marked xfail(strict=True) with the falsifying example:
finite inputs near the FP32 limit with dense GEMMs, and tanh, GELU or SiLU between the layers (Inductor
against the emulation). A single token has its own property (Inductor decomposed a Wgrad with a reduction of
length 1 into a pointwise product, out of the pass's sight, until the backend kept matmuls whole). Products
with a vector (``mv``, ``addmv``, ``dot``) have rows.

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
SPECIALS = (math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-45, -1e-40)
NEAR_FP32_MAX = (3e38, -3.3e38, 1e38)  # finite: test_rewritten_graph_equals_emulation_near_fp32_max
FEATURES = (16, 32, 48, 64, 24, 40)  # 24 and 40: not a multiple of the block (kept for alignment)
# Activations Inductor computes with eager's bits (forward and backward), and ones it does not: its tanh,
# GELU and SiLU differ from ATen's in the last bit, which the 4-bit rounding of the next operand amplifies.
EXACT = ("relu", "")
TRANSCENDENTAL = ("tanh", "gelu", "silu")


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
def inputs(draw, shape: tuple[int, ...], dtype: torch.dtype, specials=SPECIALS) -> torch.Tensor:
    """Gaussian values of a random scale; sometimes a few runs of ``specials`` (NaN, +-Inf, signed zeros,
    subnormals)."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    x = torch.randn(shape, generator=gen) * 2.0 ** draw(st.integers(-6, 6))
    runs = draw(st.lists(st.tuples(st.integers(0, x.numel() - 1), st.integers(1, 20), st.sampled_from(specials)),
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

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 0 else layer(getattr(F, self.activation)(x) if self.activation else x)
        return x


@st.composite
def linear_cases(draw, tokens=st.sampled_from((16, 32, 48)) | st.integers(2, 40), activations=EXACT,
                 specials=SPECIALS) -> dict:
    """A chain of 1 to 3 linear layers (features a multiple of the block or not) with one of ``activations``
    between them, an input of ``tokens`` rows as (M, d), (1, M, d) or (2, M/2, d), a recipe, with or without
    dense GEMMs and a gradient for the input."""
    features = draw(st.lists(st.sampled_from(FEATURES), min_size=2, max_size=4))
    dtype = draw(st.sampled_from((torch.float32, torch.bfloat16)))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)  # the weights; kept in the case so that a falsifying example can be rebuilt
    model = Chain(features, draw(st.booleans()), draw(st.sampled_from(activations))).to(dtype)
    tokens = draw(tokens)
    batch = draw(st.sampled_from(((tokens,), (1, tokens)) + (((2, tokens // 2),) if tokens % 2 == 0 else ())))
    return dict(model=model, weights_seed=seed, x=draw(inputs((*batch, features[0]), dtype, specials)),
                x_grad=draw(st.booleans()), recipe=draw(st.sampled_from(sorted(PRESETS))),
                dense=draw(st.sampled_from((False, True))))


def _run(model, x, x_grad, forward):
    x = x.detach().clone().requires_grad_(x_grad)
    out = forward(model, x)
    out.float().sum().backward()
    return [out.detach(), x.grad, *[p.grad for p in model.parameters()]]


def _from_non_finite_inputs(model, x, x_grad) -> list:
    """Per result, where the unquantized model is non-finite because the input holds NaN or +-Inf: non-finite
    with ``x``, finite with those elements set to 0. (A finite input can overflow the unquantized model to Inf
    where the quantized one saturates, as docs/numerics.md specifies: that is not a value turning finite.)"""
    plain = _run(copy.deepcopy(model), x, x_grad, lambda m, xp: m(xp))
    cleaned = _run(copy.deepcopy(model), torch.where(torch.isfinite(x), x, 0), x_grad, lambda m, xp: m(xp))
    return [None if p is None else ~torch.isfinite(p) & torch.isfinite(q) for p, q in zip(plain, cleaned)]


def _assert_non_finite_kept(caused, compiled, what):
    """Where a non-finite input makes the unquantized model's value NaN or +-Inf, the compiled one's is too."""
    lost = caused & torch.isfinite(compiled)
    assert not lost.any(), (f"{what}: {int(lost.sum())} values made non-finite by a non-finite input in the "
                            f"unquantized model are finite in the compiled one")


def label_parity(case: dict) -> None:
    """Classes of examples, counted by ``--hypothesis-show-statistics``."""
    x = case["x"]
    event(f"recipe {case['recipe']}, {x.dtype}, dense_gemms={case['dense']}")
    event("non-finite input" if not torch.isfinite(x.float()).all() else "finite input")
    event("tokens a multiple of 16" if x.shape[:-1].numel() % 16 == 0 else "tokens not a multiple of 16")


def check_parity(case: dict, backend: str = "inductor") -> None:
    """Compiled against emulated: output and gradients; non-finite values kept; one row per matmul. With
    ``backend="aot"`` the rewritten graph runs on eager kernels, and the match must be exact."""
    model, x, recipe = case["model"], case["x"], case["recipe"]
    options = {"recipe": recipe, **FIXED, "dense_gemms": case["dense"]}
    bf16 = x.dtype == torch.bfloat16
    if bf16:  # Inductor keeps bf16 intermediates in FP32 unless told to round as eager does
        options["emulate_precision_casts"] = True
    tolerance = dict(rtol=0, atol=0) if bf16 or backend == "aot" else {}

    census = Census()
    compiler = (make_backend if backend == "inductor" else make_aot_backend)(options, sinks=[census])
    torch._dynamo.reset()
    compiled = _run(copy.deepcopy(model), x, case["x_grad"],
                    lambda m, xc: torch.compile(m, backend=compiler, fullgraph=True)(xc))
    emulated = _run(emulate(copy.deepcopy(model), **options), x, case["x_grad"], lambda m, xe: m(xe))
    caused = _from_non_finite_inputs(model, x, case["x_grad"])
    names = ["output", "x.grad"] + [f"{n}.grad" for n, _ in model.named_parameters()]
    for name, c, e, p in zip(names, compiled, emulated, caused):
        if e is None:
            assert c is None, name
            continue
        torch.testing.assert_close(c, e, equal_nan=True, msg=lambda m, name=name: f"{name}: {m}", **tolerance)
        _assert_non_finite_kept(p, c, name)
    assert_one_row_per_matmul(compiler.report, census)


@settings(settings.get_profile("ufp4-fuzz-compile"))
@given(case=linear_cases())
def test_compiled_equals_emulation(case):
    label_parity(case)
    check_parity(case)


@settings(settings.get_profile("ufp4-fuzz-trace"))
@given(case=linear_cases(activations=EXACT + TRANSCENDENTAL))
def test_rewritten_graph_equals_emulation(case):
    """The rewrite alone, for any activation: the AOT backend runs the rewritten graph on eager kernels, so
    it must give the emulation's bits."""
    label_parity(case)
    check_parity(case, backend="aot")


def _near_max_case() -> dict:
    torch.manual_seed(0)
    model = Chain([16, 32], bias=False, activation="").to(torch.bfloat16)
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    x[0, 0] = 3e38
    return dict(model=model, weights_seed=0, x=x.to(torch.bfloat16), x_grad=False, recipe="e2m1-ref", dense=True)


@pytest.mark.xfail(strict=True, reason=(
    "Finite inputs near the FP32 limit: with dense_gemms=True the bf16 GEMM of the dequantized operands "
    "overflows to Inf where the codes path (ufp4.scaled_mm, FP32 products rounded once) and the emulation "
    "stay finite; AOT and Inductor alike. Falsifying example: Chain([16, 32], bias=False) in bfloat16 with "
    "torch.manual_seed(0) weights, x = randn(16, 16) (generator seed 0) with x[0, 0] = 3e38, in bfloat16, "
    "recipe e2m1-ref, dense_gemms=True: layers.0.weight.grad differs in 11 of 512 elements (Inf against "
    "finite)"))
@settings(settings.get_profile("ufp4-fuzz-trace"))
@given(case=linear_cases(activations=EXACT + TRANSCENDENTAL, specials=NEAR_FP32_MAX))
@example(case=_near_max_case())
def test_rewritten_graph_equals_emulation_near_fp32_max(case):
    """The class the properties above leave out: finite input values near the FP32 limit."""
    label_parity(case)
    check_parity(case, backend="aot")


def _tanh_case() -> dict:
    torch.manual_seed(3)
    model = Chain([32, 32, 32], bias=False, activation="tanh")
    return dict(model=model, weights_seed=3, x=32 * torch.randn(32, 32, generator=torch.Generator().manual_seed(3)),
                x_grad=False, recipe="e2m1-ref", dense=False)


@pytest.mark.xfail(strict=True, reason=(
    "Inductor's tanh, GELU and SiLU (forward or backward) differ from ATen's in the last bit, and the 4-bit "
    "rounding of the next operand turns that into a code step, so the compiled model leaves the emulation "
    "(the rewritten graph on eager kernels matches it exactly: test_rewritten_graph_equals_emulation). "
    "Falsifying example: Chain([32, 32, 32], bias=False, activation='tanh') with torch.manual_seed(3) "
    "weights, x = 32 * randn(32, 32) (generator seed 3), float32, recipe e2m1-ref: layers.0.weight.grad "
    "differs in 30 of 1024 elements, by up to 0.00074 (a code step is rare: the example changes whenever the "
    "random bits of stochastic rounding do)"))
@settings(settings.get_profile("ufp4-fuzz-compile"))
@given(case=linear_cases(activations=TRANSCENDENTAL))
@example(case=_tanh_case())
def test_compiled_equals_emulation_transcendental_activations(case):
    """The class the Inductor property above leaves out: tanh, GELU or SiLU between the layers."""
    label_parity(case)
    check_parity(case)


def _one_token_case() -> dict:
    torch.manual_seed(0)
    return dict(model=Chain([16, 16], bias=False, activation=""), weights_seed=0, x=torch.randn(1, 16), x_grad=False,
                recipe="e2m1-ref", dense=False)


@settings(settings.get_profile("ufp4-fuzz-compile"))
@given(case=linear_cases(tokens=st.just(1)))
@example(case=_one_token_case())
def test_compiled_equals_emulation_one_token(case):
    """A single token (M = 1): the Wgrad reduces over a length of 1, a matmul Inductor's own decompositions
    would turn into a pointwise product before the pass (the backend passes Inductor its table without the
    mm / addmm / bmm decompositions)."""
    label_parity(case)
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
    census = Census()
    backend = make_aot_backend({"recipe": case["recipe"], **FIXED}, sinks=[census])
    torch._dynamo.reset()
    x = case["x"].clone().requires_grad_(case["x_grad"])
    torch.compile(case["model"], backend=backend, fullgraph=True, dynamic=case["dynamic"])(x).backward()
    assert_one_row_per_matmul(backend.report, census)


@settings(settings.get_profile("ufp4-fuzz-trace"))
@given(case=form_cases(COVERED_FORMS))
def test_every_matmul_has_a_row(case):
    event(f"{case['x'].dtype}, dynamic={case['dynamic']}")
    check_rows(case)


def _vector_case(form: str) -> dict:
    torch.manual_seed(0)
    return dict(model=Stack([form], 16, 16, torch.float32), x=torch.randn(1, 1, 16), x_grad=False, recipe="ufp4",
                dynamic=False)


@settings(settings.get_profile("ufp4-fuzz-trace"))
@given(case=form_cases(OTHER_FORMS))
@example(case=_vector_case("mv"))
@example(case=_vector_case("dot"))
def test_every_matmul_has_a_row_vector_forms(case):
    check_rows(case)
