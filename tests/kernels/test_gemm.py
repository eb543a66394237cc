"""The block-scaled GEMM kernel against an FP64 GEMM of the same dequantized-and-rounded operands.

Every main loop the lowering may choose (``mode_allowed``) for every operand pair of the presets, with
operands laid out as Fprop (both K-contiguous), Dgrad (b a transposed view) and Wgrad (both transposed).
"""

from __future__ import annotations

import pytest
import torch

from ufp4_compile import recipes
from ufp4_compile.numerics.formats import OperandFormat
from ufp4_compile.numerics.quantize import _values_times_scales, quantize

gemm = pytest.importorskip("ufp4_compile.kernels.gemm")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
COMPUTE = {"bf16": torch.bfloat16, "fp32": torch.float32}
# FP32 accumulation of K products in another order: far below 1e-5 relative for these sizes.
REL_TOL = 1e-5


def preset_pairs() -> list[tuple[str, str]]:
    pairs = set()
    for recipe in recipes.PRESETS.values():
        for role in recipe.quantized_roles:
            g = recipe.gemm(role)
            pairs.add((g.a.spec.replace("stochastic", "nearest"), g.b.spec.replace("stochastic", "nearest")))
    return sorted(pairs)


def choices(a_spec: str, b_spec: str):
    a, b = OperandFormat.from_spec(a_spec), OperandFormat.from_spec(b_spec)
    for compute in ("bf16", "fp32"):
        for mode in (gemm.MODE_DEQUANT, gemm.MODE_BLOCKSCALE):
            for dot in ("bf16", "fp32", "fp8"):
                if gemm.mode_allowed(mode, dot, a, b, compute):
                    yield compute, mode, dot


def operands(a_spec, b_spec, M, N, K, layout, seed=0):
    """Quantized (a, b) as the GEMM sees them (quantized along K), laid out per role."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=gen) * torch.exp(torch.randn(M, 1, generator=gen))
    w = torch.randn(N, K, generator=gen)
    if layout == "fprop":
        return quantize(x.to(DEVICE), 1, a_spec), quantize(w.to(DEVICE), 1, b_spec)
    qb = quantize(w.t().contiguous().to(DEVICE), 0, b_spec).t()  # codes (N, K/2) with strides (1, N)
    if layout == "dgrad":
        return quantize(x.to(DEVICE), 1, a_spec), qb
    return quantize(x.t().contiguous().to(DEVICE), 0, a_spec).t(), qb


def reference64(qa, qb, compute):
    a = _values_times_scales(qa).to(COMPUTE[compute]).double()
    b = _values_times_scales(qb).to(COMPUTE[compute]).double()
    return (a @ b.t()) * (qa.tensor_scale.double() * qb.tensor_scale.double())


def run(qa, qb, compute, mode, dot, out_dtype=torch.float32, **kw):
    return gemm.scaled_mm(qa.codes, qa.scales, qa.tensor_scale, qb.codes, qb.scales, qb.tensor_scale,
                          qa.fmt.spec, qb.fmt.spec, compute, out_dtype, mode=mode, dot=dot, **kw)


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def _cases():
    for a_spec, b_spec in preset_pairs():
        for compute, mode, dot in choices(a_spec, b_spec):
            yield pytest.param(a_spec, b_spec, compute, mode, dot, id=f"{a_spec}x{b_spec}-{compute}-m{mode}-{dot}")


@pytest.mark.parametrize("a_spec, b_spec, compute, mode, dot", list(_cases()))
def test_gemm_matches_fp64_reference(a_spec, b_spec, compute, mode, dot):
    K = 96 if "/32/" in a_spec else 80  # 80: a K tile that is not a multiple of BLOCK_K (masked)
    layouts = ("fprop", "dgrad", "wgrad") if mode == gemm.MODE_DEQUANT and dot == "bf16" else ("dgrad",)
    for layout in layouts:
        qa, qb = operands(a_spec, b_spec, 48, 32, K, layout)
        ref = reference64(qa, qb, compute)
        out = run(qa, qb, compute, mode, dot)
        assert out.shape == (48, 32) and out.dtype == torch.float32
        assert rel_err(out, ref) <= REL_TOL, layout


def test_bf16_output_and_odd_shapes():
    qa, qb = operands("int4/16/e4m3/nearest", "int4/16/e4m3/nearest", 17, 23, 32, "fprop")
    out = run(qa, qb, "bf16", gemm.MODE_DEQUANT, "bf16", out_dtype=torch.bfloat16)
    ref = reference64(qa, qb, "bf16")
    torch.testing.assert_close(out, ref.to(torch.bfloat16), rtol=2**-8, atol=1e-6)


def test_non_finite_scales_propagate():
    qa, qb = operands("e2m1/32/e8m0/nearest", "e2m1/32/e8m0/nearest", 16, 16, 64, "fprop")
    qa.scales[3, 1] = 255  # NaN scale: row 3 of C becomes NaN
    out = run(qa, qb, "bf16", gemm.MODE_DEQUANT, "bf16")
    assert out[3].isnan().all() and not out[[0, 1, 2, 4]].isnan().any()


def test_contract_violations_are_value_errors():
    qa, qb = operands("int4/16/fp32/nearest", "int4/16/fp32/nearest", 16, 16, 32, "fprop")
    with pytest.raises(ValueError, match="exactness contract"):
        run(qa, qb, "bf16", gemm.MODE_BLOCKSCALE, "bf16")  # FP32 scales: not the bf16 reference
    with pytest.raises(ValueError, match="reduction lengths differ"):
        gemm.scaled_mm(qa.codes, qa.scales, qa.tensor_scale, qb.codes[:, :8], qb.scales[:, :1],
                       qb.tensor_scale, qa.fmt.spec, qb.fmt.spec)
    with pytest.raises(ValueError, match="compute_dtype"):
        run(qa, qb, "fp16", gemm.MODE_DEQUANT, None)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("a_spec, b_spec", preset_pairs())
@pytest.mark.parametrize("layout", ["fprop", "dgrad", "wgrad"])
def test_gemm_real_shapes(a_spec, b_spec, layout):
    qa, qb = operands(a_spec, b_spec, 1024, 768, 2048, layout)
    for compute, mode, dot in choices(a_spec, b_spec):
        ref = reference64(qa, qb, compute)
        assert rel_err(run(qa, qb, compute, mode, dot), ref) <= REL_TOL, (compute, mode, dot)
