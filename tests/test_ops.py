"""The torch.ops.ufp4 custom ops: schemas as documented, fake shapes, reference = numerics, opcheck."""

import contextlib
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
    assert set(documented) == {"quantize", "dequantize", "scaled_mm", "round_to_bf16", "sample_median"}
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


@pytest.mark.parametrize("spec", ["int4/16/fp32/nearest", "e2m1/32/e8m0/stochastic"])
def test_partial_last_block(spec):
    """An axis of 40 (block 16 or 32): codes and scales cover whole blocks (48 or 64 elements), the fake
    agrees; quantize_dequantize returns the 40 elements, dequantize of codes the whole blocks."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, seed = torch.randn(8, 40), torch.tensor(5, dtype=torch.int64)
    fmt = OperandFormat.from_spec(spec)
    padded = -(-40 // fmt.block) * fmt.block
    codes, scales, ts = torch.ops.ufp4.quantize(x, 1, spec, 16, 3, seed, 0)
    assert codes.shape == (8, padded // 2) and scales.shape == (8, padded // fmt.block)
    ref = numerics.quantize(x, 1, fmt, rht=16, rht_seed=3, seed=seed)
    assert torch.equal(codes, ref.codes)
    with FakeTensorMode() as mode:
        fake = torch.ops.ufp4.quantize(mode.from_tensor(x), 1, spec, 16, 3, mode.from_tensor(seed), 0)
    assert [f.shape for f in fake] == [codes.shape, scales.shape, ts.shape]
    values, _ = torch.ops.ufp4.quantize_dequantize(x, 1, spec, 16, 3, seed, 0, torch.float32)
    assert values.shape == x.shape
    whole = torch.ops.ufp4.dequantize(codes, scales, ts, 1, spec, torch.float32)
    assert whole.shape == (8, padded) and torch.equal(whole[:, :40], numerics.dequantize(ref))
    assert not whole[:, 40:].any()  # the padding dequantizes to zeros


def test_fake_of_a_symbolic_partial_length():
    from torch.fx.experimental.proxy_tensor import make_fx

    def fn(x):
        codes, scales, _ = torch.ops.ufp4.quantize(x, 0, "int4/16/fp32/nearest", 0, 0, None, 0)
        return codes, scales

    gm = make_fx(fn, tracing_mode="symbolic")(torch.randn(37, 48))
    codes, scales = gm(torch.randn(21, 48))  # one trace, another token count
    assert codes.shape == (16, 48) and scales.shape == (2, 48)


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


# ---- empty tensors and inputs that do not fit the format --------------------------------------------------

def test_empty_tensors_through_every_op_and_fake():
    """A batch with no tokens (an MoE expert that received none): every op and its fake work."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    spec, nv = "int4/16/fp32/nearest", "e2m1/16/e4m3/nearest"

    def run(x, w):
        qx = torch.ops.ufp4.quantize(x, 1, spec, 16, 0, None, 0)
        qw = torch.ops.ufp4.quantize(w, 1, spec, 16, 0, None, 0)
        qt = torch.ops.ufp4.quantize(x, 0, nv, 16, 0, None, 0)  # Wgrad's operand: along the 0 tokens
        values, _ = torch.ops.ufp4.quantize_dequantize(x, 1, nv, 0, 0, None, 0, torch.bfloat16)
        return (torch.ops.ufp4.scaled_mm(*qx, *qw, spec, spec, "bf16", torch.float32),
                torch.ops.ufp4.dequantize(*qx, 1, spec, torch.float32), qt[0], qt[1], values)

    x, w = torch.empty(0, 32), torch.randn(8, 32)
    real = run(x, w)
    assert [t.shape for t in real] == [(0, 8), (0, 32), (0, 32), (0, 32), (0, 32)]
    with FakeTensorMode() as mode:
        fake = run(mode.from_tensor(x), mode.from_tensor(w))
    assert [f.shape for f in fake] == [t.shape for t in real]
    qa = torch.ops.ufp4.quantize(torch.empty(0, 4), 0, spec, 0, 0, None, 0)
    qb = torch.ops.ufp4.quantize(torch.empty(0, 3), 0, spec, 0, 0, None, 0)
    out = torch.ops.ufp4.scaled_mm(qa[0].t(), qa[1].t(), qa[2], qb[0].t(), qb[1].t(), qb[2], spec, spec, "bf16",
                                   torch.float32)
    assert torch.equal(out, torch.zeros(4, 3))  # an empty reduction (Wgrad over 0 tokens)


