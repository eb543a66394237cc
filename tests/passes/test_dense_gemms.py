"""The dense-GEMM pass (forced on CPU with ``dense_gemms=True``; ``"auto"`` applies it on GPUs without native
4-bit MMA): each ufp4 GEMM becomes a dense GEMM of operands the quantize kernel writes dequantized, codes
cross into the backward only where the partitioner saves them, and the result is the codes path's, bit for bit.
"""

import pytest
import torch
from torch import nn

from ufp4_compile.testing import compile_and_run, count_calls, saved_tensors, ufp4_gemms
from ufp4_compile.testing.models import MLP, SwiGLU

ops = torch.ops.ufp4
DENSE = {"sr_seed_policy": "fixed", "dense_gemms": True}


def _constants_into_dequantize(gm) -> int:
    """``full`` nodes read by a ufp4 dequantize (its tensor-scale argument)."""
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.full.default
               and any(u.target is ops.dequantize.default for u in n.users))


def _dense_gemms(gm) -> int:
    return sum(count_calls(gm, op) for op in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default))


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("recipe", ["ufp4", "nvfp4", "mxfp4", "e2m1-ref", "ufp4-nv", "ufp4-mean"])
def test_dense_equals_codes_path_bit_for_bit(recipe):
    """Forward output and every gradient equal the ``ufp4.scaled_mm`` path's (the reference GEMM), bit for bit,
    except where the contract allows FP32 accumulation order to differ: ufp4-mean's Dgrad outputs are FP32 sums
    (GEMM of the residual + rank-one term) that nothing rounds to the compute dtype in this FP32 model, and the
    CPU's FP32 GEMMs of the two paths see their operands in different layouts (the dense path's a transposed
    copy, the reference's contiguous). With two Dgrads into x (gate and up) x.grad then differed in 0-26 of
    1024 elements by at most 4 FP32 ulps, depending on the stochastic-rounding seed (seeds 0-5, before and
    after the 8-bit rounding); everything else stays bit-identical."""
    results = []
    for dense in (False, True):
        torch.manual_seed(0)
        model = SwiGLU(32, 64)
        x = torch.randn(2, 16, 32, requires_grad=True)
        run = compile_and_run(model, x, options={"recipe": recipe, "sr_seed_policy": "fixed", "dense_gemms": dense})
        results.append([run.out.detach(), x.grad.clone(), *_grads(model)])
        if dense:
            assert ufp4_gemms(run.forward) == 0 and ufp4_gemms(run.backward) == 0
            assert count_calls(run.forward, ops.quantize_dequantize.default) > 0
    for i, (codes_path, dense_path) in enumerate(zip(*results)):
        if recipe == "ufp4-mean" and i == 1:  # x.grad: FP32 sums of two Dgrads, see above
            torch.testing.assert_close(dense_path, codes_path, rtol=2**-20, atol=0)
        else:
            torch.testing.assert_close(dense_path, codes_path, rtol=0, atol=0)


def test_every_gemm_is_dense_and_x_crosses_as_codes():
    """Forward: Fprop operands dequantized by the quantize kernel; X's Wgrad quantization stays codes (saved);
    backward: dY's two quantizations dequantized, the saved codes dequantized where Wgrad reads them."""
    x = torch.randn(2, 24, 32, requires_grad=True)
    run = compile_and_run(MLP(32, 64), x, options=DENSE)
    fwd, bwd = run.forward, run.backward
    assert ufp4_gemms(fwd) == 0 and ufp4_gemms(bwd) == 0
    # Inductor may fuse a bias add into the dense GEMM (addmm): count both.
    assert [_dense_gemms(fwd), _dense_gemms(bwd)] == [2, 4]
    # Fprop: X and W of both layers; Wgrad's X of both layers stays codes for the backward.
    assert count_calls(fwd, ops.quantize_dequantize.default) == 4
    assert count_calls(fwd, ops.quantize.default) == 2
    # Dgrad: dY and W; Wgrad: dY (fc2's Dgrad dX is needed, fc1's is not: its input is x... which needs grad).
    assert count_calls(bwd, ops.dequantize.default) == 2
    assert count_calls(bwd, ops.quantize.default) == 0
    # one-level scales: the tensor scale (exactly 1) is one constant 1 for the partition's dequantizations, so
    # the quantizations' own are not saved (CUDA's lowering launches no fill for it: test_kernel_calls_codegen)
    assert _constants_into_dequantize(bwd) == 1
    saved = saved_tensors(fwd, num_outputs=1)
    assert [t for t in saved if t.dtype == torch.float32 and t.dim() == 0] == []
    tokens = 48
    high = [t for t in saved if t.dtype.is_floating_point and t.dim() == 2 and t.shape[0] == tokens]
    assert high == [], [(t.dtype, tuple(t.shape)) for t in saved]
    assert sorted(t.numel() for t in saved if t.dtype == torch.uint8) == [24 * 32, 24 * 64]


def test_shared_quantization_stays_one_kernel():
    """SwiGLU's gate and up read the same X: one dequantized operand serves both Fprops."""
    x = torch.randn(2, 16, 32, requires_grad=True)
    run = compile_and_run(SwiGLU(32, 64), x, options=DENSE)
    xs = [n for n in run.forward.graph.nodes
          if n.op == "call_function" and n.target is ops.quantize_dequantize.default and n.args[0].op == "placeholder"
          and tuple(n.args[0].meta["val"].shape) == (32, 32)]
    assert len(xs) <= 1


