"""The torch.ops.ufp4 custom ops: schemas as documented, fake shapes, reference = numerics, opcheck."""

import importlib
import re
from pathlib import Path

import pytest
import torch

from ufp4_compile import numerics, ops
from ufp4_compile.numerics.formats import OperandFormat

DOCS = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"
FORMATS = ["int4/16/fp32/nearest", "int4/16/e4m3/stochastic", "e2m1/16x16/e4m3/nearest", "e2m1/32/e8m0/stochastic",
           "e2m1/32/e8m0-floor/nearest"]


def documented_schemas() -> dict[str, str]:
    rows = re.findall(r"^\| `ufp4::(\w+)` \| `([^`]+)` \|", DOCS.read_text(), flags=re.M)
    return dict(rows)


def test_schemas_match_docs():
    documented = documented_schemas()
    assert set(documented) == {"quantize", "dequantize", "scaled_mm"}
    for name, schema in documented.items():
        actual = str(getattr(torch.ops.ufp4, name).default._schema)
        assert actual == f"ufp4::{name}{schema}"


def test_registration_is_idempotent():
    before = torch.ops.ufp4.quantize.default
    importlib.reload(ops)
    ops.register()
    assert torch.ops.ufp4.quantize.default is before


@pytest.mark.parametrize("spec", FORMATS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_quantize_matches_numerics_and_fake(spec, axis):
    torch.manual_seed(0)
    x = torch.randn(32, 64) * 3
    fmt = OperandFormat.from_spec(spec)
    seed = torch.tensor(1234, dtype=torch.int64)
    codes, scales, tensor_scale = torch.ops.ufp4.quantize(x, axis, spec, 16, 7, seed, 5 << 32)
    ref = numerics.quantize(x, axis, fmt, rht=16, rht_seed=7, seed=seed, offset=5 << 32)
    torch.testing.assert_close(codes, ref.codes, rtol=0, atol=0)
    assert scales.dtype == ref.scales.dtype and torch.equal(scales.view(torch.uint8), ref.scales.view(torch.uint8))
    torch.testing.assert_close(tensor_scale, ref.tensor_scale, rtol=0, atol=0)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = torch.ops.ufp4.quantize(mode.from_tensor(x), axis, spec, 16, 7, mode.from_tensor(seed), 0)
    for real, f in zip((codes, scales, tensor_scale), fake):
        assert (f.shape, f.dtype) == (real.shape, real.dtype)


def test_fake_rejects_misaligned_axis():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        with pytest.raises(ValueError, match="not a multiple of the block 16"):
            torch.ops.ufp4.quantize(torch.empty(8, 40), 1, "int4/16/fp32/nearest", 0, 0, None, 0)


def test_fake_handles_symbolic_shapes():
    from torch.fx.experimental.proxy_tensor import make_fx

    def fn(x):
        codes, scales, _ = torch.ops.ufp4.quantize(x, 0, "int4/16/fp32/nearest", 0, 0, None, 0)
        return codes, scales

    gm = make_fx(fn, tracing_mode="symbolic")(torch.randn(32, 48))
    node = next(n for n in gm.graph.nodes if n.target is torch.ops.ufp4.quantize.default)
    codes, scales, _ = node.meta["val"]
    assert isinstance(codes.shape[0], torch.SymInt) and isinstance(scales.shape[0], torch.SymInt)


def test_dequantize_matches_numerics():
    x = torch.randn(16, 64)
    spec = "e2m1/16/e4m3/nearest"
    codes, scales, ts = torch.ops.ufp4.quantize(x, 0, spec, 0, 0, None, 0)
    out = torch.ops.ufp4.dequantize(codes, scales, ts, 0, spec, torch.bfloat16)
    ref = numerics.dequantize(numerics.quantize(x, 0, OperandFormat.from_spec(spec)), torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("compute", ["bf16", "fp32"])
def test_scaled_mm_of_transposed_views_matches_gemm_reference(compute):
    """Dgrad-style operand: W quantized along axis 0, passed as transposed codes and scales."""
    torch.manual_seed(1)
    dy, w = torch.randn(24, 48), torch.randn(48, 32)
    a_spec, b_spec = "int4/16/fp32/stochastic", "int4/16/fp32/nearest"
    seed = torch.tensor(3, dtype=torch.int64)
    qa = torch.ops.ufp4.quantize(dy, 1, a_spec, 16, 0, seed, 0)
    wc, ws, wt = torch.ops.ufp4.quantize(w, 0, b_spec, 16, 0, None, 0)
    out = torch.ops.ufp4.scaled_mm(*qa, wc.t(), ws.t(), wt, a_spec, b_spec, compute, torch.float32)
    ref_a = numerics.quantize(dy, 1, OperandFormat.from_spec(a_spec), rht=16, seed=seed)
    ref_b = numerics.quantize(w, 0, OperandFormat.from_spec(b_spec), rht=16).t()
    ref = numerics.gemm_reference(ref_a, ref_b, ops.compute_dtype_of(compute))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert out.shape == (24, 32)


def test_scaled_mm_rejects_mismatched_reduction():
    a = torch.ops.ufp4.quantize(torch.randn(8, 32), 1, "int4/16/fp32/nearest", 0, 0, None, 0)
    b = torch.ops.ufp4.quantize(torch.randn(8, 64), 1, "int4/16/fp32/nearest", 0, 0, None, 0)
    with pytest.raises(ValueError, match="reduction lengths differ"):
        torch.ops.ufp4.scaled_mm(*a, *b, "int4/16/fp32/nearest", "int4/16/fp32/nearest", "bf16", torch.float32)


def test_compute_dtype_names():
    assert ops.compute_dtype_of("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="valid values"):
        ops.compute_dtype_of("fp16")


def test_opcheck():
    # opcheck's schema test cannot handle fp8 outputs on CPU: FP32-scale formats here, all utils.
    x = torch.randn(16, 32)
    spec = "int4/16/fp32/stochastic"
    seed = torch.tensor(9, dtype=torch.int64)
    torch.library.opcheck(torch.ops.ufp4.quantize.default, (x, 1, spec, 16, 0, seed, 0))
    q = torch.ops.ufp4.quantize(x, 1, spec, 16, 0, seed, 0)
    torch.library.opcheck(torch.ops.ufp4.dequantize.default, (*q, 1, spec, torch.float32))
    torch.library.opcheck(torch.ops.ufp4.scaled_mm.default, (*q, *q, spec, spec, "bf16", torch.float32))
