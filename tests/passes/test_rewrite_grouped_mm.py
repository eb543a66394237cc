"""Grouped GEMMs (mixture-of-experts layers, ``torch._grouped_mm``): Fprop, Dgrad and Wgrad rewritten per the
recipe (Wgrad over each expert's tokens padded to whole blocks), routers kept; the Fprop equals the
reference GEMM of the quantized operands bit for bit."""

import dataclasses

import pytest
import torch

import ufp4_compile
from ufp4_compile.models.gpt import GPT, get_config
from ufp4_compile.models.moe import MoE
from ufp4_compile.passes.rewrite_grouped_mm import pad_groups
from ufp4_compile.recipes import get_recipe
from ufp4_compile.testing import compile_and_run

FIXED = {"sr_seed_policy": "fixed"}


def _grouped_rows(report):
    return [r for r in report.rows if r.kind == "_grouped_mm"]


@pytest.mark.parametrize("backend", ["aot", "inductor"])
def test_moe_gpt_expert_gemms_rewritten_in_fprop_and_dgrad(backend):
    torch.manual_seed(0)
    model = GPT(get_config("tiny-moe"))
    idx = torch.randint(0, 256, (2, 64))
    run = compile_and_run(model, idx, idx, options=FIXED, backend=backend)
    grouped = _grouped_rows(run.report)
    # 2 layers x (gate_up, down) x (Fprop, Dgrad, Wgrad)
    assert len(grouped) == 12
    assert {(r.role, r.action) for r in grouped} == {("fprop", "rewritten"), ("dgrad", "rewritten"),
                                                     ("wgrad", "rewritten")}
    routers = [r for r in run.report.rows if r.module.endswith("mlp.router")]
    assert routers and all(not r.rewritten for r in routers)
    shared = [r for r in run.report.rows if ".mlp.shared." in r.module]
    assert len(shared) == 12 and all(r.rewritten for r in shared)
    assert torch.isfinite(run.out)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_grouped_fprop_is_the_reference_gemm_of_quantized_operands():
    """e2m1-ref: Fprop without RHT, round-to-nearest: the output is _grouped_mm of the dequantized operands
    (the rewritten graph run eagerly, so routing and activations are computed as in the reference below)."""
    torch.manual_seed(1)
    moe = MoE(64, 64, n_experts=4, top_k=2, shared_hidden=0)
    x = torch.randn(48, 64)
    compiled = torch.compile(moe, backend=ufp4_compile.backend.make_aot_backend({"recipe": "e2m1-ref", **FIXED}))
    out = compiled(x)
    fmt = get_recipe("e2m1-ref").gemm(ufp4_compile.recipes.Role.FPROP)
    order, token, weight, offs = moe.route(x)
    rows = x[token].to(torch.bfloat16)

    def qdq(t, spec):
        return torch.ops.ufp4.quantize_dequantize(t, 1, spec, 0, 0, None, 0, torch.bfloat16)[0]

    h = torch._grouped_mm(qdq(rows, fmt.a.spec), qdq(moe.gate_up.to(torch.bfloat16), fmt.b.spec), offs=offs)
    gate, up = h.chunk(2, dim=-1)
    y = torch._grouped_mm(qdq(torch.nn.functional.silu(gate) * up, fmt.a.spec),
                          qdq(moe.down.to(torch.bfloat16), fmt.b.spec), offs=offs)
    want = torch.zeros_like(x).index_add(0, token, (y * weight[:, None].to(y.dtype)).to(x.dtype))
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_two_level_scales_are_kept_with_a_reason():
    """nvfp4: the tensor scales belong to an FP32 product that torch's grouped GEMM cannot write."""
    torch.manual_seed(0)
    model = GPT(get_config("tiny-moe"))
    idx = torch.randint(0, 256, (2, 64))
    run = compile_and_run(model, idx, idx, options={"recipe": "nvfp4", **FIXED}, backend="aot")
    rows = _grouped_rows(run.report)
    assert rows and all(not r.rewritten and "two-level" in r.reason for r in rows)


def test_explain_lists_the_expert_gemms():
    model = GPT(get_config("tiny-moe"))
    report = ufp4_compile.explain(model, torch.randint(0, 256, (1, 64)))
    assert len(_grouped_rows(report)) == 12  # 2 layers x (gate_up, down) x (Fprop, Dgrad, Wgrad)
    assert sum(r.rewritten for r in _grouped_rows(report)) == 12


