"""The rewrite: counts of ufp4 GEMMs, nothing eligible left, what backward saves, seeds, bad input."""

import dataclasses

import pytest
import torch
from torch import nn

from ufp4_compile.recipes import UFP4_MEAN, MeanSplit
from ufp4_compile.testing import compile_and_run, count_calls, eligible_matmuls, saved_tensors, ufp4_gemms
from ufp4_compile.testing.models import MLP, SwiGLU, TiedHead

quantize = torch.ops.ufp4.quantize.default
FIXED = {"sr_seed_policy": "fixed"}


def quantize_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is quantize]


def test_mlp_every_gemm_rewritten_under_inductor():
    x = torch.randn(2, 16, 32, requires_grad=True)
    run = compile_and_run(MLP(32, 64), x, options=FIXED)
    assert ufp4_gemms(run.forward) == 2 and ufp4_gemms(run.backward) == 4
    assert eligible_matmuls(run.forward) == [] and eligible_matmuls(run.backward) == []
    assert len(run.report.rewritten) == 6 and run.report.kept == []


def _activation_shapes(x_shape, hidden):
    tokens = x_shape[0] * x_shape[1]
    return {x_shape, (tokens, x_shape[2]), (*x_shape[:2], hidden), (tokens, hidden)}


@pytest.mark.parametrize("recipe, expect_high_precision_saved", [("ufp4", False), ("nvfp4", False), ("bf16", True)])
def test_backward_saves_codes_not_activations(recipe, expect_high_precision_saved):
    """The forward's extra outputs (what backward holds) carry no float copy of a rewritten GEMM's input.

    ``bf16`` (nothing rewritten) is the control: there the same check finds the saved activations. 48 tokens
    keep activation shapes apart from the weights' (64 x 32, 32 x 64)."""
    x = torch.randn(2, 24, 32, requires_grad=True)
    run = compile_and_run(MLP(32, 64), x, options={"recipe": recipe, **FIXED})
    saved = saved_tensors(run.forward, num_outputs=1)
    activations = _activation_shapes(tuple(x.shape), 64)
    high = [t for t in saved if t.dtype.is_floating_point and tuple(t.shape) in activations]
    codes = [t for t in saved if t.dtype == torch.uint8]
    assert bool(high) == expect_high_precision_saved, [(t.dtype, tuple(t.shape)) for t in saved]
    if not expect_high_precision_saved:
        # Wgrad's X operands of fc1 (48 tokens x 32) and fc2 (48 x 64), packed two codes per byte.
        assert sorted(t.numel() for t in codes) == [24 * 32, 24 * 64]


def test_autocast_backward_saves_codes():
    x = torch.randn(2, 24, 32, requires_grad=True)
    run = compile_and_run(MLP(32, 64), x, options=FIXED, ctx=torch.autocast("cpu", dtype=torch.bfloat16))
    saved = saved_tensors(run.forward, num_outputs=1)
    activations = _activation_shapes(tuple(x.shape), 64)
    assert not [t for t in saved if t.dtype.is_floating_point and tuple(t.shape) in activations]
    assert ufp4_gemms(run.forward) == 2 and ufp4_gemms(run.backward) == 4


def test_stochastic_quantizes_have_distinct_offsets_and_one_seed():
    x = torch.randn(2, 16, 32, requires_grad=True)
    run = compile_and_run(MLP(32, 64), x, backend="aot")
    stochastic = [n for n in quantize_nodes(run.backward) + quantize_nodes(run.forward) if n.args[5] is not None]
    assert len(stochastic) == 4  # dY of each layer, for Dgrad and for Wgrad
    offsets = [n.args[6] for n in stochastic]
    assert len(set(offsets)) == len(offsets)
    assert "aten.randint.low" in run.capture.joint_after[0]
    assert run.capture.joint_after[0].count("aten.randint.low") == 1


def test_fixed_seed_is_a_constant():
    run = compile_and_run(MLP(32, 64), torch.randn(2, 16, 32), options={"sr_seed_policy": "fixed", "sr_seed": 7},
                          backend="aot")
    assert "aten.randint" not in run.capture.joint_after[0]
    assert "aten.scalar_tensor.default(7, dtype=torch.int64" in run.capture.joint_after[0]


