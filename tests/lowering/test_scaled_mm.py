"""The ``ufp4::scaled_mm`` lowering: CPU fallback and the extern choice on CPU Inductor; the Triton template,
autotuning and epilogue fusion on the GPU."""

from __future__ import annotations

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import ufp4_compile.lowering as lowering
import ufp4_compile.ops  # noqa: F401
from ufp4_compile.numerics.quantize import dequantize, gemm_reference, quantize

scaled_mm_lowering = pytest.importorskip("ufp4_compile.lowering.scaled_mm")

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SPECS = ("int4/16/fp32/nearest", "e2m1/16/e4m3/nearest", "e2m1/32/e8m0/nearest")


def operands(spec, M=32, N=48, K=64, device="cpu"):
    gen = torch.Generator().manual_seed(1)
    qa = quantize(torch.randn(M, K, generator=gen).to(device), 1, spec)
    qb = quantize(torch.randn(N, K, generator=gen).to(device), 1, spec)
    return qa, qb


def mm_fn(spec, compute="bf16", out_dtype=torch.float32):
    def fn(ac, asc, ats, bc, bsc, bts):
        return torch.ops.ufp4.scaled_mm(ac, asc, ats, bc, bsc, bts, spec, spec, compute, out_dtype)
    return fn


def args(qa, qb):
    return (qa.codes, qa.scales, qa.tensor_scale, qb.codes, qb.scales, qb.tensor_scale)


@pytest.fixture(autouse=True)
def fresh():
    lowering.register()
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        yield


@pytest.mark.parametrize("spec", SPECS)
def test_cpu_falls_back_to_the_op(spec):
    qa, qb = operands(spec)
    out, code = run_and_get_code(torch.compile(mm_fn(spec), backend="inductor", fullgraph=True), *args(qa, qb))
    torch.testing.assert_close(out, gemm_reference(qa, qb), rtol=1e-5, atol=1e-5)
    assert "ufp4.scaled_mm" in "\n".join(code)


@pytest.mark.parametrize("spec", SPECS)
def test_extern_choice_codegen(spec):
    """The dequantize + BLAS choice, forced on CPU: the generated code calls it, with the op's result."""
    qa, qb = operands(spec)
    with scaled_mm_lowering.force_choices("extern", allow_cpu=True):
        out, code = run_and_get_code(torch.compile(mm_fn(spec), backend="inductor"), *args(qa, qb))
    assert "extern_kernels.ufp4_dequant_mm" in "\n".join(code)
    torch.testing.assert_close(out, gemm_reference(qa, qb), rtol=1e-5, atol=1e-5)


NATIVE_PAIRS = [("e2m1/32/e8m0/nearest", "e2m1/32/e8m0/nearest"), ("int4/32/e8m0/nearest", "int4/32/e8m0/nearest"),
                ("e2m1/16/e4m3/nearest", "e2m1/16x16/e4m3/nearest")]


@pytest.mark.parametrize("a_spec, b_spec", NATIVE_PAIRS)
def test_native_choice_codegen_for_a_faked_sm100(a_spec, b_spec):
    """The native choice, planned for sm_100 and run on CPU (the kernel in the interpreter, dot_scaled
    emulated): the generated code calls it, and its result is the reference up to accumulation order."""
    gen = torch.Generator().manual_seed(2)
    qa = quantize(torch.randn(40, 96, generator=gen), 1, a_spec)
    qb = quantize(torch.randn(48, 96, generator=gen), 1, b_spec)

    def fn(ac, asc, ats, bc, bsc, bts):
        return torch.ops.ufp4.scaled_mm(ac, asc, ats, bc, bsc, bts, a_spec, b_spec, "bf16", torch.float32)

    with scaled_mm_lowering.force_choices("native", allow_cpu=True, target="sm_100"):
        out, code = run_and_get_code(torch.compile(fn, backend="inductor"), *args(qa, qb))
    assert "extern_kernels.ufp4_native_mm" in "\n".join(code)
    bound = 96 * 2.0**-23 * (dequantize(qa).abs() @ dequantize(qb).abs().t())
    torch.testing.assert_close(out, gemm_reference(qa, qb), rtol=0, atol=float(bound.max()))