def test_auto_keeps_codes_path_on_cpu():
    x = torch.randn(2, 16, 32, requires_grad=True)
    run = compile_and_run(MLP(32, 64), x, options={"sr_seed_policy": "fixed"})
    assert ufp4_gemms(run.forward) == 2 and count_calls(run.forward, ops.quantize_dequantize.default) == 0


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_bad_option_is_a_value_error(bad):
    from ufp4_compile.backend import make_backend

    with pytest.raises(ValueError, match="dense_gemms"):
        make_backend({"dense_gemms": bad})


def test_autocast_dense_matches_codes_path():
    results = []
    for dense in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64, bias=True), nn.GELU(), nn.Linear(64, 32))
        x = torch.randn(48, 32, requires_grad=True)
        run = compile_and_run(model, x, options={"sr_seed_policy": "fixed", "dense_gemms": dense},
                              ctx=torch.autocast("cpu", dtype=torch.bfloat16))
        results.append([run.out.detach(), x.grad.clone(), *_grads(model)])
    for codes_path, dense_path in zip(*results):
        torch.testing.assert_close(dense_path, codes_path, rtol=0, atol=0)


def test_activation_checkpointing_dense_matches_codes_path():
    """Recomputed forward GEMMs inside the backward get their dense operands there too."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.outer = SwiGLU(32, 64), MLP(32, 64)

        def forward(self, x):
            return self.outer(checkpoint(self.inner, x, use_reentrant=False))

    results = []
    for dense in (False, True):
        torch.manual_seed(0)
        model = Checkpointed()
        x = torch.randn(2, 16, 32, requires_grad=True)
        run = compile_and_run(model, x, options={"sr_seed_policy": "fixed", "dense_gemms": dense})
        results.append([run.out.detach(), x.grad.clone(), *_grads(model)])
    for codes_path, dense_path in zip(*results):
        torch.testing.assert_close(dense_path, codes_path, rtol=0, atol=0)


def test_two_level_saved_codes_share_one_constant_per_partition():
    """E4M3 two-level scales: the dequantized operand leaves the tensor scale to the GEMM, so dequantize gets
    a constant 1, one per partition however many saved quantizations it reads."""
    x = torch.randn(2, 24, 32, requires_grad=True)
    run = compile_and_run(MLP(32, 64), x, options={**DENSE, "recipe": "nvfp4"})
    assert count_calls(run.backward, ops.dequantize.default) == 2
    assert _constants_into_dequantize(run.backward) == 1


@pytest.mark.parametrize("recipe", ["nvfp4", "ufp4-nv"])
def test_two_level_dense_output_is_rounded_under_inductor(recipe):
    """Two-level scales (E4M3 block scales, FP32 tensor scale): the dense GEMM scales its FP32 product and rounds
    it to bfloat16 as the codes path's GEMM does. Through real Inductor (not the eager kernels), the bf16 output
    of a Linear under autocast is upcast again in the backward; Inductor keeps a fused low-precision value in
    FP32, so a plain conversion left every gradient one rounding away from the codes path's."""
    from torch._inductor import config

    from ufp4_compile.backend import make_backend

    results = []
    for dense in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = nn.Linear(64, 32, bias=False)
        x = torch.randn(32, 64, requires_grad=True)
        backend = make_backend({"recipe": recipe, "sr_seed_policy": "fixed", "dense_gemms": dense})
        with torch.autocast("cpu", dtype=torch.bfloat16), config.patch(force_disable_caches=True):
            out = torch.compile(model, backend=backend, fullgraph=True)(x)
            out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype))
        results.append([out.detach(), x.grad.clone(), model.weight.grad.clone()])
    for codes_path, dense_path in zip(*results):
        torch.testing.assert_close(dense_path, codes_path, rtol=0, atol=0)


def test_round_to_bf16_is_the_conversion():
    """The pass's FP32 rounding to bfloat16 against torch's conversion, eager and compiled by Inductor with a
    consumer that upcasts it (tests/lowering/test_rounding.py: the fused CUDA lowering): ties to even, the
    largest finite values and overflow to infinity, subnormals, signed zeros, infinities and NaN."""
    from torch._inductor import config
    from torch.fx.experimental.proxy_tensor import make_fx

    from ufp4_compile import lowering
    from ufp4_compile.passes import dense_gemms
    from ufp4_compile.passes.fx_utils import NodeBuilder

    specials = torch.tensor([0.0, -0.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8), 3.3895314e38,
                             3.4028235e38, -3.4028235e38, 1e-40, -1e-45, float("inf"), float("-inf"), float("nan")])
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    x = torch.cat([specials, bits.to(torch.int32).view(torch.float32)])
    gm = make_fx(lambda t: t * 1.0, tracing_mode="fake")(x)
    node = next(n for n in gm.graph.nodes if n.op == "call_function")
    output = gm.graph.output_node()
    builder = NodeBuilder(gm.graph, node.meta["val"].fake_mode, output, node)
    rounded = dense_gemms._round_to_bf16(builder, node)
    # a consumer that upcasts it, fused into one kernel: the case where Inductor would keep FP32
    output.args = ((rounded, builder.call(torch.ops.prims.convert_element_type.default, rounded, torch.float32)),)
    gm.recompile()
    want = x.to(torch.bfloat16)
    lowering.register()
    with config.patch(force_disable_caches=True):
        compiled = torch.compile(gm, backend="inductor")(x)
    for low, high in (gm(x), compiled):  # eager, and compiled by Inductor
        assert low.dtype == torch.bfloat16 and high.dtype == torch.float32
        got = torch.stack([low.float(), high])
        same = (got.view(torch.int32) == want.float().view(torch.int32)) | (got.isnan() & want.isnan())
        assert bool(same.all()), x[~same.all(0)][:8]