def test_shared_weight_quantized_once_per_axis():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 32, bias=False)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    run = compile_and_run(Twice(), torch.randn(16, 32, requires_grad=True), options=FIXED, backend="aot")
    weight = next(n for n in run.forward.graph.nodes if n.op == "placeholder")
    fprop_w = [n for n in quantize_nodes(run.forward) if n.args[0] is weight and n.args[1] == 1]
    assert len(fprop_w) == 1
    assert ufp4_gemms(run.forward) == 2 and ufp4_gemms(run.backward) == 4


def test_shared_input_quantized_once():
    """SwiGLU's gate and up read the same X: one quantization per axis, one set of codes saved for both
    Wgrads (plus down's X)."""
    run = compile_and_run(SwiGLU(32, 64), torch.randn(2, 24, 32), options=FIXED)
    x_view = next(n for n in run.forward.graph.nodes if n.op == "call_function" and n.target in (
        torch.ops.aten.view.default, torch.ops.aten.reshape.default))
    by_axis = sorted(n.args[1] for n in quantize_nodes(run.forward) if n.args[0] is x_view)
    assert by_axis == [0, 1]
    codes = [t for t in saved_tensors(run.forward, num_outputs=1) if t.dtype == torch.uint8]
    assert sorted(t.numel() for t in codes) == [24 * 32, 24 * 64]
    assert ufp4_gemms(run.forward) == 3 and ufp4_gemms(run.backward) == 4


def test_tied_head_kept_by_default_and_rewritten_on_request():
    idx = torch.randint(0, 64, (2, 16))
    kept = compile_and_run(TiedHead(64, 32), idx, options=FIXED, backend="aot")
    head_rows = [r for r in kept.report.rows if r.module == "unembed"]
    assert len(head_rows) == 3 and all("tied to an input embedding" in r.reason for r in head_rows)
    done = compile_and_run(TiedHead(64, 32), idx, options={"keep_output_head": False, **FIXED}, backend="aot")
    assert all(r.rewritten for r in done.report.rows)
    assert eligible_matmuls(done.forward) == [] and eligible_matmuls(done.backward) == []


@pytest.mark.parametrize("split, gemms_fwd, high_mm", [(MeanSplit.FP4, 4, 0), (MeanSplit.HIGH, 2, 2)])
def test_mean_split_structure(split, gemms_fwd, high_mm):
    recipe = dataclasses.replace(UFP4_MEAN, fprop=dataclasses.replace(UFP4_MEAN.fprop, mean_split=split),
                                 dgrad=dataclasses.replace(UFP4_MEAN.dgrad, mean_split=split))
    run = compile_and_run(MLP(32, 64, bias=False), torch.randn(2, 16, 32), options={"recipe": recipe, **FIXED},
                          backend="aot")
    assert ufp4_gemms(run.forward) == gemms_fwd  # FP4: main + rank-one per Fprop
    rank_one = [n for n in run.forward.graph.nodes if n.target is torch.ops.aten.mm.default]
    assert len(rank_one) == high_mm and all(n.meta.get("ufp4_generated") for n in rank_one)
    assert eligible_matmuls(run.forward) == [] and eligible_matmuls(run.backward) == []
    assert {r.mean_split for r in run.report.rows if r.role in ("fprop", "dgrad")} == {split.value}


def test_einsum_batch_one_bmm_rewritten():
    class Einsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(64, 32) / 8)

        def forward(self, x):
            return torch.einsum("bsd,ed->bse", x, self.w)

    run = compile_and_run(Einsum(), torch.randn(2, 16, 32, requires_grad=True), options=FIXED)
    assert {r.kind for r in run.report.rows} == {"bmm"} and len(run.report.rewritten) == 3
    assert eligible_matmuls(run.forward) == [] and eligible_matmuls(run.backward) == []


# ---- bad input: kept with a reason, never a crash, never a wrong quantization ---------------------------

def _assert_kept_and_exact(model, *inputs, reason, backward=True, **kwargs):
    run = compile_and_run(model, *inputs, options=FIXED, backward=backward, **kwargs)
    assert run.report.rows and all(not r.rewritten for r in run.report.rows)
    assert all(reason in r.reason for r in run.report.rows), [r.reason for r in run.report.rows]
    assert ufp4_gemms(run.forward) == 0
    torch.testing.assert_close(run.out, model(*inputs))