def test_native_choice_is_not_offered_for_sm90():
    qa, qb = operands("e2m1/32/e8m0/nearest")
    with scaled_mm_lowering.force_choices("native", allow_cpu=True, target="sm_90"):
        out, code = run_and_get_code(torch.compile(mm_fn("e2m1/32/e8m0/nearest"), backend="inductor"),
                                     *args(qa, qb))
    text = "\n".join(code)
    assert "ufp4_native_mm" not in text and "ufp4.scaled_mm" in text  # no choice: the op's own fallback
    torch.testing.assert_close(out, gemm_reference(qa, qb), rtol=1e-5, atol=1e-5)


def test_register_is_idempotent():
    lowering.register()
    lowering.register()
    from torch._inductor.lowering import lowerings

    assert torch.ops.ufp4.scaled_mm.default in lowerings


def test_force_choices_rejects_unknown_names():
    with pytest.raises(ValueError, match="valid values"):
        with scaled_mm_lowering.force_choices("cublas"):
            pass


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("choice", ["template", "blockscale", "extern"])
def test_gpu_choices_match_reference(spec, choice):
    qa, qb = operands(spec, 256, 384, 512, device="cuda")
    ref = gemm_reference(qa, qb)
    if choice == "blockscale" and "fp32" in spec:
        pytest.skip("FP32 block scales with bf16 compute: the per-block path is not the reference")
    with scaled_mm_lowering.force_choices(choice):
        out, code = run_and_get_code(torch.compile(mm_fn(spec), backend="inductor"), *args(qa, qb))
    text = "\n".join(code)
    assert ("extern_kernels.ufp4_dequant_mm" in text) == (choice == "extern")
    assert ((out.double() - ref.double()).norm() / ref.double().norm()).item() <= 1e-5


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("a_spec, b_spec", NATIVE_PAIRS)
def test_gpu_native_choice_where_dispatch_offers_it(a_spec, b_spec):
    from ufp4_compile.dispatch import GemmPath, current_target, gemm_paths
    from ufp4_compile.numerics.formats import OperandFormat

    target = current_target()
    if gemm_paths(OperandFormat.from_spec(a_spec), OperandFormat.from_spec(b_spec), "bf16", target)[0].path \
            is not GemmPath.NATIVE:
        pytest.skip(f"{target}: the dispatch offers no native path for {a_spec} x {b_spec}")
    gen = torch.Generator().manual_seed(3)
    qa = quantize(torch.randn(256, 512, generator=gen).cuda(), 1, a_spec)
    qb = quantize(torch.randn(384, 512, generator=gen).cuda(), 1, b_spec)

    def fn(ac, asc, ats, bc, bsc, bts):
        return torch.ops.ufp4.scaled_mm(ac, asc, ats, bc, bsc, bts, a_spec, b_spec, "bf16", torch.float32)

    with scaled_mm_lowering.force_choices("native"):
        out, code = run_and_get_code(torch.compile(fn, backend="inductor"), *args(qa, qb))
    assert "extern_kernels.ufp4_native_mm" in "\n".join(code)
    bound = 512 * 2.0**-23 * (dequantize(qa).abs() @ dequantize(qb).abs().t())
    torch.testing.assert_close(out, gemm_reference(qa, qb), rtol=0, atol=float(bound.max()))


@gpu
@pytest.mark.gpu
def test_gpu_default_is_the_extern_choice():
    """Without max_autotune the lowering takes dequantize + cuBLAS (the measured fastest) unbenchmarked."""
    qa, qb = operands("int4/16/fp32/nearest", 256, 256, 512, device="cuda")
    out, code = run_and_get_code(torch.compile(mm_fn("int4/16/fp32/nearest"), backend="inductor"), *args(qa, qb))
    assert "extern_kernels.ufp4_dequant_mm" in "\n".join(code)
    torch.testing.assert_close(out, gemm_reference(qa, qb), rtol=1e-5, atol=1e-3)


