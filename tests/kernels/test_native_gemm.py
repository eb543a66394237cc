"""The dot_scaled GEMM kernels against numerics.gemm_reference.

Without a GPU the kernel runs in the Triton interpreter with ``emulate_dot=True`` (the interpreter has no
``tl.dot_scaled``): that checks addressing, masking, the INT4 -> E4M3 conversion and the epilogue, with
dot_scaled replaced by a decode + tl.dot of the operands it would receive. The ``gpu`` tests run the real
``tl.dot_scaled``: natively on sm_100 / gfx950, through Triton's bf16 upcast on sm_90 (E8M0 scales only).
"""

import dataclasses

import pytest
import torch

triton = pytest.importorskip("triton", reason="the native GEMM kernels need triton")

from ufp4_compile.dispatch import current_target  # noqa: E402
from ufp4_compile.kernels.native_gemm import (  # noqa: E402
    NATIVE_HELPERS, NativeConfig, native_operand, native_scaled_mm)
from ufp4_compile.numerics import OperandFormat, dequantize, gemm_reference, quantize  # noqa: E402

MXFP4 = OperandFormat.from_spec("e2m1/32/e8m0/nearest")
INT4_MX = OperandFormat.from_spec("int4/32/e8m0/nearest")
NVFP4 = OperandFormat.from_spec("e2m1/16/e4m3/nearest")
NVFP4_W = OperandFormat.from_spec("e2m1/16x16/e4m3/nearest")
SMALL = NativeConfig(block_m=32, block_n=32, block_k=64, group_m=2, num_stages=1)
HAS_GPU = torch.cuda.is_available()


