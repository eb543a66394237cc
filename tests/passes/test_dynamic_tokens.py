"""A dynamic (or ragged) token count: every Wgrad is rewritten, its reduction over the tokens quantized with a
zero-padded last block (docs/numerics.md), and one compiled graph matches the eager emulation at several
token counts (issue 12 item 3)."""

import copy

import pytest
import torch

from ufp4_compile.emulate import emulate
from ufp4_compile.testing import compile_and_run
from ufp4_compile.testing.models import MLP

FIXED = {"sr_seed_policy": "fixed"}


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("recipe", ["ufp4", "nvfp4", "mxfp4"])
def test_dynamic_tokens_rewrite_every_wgrad_and_dense_equals_codes(recipe):
    results = []
    for dense in (False, True):
        torch.manual_seed(0)
        model = MLP(32, 64)
        x = torch.randn(2, 20, 32, requires_grad=True)  # 40 tokens: not a multiple of 16 or 32
        run = compile_and_run(model, x, options={"recipe": recipe, **FIXED, "dense_gemms": dense}, dynamic=True)
        rows = run.report.rows
        assert len(rows) == 6 and all(r.rewritten for r in rows), [(r.role, r.reason) for r in rows]
        assert not all(isinstance(d, int) for d in rows[0].shape)  # the token count is symbolic
        results.append([run.out.detach(), x.grad.clone(), *_grads(model)])
    for codes_path, dense_path in zip(*results):
        torch.testing.assert_close(dense_path, codes_path, rtol=0, atol=0)


def test_one_dynamic_graph_matches_the_emulation_at_ragged_token_counts():
    torch.manual_seed(0)
    model = MLP(32, 64)
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend=__import__("ufp4_compile").backend.make_backend(FIXED),
                             dynamic=True)
    emulated = emulate(copy.deepcopy(model), "ufp4", **FIXED)
    for tokens in (40, 21):
        x = torch.randn(1, tokens, 32)
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_c, out_e = compiled(xc), emulated(xe)
        out_c.sum().backward()
        out_e.sum().backward()
        torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)
        for gc, ge in zip(compiled_model.parameters(), emulated.parameters()):
            torch.testing.assert_close(gc.grad, ge.grad, rtol=1e-5, atol=1e-6)
            gc.grad, ge.grad = None, None


def test_static_ragged_token_count_rewrites_wgrad():
    x = torch.randn(1, 37, 32, requires_grad=True)
    run = compile_and_run(MLP(32, 64), x, options=FIXED, backend="aot")
    assert all(r.rewritten for r in run.report.rows if r.role == "wgrad")