@gpu
@pytest.mark.gpu
def test_gpu_autotune_offers_every_choice():
    qa, qb = operands("e2m1/32/e8m0/nearest", 512, 512, 1024, device="cuda")
    with torch._inductor.config.patch(max_autotune=True):
        out = torch.compile(mm_fn("e2m1/32/e8m0/nearest"), backend="inductor")(*args(qa, qb))
    torch.testing.assert_close(out, gemm_reference(qa, qb), rtol=1e-5, atol=1e-3)


@gpu
@pytest.mark.gpu
def test_gpu_template_fuses_bias_and_gelu():
    """scaled_mm -> + bias -> GELU -> bf16: one Triton kernel (the template) carries the epilogue."""
    spec = "int4/16/e4m3/nearest"
    qa, qb = operands(spec, 256, 512, 512, device="cuda")
    bias = torch.randn(512, device="cuda")

    def fn(ac, asc, ats, bc, bsc, bts, bias):
        y = torch.ops.ufp4.scaled_mm(ac, asc, ats, bc, bsc, bts, spec, spec, "bf16", torch.float32)
        return torch.nn.functional.gelu(y + bias).to(torch.bfloat16)

    with scaled_mm_lowering.force_choices("template"):
        out, code = run_and_get_code(torch.compile(fn), *args(qa, qb), bias)
    text = "\n".join(code)
    kernels = [k for k in text.split("@triton.jit") if "mm_main_loop(" in k and "def triton" in k]
    assert kernels, "no ufp4 template kernel in the generated code"
    assert any("erf" in k and "tl.store" in k for k in kernels), "GELU not fused into the template"
    ref = torch.nn.functional.gelu(gemm_reference(qa, qb) + bias).to(torch.bfloat16)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["ufp4", "nvfp4"])
def test_backend_linear_bias_gelu_fuses_into_template(recipe):
    """Linear -> bias -> GELU through ``backend="ufp4"`` on the codes path (``dense_gemms=False``; Hopper's
    default makes the GEMM a dense one before any scaled_mm is lowered): the ufp4 template kernel carries the
    epilogue."""
    from ufp4_compile.backend import make_backend

    model = torch.nn.Sequential(torch.nn.Linear(512, 768), torch.nn.GELU()).cuda()
    x = torch.randn(256, 512, device="cuda")
    backend = make_backend({"recipe": recipe, "dense_gemms": False})
    with torch.no_grad(), scaled_mm_lowering.force_choices("template"):
        out, code = run_and_get_code(torch.compile(model, backend=backend), x)
    text = "\n".join(code)
    kernels = [k for k in text.split("@triton.jit") if "mm_main_loop(" in k and "def triton" in k]
    assert kernels, "no ufp4 template kernel in the generated code"
    assert any("erf" in k for k in kernels), "bias + GELU not fused into the ufp4 template"
    ref = model(x)
    assert ((out - ref).norm() / ref.norm()).item() < 0.2  # 4-bit quantization error, not a bug-sized one


def test_register_replaces_a_fallback_installed_by_an_earlier_compile():
    """Inductor installs a generic fallback for an op it meets without a lowering; register() must win."""
    from torch._inductor.lowering import lowerings, make_fallback

    op = torch.ops.ufp4.scaled_mm.default
    make_fallback(op, warn=False)  # what a CPU compile before register() leaves behind
    assert lowerings[op].__name__ != "lower_scaled_mm"
    lowering._registered = False
    lowering.register()
    spec = SPECS[0]
    qa, qb = operands(spec)
    with scaled_mm_lowering.force_choices("extern", allow_cpu=True):
        _, code = run_and_get_code(torch.compile(mm_fn(spec), backend="inductor"), *args(qa, qb))
    assert "extern_kernels.ufp4_dequant_mm" in "\n".join(code)