def _operands():
    spec = "int4/16/fp32/nearest"
    a = torch.ops.ufp4.quantize(torch.randn(8, 32), 1, spec, 0, 0, None, 0)
    b = torch.ops.ufp4.quantize(torch.randn(4, 32), 1, spec, 0, 0, None, 0)
    return spec, a, b


def _assert_value_errors(op, cases, fake: bool) -> None:
    """Each ``(args, match)`` raises a ValueError matching ``match``, in eager or under fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
                op(*args)


@pytest.mark.parametrize("fake", [False, True])
def test_scaled_mm_checks_operands_against_their_formats(fake):
    """int4/FP32 codes declared as 'e2m1/16/e4m3/nearest' gave a result 77% off without a word."""
    spec, a, b = _operands()
    (ac, as_, ats), (bc, bs, bts) = a, b
    cases = [
        ((ac, as_, ats, bc, bs, bts, "e2m1/16/e4m3/nearest", spec, "bf16", torch.float32),
         r"a_scales.dtype=torch.float32 does not match the format 'e2m1/16/e4m3/nearest'; valid values: "
         r"torch.float8_e4m3fn"),
        ((ac, as_, ats, bc, bs, bts, spec, "int4/32/fp32/nearest", "bf16", torch.float32),
         r"b_scales has shape \(4, 2\), expected \(4, 1\)"),
        ((ac, as_[:, :1], ats, bc, bs, bts, spec, spec, "bf16", torch.float32), r"a_scales has shape \(8, 1\)"),
        ((ac.view(torch.int8), as_, ats, bc, bs, bts, spec, spec, "bf16", torch.float32),
         r"a_codes.dtype=torch.int8 is not valid; valid values: torch.uint8"),
        ((ac, as_, ats.reshape(1), bc, bs, bts, spec, spec, "bf16", torch.float32),
         r"a_tensor_scale must be a 0-d torch.float32 tensor"),
        ((ac, as_, ats, bc, bs, bts, spec, spec, "bf16", torch.int32),
         r"out_dtype=torch.int32 is not valid; valid values: torch.float32"),
        ((ac, as_, ats, bc, bs, bts, spec, spec, "fp16", torch.float32), r"compute_dtype='fp16' is not valid"),
    ]
    _assert_value_errors(torch.ops.ufp4.scaled_mm, cases, fake)


@pytest.mark.parametrize("fake", [False, True])
def test_dequantize_checks_axis_scales_and_dtype(fake):
    spec, (codes, scales, ts), _ = _operands()
    cases = [
        ((codes, scales, ts, 7, spec, torch.float32), r"axis=7 is not valid for a 2-d tensor; valid values: -2..1"),
        ((codes, scales, ts, 0, spec, torch.float32), r"scales has shape \(8, 2\), expected \(1, 16\)"),
        ((codes, scales.to(torch.float8_e4m3fn), ts, 1, spec, torch.float32), r"scales.dtype=torch.float8_e4m3fn"),
        ((codes, scales, ts, 1, spec, torch.int64), r"dtype=torch.int64 is not valid"),
    ]
    _assert_value_errors(torch.ops.ufp4.dequantize, cases, fake)


def test_round_to_bf16_takes_fp32_only():
    x = torch.tensor([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, float("nan")])
    out = torch.ops.ufp4.round_to_bf16(x)
    assert out.dtype == torch.bfloat16 and out[:2].tolist() == [1.0, 1.015625] and out[2].isnan()
    with pytest.raises(ValueError, match=r"x\.dtype=torch\.bfloat16.*valid: torch\.float32"):
        torch.ops.ufp4.round_to_bf16(x.to(torch.bfloat16))


def test_sample_median_is_the_reference_and_fakes_its_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(40, 6).bfloat16()
    x[3, 2] = float("nan")
    mu = torch.ops.ufp4.sample_median(x)
    assert torch.equal(mu, numerics.sample_median(x)) and mu.shape == (1, 6) and mu.dtype == torch.float32
    with FakeTensorMode() as mode:
        fake = torch.ops.ufp4.sample_median(mode.from_tensor(torch.zeros(7, 3, 5)))
    assert fake.shape == (1, 3, 5) and fake.dtype == torch.float32
    with pytest.raises(ValueError, match="x.dtype=torch.int32"):
        torch.ops.ufp4.sample_median(torch.zeros(4, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="token dimension"):
        torch.ops.ufp4.sample_median(torch.tensor(1.0))