def test_skip_patterns_apply_to_expert_gemms():
    model = GPT(get_config("tiny-moe"))
    idx = torch.randint(0, 256, (2, 64))
    run = compile_and_run(model, idx, idx, options={**FIXED, "skip": ["layers.0.*"]}, backend="aot")
    rows = _grouped_rows(run.report)
    assert all(not r.rewritten for r in rows if r.module.startswith("layers.0."))
    assert any(r.rewritten for r in rows if r.module.startswith("layers.1."))


def test_moe_config_validation():
    with pytest.raises(ValueError, match="top_k"):
        dataclasses.replace(get_config("tiny-moe"), top_k=9)


def test_pad_groups_starts_every_expert_on_a_block():
    x = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 2) + 1  # rows 1..10
    dy = -x
    offs = torch.tensor([3, 3, 9], dtype=torch.int32)  # expert 1 is empty; row 9 is past the last group
    x_pad, dy_pad, padded = pad_groups(x, dy, offs, block=4)
    assert padded.tolist() == [4, 4, 12]
    assert x_pad.shape == (20, 2)  # 10 + 3 * 3 rounded up to 4
    assert x_pad[:4, 0].tolist() == [1, 2, 3, 0]
    assert x_pad[4:12, 0].tolist() == [4, 5, 6, 7, 8, 9, 0, 0]
    assert x_pad[12:, 0].abs().sum() == 0  # row 10 (past offs[-1]) became zero
    torch.testing.assert_close(dy_pad, -x_pad)


def test_grouped_wgrad_equals_the_padded_reference():
    """e2m1-ref's Wgrad (RHT-16 along the tokens, stochastic rounding on dY): per expert, the product of the
    dequantized padded operands; the padding never mixes two experts' tokens."""
    torch.manual_seed(2)
    x = torch.randn(40, 32, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(3, 32, 48, dtype=torch.bfloat16, requires_grad=True)
    offs = torch.tensor([7, 20, 40], dtype=torch.int32)
    backend = ufp4_compile.backend.make_aot_backend({"recipe": "e2m1-ref", **FIXED})

    def f(x, w):
        return torch._grouped_mm(x, w, offs=offs)

    y = torch.compile(f, backend=backend)(x, w)
    dy = torch.randn_like(y)
    y.backward(dy)
    rows = [r for r in backend.report.rows if r.role == "wgrad"]
    assert len(rows) == 1 and rows[0].rewritten
    # Without quantization the padded layout gives exactly the plain per-expert product.
    x_pad, dy_pad, padded = pad_groups(x.detach(), dy, offs, block=16)
    plain = torch._grouped_mm(x.detach().t().contiguous(), dy, offs=offs)
    torch.testing.assert_close(torch._grouped_mm(x_pad.t().contiguous(), dy_pad, offs=padded), plain)
    # And the quantized gradient is close to it (4-bit error of a random problem).
    err = (w.grad.float() - plain.float()).norm() / plain.float().norm()
    assert err < 0.25, err


class _TransposedExperts(torch.nn.Module):
    """Expert weights stored (experts x N x K) and read transposed, as transformers stores them: autograd then
    writes the Wgrad as ``_grouped_mm(dY^T, x)``, the gradient of the stored weight."""

    def __init__(self, transposed: bool):
        super().__init__()
        self.transposed = transposed
        shape = (4, 96, 64) if transposed else (4, 64, 96)
        self.up = torch.nn.Parameter(torch.randn(*shape, dtype=torch.bfloat16) * 0.1)

    def forward(self, x):
        offs = torch.tensor([20, 64, 90, 128], dtype=torch.int32)
        w = self.up.transpose(-2, -1) if self.transposed else self.up
        return torch.nn.functional.grouped_mm(x, w, offs=offs).float().square().mean()


@pytest.mark.parametrize("transposed", [False, True], ids=["stored-KxN", "stored-NxK"])
def test_grouped_gemms_equal_the_eager_emulation(transposed):
    """The rewritten graph against ``ufp4_compile.emulate`` (which quantizes dY and x by role, whatever the
    layout): output and both gradients bit for bit, so dY (stochastic rounding) and x (nearest) each get their
    own format in the Wgrad in both forms autograd writes it."""
    import copy

    from ufp4_compile.emulate import emulate

    torch.manual_seed(0)
    model = _TransposedExperts(transposed)
    twin = copy.deepcopy(model)
    x = torch.randn(128, 64, dtype=torch.bfloat16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    run = compile_and_run(model, x, options=FIXED, backend="aot")
    assert {r.role for r in _grouped_rows(run.report) if r.rewritten} == {"fprop", "dgrad", "wgrad"}
    out = emulate(twin, **FIXED)(x2)
    out.backward()
    assert torch.equal(run.out, out.detach())
    assert torch.equal(x.grad, x2.grad)
    assert torch.equal(model.up.grad, twin.up.grad)