def test_odd_dims_kept():
    run = compile_and_run(nn.Linear(40, 24), torch.randn(10, 40, requires_grad=True), options=FIXED)
    reasons = {r.role: r.reason for r in run.report.rows}
    assert "K=40 (reduction of fprop) is not a multiple of 16" in reasons["fprop"]
    assert "N=24 (reduction of dgrad) is not a multiple of 16" in reasons["dgrad"]
    assert reasons["wgrad"] is None  # 10 tokens: the reduction over tokens takes a zero-padded last block


def test_ragged_token_count_is_rewritten():
    """K = 48 and N = 64 fit blocks and RHT 16; M = 8 tokens does not, and Wgrad pads its last block."""
    run = compile_and_run(nn.Linear(48, 64), torch.randn(8, 48, requires_grad=True), options=FIXED)
    assert {r.role: r.rewritten for r in run.report.rows} == {"fprop": True, "dgrad": True, "wgrad": True}


def test_float64_kept():
    _assert_kept_and_exact(nn.Linear(32, 32).double(), torch.randn(16, 32, dtype=torch.float64),
                           reason="float64 is not quantized")


def test_integer_matmul_kept():
    class IntMM(nn.Module):
        def forward(self, a, b):
            return a @ b

    _assert_kept_and_exact(IntMM(), torch.randint(0, 5, (16, 32)), torch.randint(0, 5, (32, 16)),
                           reason="integer dtype torch.int64", backward=False)


def test_dynamic_token_count_rewrites_every_role():
    model = nn.Linear(32, 64)
    for tokens in (16, 48):
        x = torch.randn(tokens, 32)
        torch._dynamo.mark_dynamic(x, 0)
        run = compile_and_run(model, x, options=FIXED, dynamic=None)
        reasons = {r.role: r.reason for r in run.report.rows}
        assert reasons == {"fprop": None, "wgrad": None}  # x needs no gradient: no Dgrad
        assert run.out.shape == (tokens, 64)


class _Matmul(nn.Module):
    def forward(self, a, b):
        return a @ b


def _dynamic_feature_inputs():
    a, b = torch.randn(16, 32), torch.randn(32, 48)
    torch._dynamo.mark_dynamic(a, 1)
    torch._dynamo.mark_dynamic(b, 0)
    return a, b


def test_dynamic_features_kept():
    _assert_kept_and_exact(_Matmul(), *_dynamic_feature_inputs(), reason="dynamic shape", backward=False,
                           dynamic=None)


def test_dynamic_keeps_are_logged_as_warnings(caplog):
    with caplog.at_level("WARNING", logger="ufp4_compile.passes.rewrite_matmuls"):
        compile_and_run(_Matmul(), *_dynamic_feature_inputs(), options=FIXED, backward=False, dynamic=None)
    assert any("kept in high precision because of dynamic shapes" in r.getMessage() for r in caplog.records)


def test_graph_without_shape_metadata_is_left_alone():
    """A matmul whose nodes carry no fake values cannot be checked: it is kept, with that reason."""
    from ufp4_compile.passes import rewrite_matmuls
    from ufp4_compile.recipes import UFP4

    traced = torch.fx.experimental.proxy_tensor.make_fx(lambda x, w: x @ w.t())(torch.randn(16, 32),
                                                                             torch.randn(32, 32))
    for node in traced.graph.nodes:
        node.meta.pop("val", None)
    before = str(traced.graph)
    rows = rewrite_matmuls(traced.graph, UFP4)
    assert str(traced.graph) == before
    assert len(rows) == 1 and not rows[0].rewritten and "no shape metadata" in rows[0].reason


def test_freezing_option_is_forwarded_and_correct():
    model = MLP(32, 64)
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        plain = compile_and_run(model, x, options=FIXED, backward=False).out
        frozen = compile_and_run(model, x, options={"freezing": True, **FIXED}, backward=False)
    assert len(frozen.report.rewritten) == 2
    torch.testing.assert_close(frozen.out, plain)