def _operands(m, n, k, a_fmt, b_fmt, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * torch.logspace(-3, 3, k)  # wide dynamic range across blocks
    w = torch.randn(n, k, generator=gen)
    x[0, :32] = 0.0  # an all-zero block: scale 0 (E8M0 stores 2^-127), codes 0
    return quantize(x.to(device), 1, a_fmt), quantize(w.to(device), 1, b_fmt)


def assert_matches_reference(out, a, b):
    """Equal to gemm_reference up to FP32 accumulation order: |error| <= K * 2^-23 * (|A| |B|^T)."""
    k = a.shape[1]
    bound = k * 2.0**-23 * (dequantize(a).abs() @ dequantize(b).abs().t())
    expected = gemm_reference(a, b)
    torch.testing.assert_close(out, expected, rtol=0, atol=float(bound.max()))


def _run(a, b, emulate, config=SMALL, out_dtype=torch.float32):
    return native_scaled_mm(a.codes, a.scales, a.tensor_scale, b.codes, b.scales, b.tensor_scale, a.fmt, b.fmt,
                            out_dtype=out_dtype, config=config, emulate_dot=emulate)


# (M, N, K): tiles that wrap in M and N (N a multiple of 16 for 16x16 weight blocks), K not a multiple of
# BLOCK_K (the masked tail).
SHAPES = [(40, 80, 96), (33, 48, 64)]
PAIRS = [(MXFP4, MXFP4), (INT4_MX, INT4_MX), (MXFP4, INT4_MX), (NVFP4, NVFP4_W)]


@pytest.mark.skipif(HAS_GPU, reason="interpreter test; the gpu tests below cover a CUDA machine")
@pytest.mark.parametrize("a_fmt, b_fmt", PAIRS, ids=lambda f: f.spec)
@pytest.mark.parametrize("m, n, k", SHAPES)
def test_interpreter_matches_reference(a_fmt, b_fmt, m, n, k):
    a, b = _operands(m, n, k, a_fmt, b_fmt)
    assert_matches_reference(_run(a, b, emulate=True), a, b)


@pytest.mark.skipif(HAS_GPU, reason="interpreter test")
def test_interpreter_transposed_operands_and_bf16_out():
    # Wgrad-style operands: quantized along dim 0, passed as transposed views (non-unit K stride).
    gen = torch.Generator().manual_seed(1)
    dy, x = torch.randn(64, 24, generator=gen), torch.randn(64, 40, generator=gen)
    a, b = quantize(dy, 0, INT4_MX).t(), quantize(x, 0, MXFP4).t()
    assert a.codes.stride(1) != 1
    out = _run(a, b, emulate=True)
    assert_matches_reference(out, a, b)
    out_bf16 = _run(a, b, emulate=True, out_dtype=torch.bfloat16)
    assert out_bf16.dtype == torch.bfloat16
    # The store casts the FP32 result once. The interpreter truncates FP32 -> bf16 (compiled Triton rounds
    # to nearest even, checked in the gpu test), so here the bf16 result is within one bf16 ulp.
    torch.testing.assert_close(out_bf16.float(), out, rtol=2**-7, atol=0)


@pytest.mark.skipif(HAS_GPU, reason="interpreter test")
def test_interpreter_writes_into_out_with_the_default_cpu_config():
    a, b = _operands(40, 48, 64, MXFP4, INT4_MX)
    out = torch.full((40, 48), float("nan"))
    result = native_scaled_mm(a.codes, a.scales, a.tensor_scale, b.codes, b.scales, b.tensor_scale, a.fmt, b.fmt,
                              emulate_dot=True, out=out)
    assert result is out
    assert_matches_reference(out, a, b)
    with pytest.raises(ValueError, match=r"out must be an \(40, 48\) tensor"):
        native_scaled_mm(a.codes, a.scales, a.tensor_scale, b.codes, b.scales, b.tensor_scale, a.fmt, b.fmt,
                         emulate_dot=True, out=torch.empty(48, 40))


def test_helpers_are_listed_in_dependency_order():
    # A template appends these sources in order; each may call only helpers listed before it.
    import inspect
    import re

    names = [fn.__name__ for fn in NATIVE_HELPERS]
    assert names[-1] == "native_main_loop"
    for i, fn in enumerate(NATIVE_HELPERS):
        source = inspect.getsource(fn.fn)
        called = set(re.findall(r"\b(\w+)\(", source.split(":", 1)[1])) & set(names) - {fn.__name__}
        assert called <= set(names[:i]), (fn.__name__, called - set(names[:i]))


def test_native_operand_names_valid_formats():
    assert native_operand(MXFP4) == ("e2m1", 32)
    assert native_operand("int4/32/e8m0/stochastic") == ("e4m3", 32)
    assert native_operand(NVFP4_W) == ("e2m1", 16)
    for spec in ("int4/16/fp32/nearest", "int4/16/e4m3/nearest", "e2m1/16/e8m0/nearest"):
        with pytest.raises(ValueError, match="no native dot_scaled form; valid"):
            native_operand(spec)


def test_launcher_rejects_bad_operands():
    a, b = _operands(8, 8, 64, MXFP4, MXFP4)
    with pytest.raises(ValueError, match="a_scales must be torch.uint8"):
        native_scaled_mm(a.codes, a.scales.float(), a.tensor_scale, b.codes, b.scales, b.tensor_scale,
                         MXFP4, MXFP4)
    with pytest.raises(ValueError, match="same K"):
        native_scaled_mm(a.codes, a.scales, a.tensor_scale, b.codes[:, :16], b.scales, b.tensor_scale,
                         MXFP4, MXFP4)
    with pytest.raises(ValueError, match="emulate_dot=True"):
        native_scaled_mm(a.codes, a.scales, a.tensor_scale, b.codes, b.scales, b.tensor_scale, MXFP4, MXFP4)
    with pytest.raises(ValueError, match="one scale kind"):
        nv = quantize(torch.randn(8, 64), 1, NVFP4)
        native_scaled_mm(a.codes, a.scales, a.tensor_scale, nv.codes, nv.scales, nv.tensor_scale, MXFP4, NVFP4)


def _gpu_pairs():
    target = current_target() if HAS_GPU else None
    pairs = PAIRS[:3]
    if target is not None and target.backend == "cuda" and target.arch in (100, 103):
        pairs = PAIRS  # E4M3 scales lower only on sm_100 (Triton 3.6: not on sm_90, not on gfx950)
    return pairs


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA/ROCm GPU")
@pytest.mark.parametrize("a_fmt, b_fmt", _gpu_pairs(), ids=lambda f: f.spec)
@pytest.mark.parametrize("m, n, k", [(40, 80, 96), (257, 384, 1024)])
def test_gpu_dot_scaled_matches_reference(a_fmt, b_fmt, m, n, k):
    a, b = _operands(m, n, k, a_fmt, b_fmt, device="cuda")
    for config in (SMALL, NativeConfig()):
        cfg = dataclasses.replace(config, block_k=64) if k % config.block_k else config
        out = _run(a, b, emulate=False, config=cfg)
        assert_matches_reference(out, a, b)
        out_bf16 = _run(a, b, emulate=False, config=cfg, out_dtype=torch.bfloat16)
        torch.testing.assert_close(out_bf16, out.to(torch.bfloat16), rtol=0, atol=0)
