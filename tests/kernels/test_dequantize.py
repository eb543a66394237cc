"""The dequantize kernel against numerics.dequantize: identical values, any axis, transposed views."""

from __future__ import annotations

import pytest
import torch

from ufp4_compile.numerics.quantize import _values_times_scales, dequantize as dequantize_reference, quantize

kernels_dequantize = pytest.importorskip("ufp4_compile.kernels.dequantize")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPECS = ["int4/16/fp32/nearest", "e2m1/16/e4m3/nearest", "e2m1/32/e8m0/nearest", "int4/16x16/e4m3/nearest"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape, axis", [((48, 64), 1), ((64, 48), 0), ((2, 3, 64), -1), ((64, 3, 5), 0),
                                         ((2, 64, 3), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(spec, shape, axis, dtype):
    if "16x16" in spec and len(shape) != 2:
        pytest.skip("2-D blocks are for 2-D weights")
    q = quantize(torch.randn(shape).to(DEVICE), axis, spec)
    out = kernels_dequantize.dequantize(q.codes, q.scales, q.tensor_scale, axis, spec, dtype)
    torch.testing.assert_close(out, dequantize_reference(q, dtype), rtol=0, atol=0)
    no_ts = kernels_dequantize.dequantize(q.codes, q.scales, q.tensor_scale, axis, spec, dtype,
                                          apply_tensor_scale=False)
    torch.testing.assert_close(no_ts, _values_times_scales(q).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("spec", ["int4/16/fp32/nearest", "e2m1/32/e8m0/nearest"])
@pytest.mark.parametrize("shape, axis", [((40, 256), 1), ((256, 40), 0)])
@pytest.mark.parametrize("config", [dict(elements=256, max_l2=16, num_warps=1), dict(elements=1024, max_l2=128),
                                    dict(elements=8192, max_l2=128, num_warps=8)])
def test_any_tile_gives_the_same_values(spec, shape, axis, config):
    """The benchmarks' tile override: a tile other than the plan's (partial tiles at the edges included)."""
    q = quantize(torch.randn(shape).to(DEVICE), axis, spec)
    out = kernels_dequantize.dequantize(q.codes, q.scales, q.tensor_scale, axis, spec, torch.bfloat16,
                                        config=config)
    torch.testing.assert_close(out, dequantize_reference(q, torch.bfloat16), rtol=0, atol=0)


def test_bad_config_key_is_a_value_error():
    q = quantize(torch.randn(16, 32).to(DEVICE), 1, "int4/16/fp32/nearest")
    with pytest.raises(ValueError, match="unknown keys \\['B'\\]"):
        kernels_dequantize.dequantize(q.codes, q.scales, q.tensor_scale, 1, q.fmt, config={"B": 64})


def test_transposed_view():
    q = quantize(torch.randn(64, 48).to(DEVICE), 0, "int4/16/e4m3/nearest")
    qt = q.t()  # codes (48, 32) with strides (1, 48), quantized along dim 1
    out = kernels_dequantize.dequantize(qt.codes, qt.scales, qt.tensor_scale, qt.axis, qt.fmt)
    torch.testing.assert_close(out, dequantize_reference(q).t(), rtol=0, atol=0)


def test_bad_scales_shape_is_a_value_error():
    q = quantize(torch.randn(16, 32).to(DEVICE), 1, "int4/16/fp32/nearest")
    with pytest.raises(ValueError, match="scales has shape"):
        kernels_dequantize.dequantize(q.codes, q.scales[:, :1], q.tensor_scale, 1, q.fmt)


@pytest.mark.parametrize("spec", ["int4/16/fp32/nearest", "e2m1/16/e4m3/nearest", "e2m1/32/e8m0/nearest"])
@pytest.mark.parametrize("shape, axis", [((5, 20), 1), ((37, 6), 0), ((2, 7, 3), 1)])
def test_partial_blocks_and_length(spec, shape, axis):
    """Codes of a partial last block cover the whole block; ``length`` crops the padding."""
    x = torch.randn(shape).to(DEVICE)
    q = quantize(x, axis, spec)
    whole = kernels_dequantize.dequantize(q.codes, q.scales, q.tensor_scale, axis, spec)
    assert whole.shape[axis] == q.codes.shape[axis] * 2
    out = kernels_dequantize.dequantize(q.codes, q.scales, q.tensor_scale, axis, spec, length=shape[axis])
    assert out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out, dequantize_reference(q), rtol=0, atol=0)
    torch.testing.assert_close(whole.narrow(axis, 0, shape[axis]), out, rtol=0, atol=0)
    for bad in (whole.shape[axis] + 1, whole.shape[axis] - q.fmt.block):  # not in the last block
        with pytest.raises(ValueError, match=f"length={bad} is not valid"):
            kernels_dequantize.dequantize(q.codes, q.scales, q.tensor_scale, axis, spec, length=bad)


def test_empty_and_bad_axis():
    q = quantize(torch.zeros(0, 32).to(DEVICE), 1, "int4/16/fp32/nearest")
    assert kernels_dequantize.dequantize(q.codes, q.scales, q.tensor_scale, 1, q.fmt).shape == (0, 32)
    q = quantize(torch.randn(4, 32).to(DEVICE), 1, "int4/16/fp32/nearest")
    with pytest.raises(ValueError, match="axis=7 is not valid"):
        kernels_dequantize.dequantize(q.codes, q.scales, q.tensor_scale, 7, q.fmt)


@pytest.mark.parametrize("a, b", [
    (("int4/16/fp32/nearest", (48, 64), 0, torch.bfloat16), ("int4/16/fp32/nearest", (32, 64), 1, torch.bfloat16)),
    (("e2m1/16/e4m3/nearest", (2, 64, 3), 1, torch.float32), ("e2m1/32/e8m0/nearest", (40, 96), 1, torch.bfloat16)),
])
def test_pair_launch_matches_reference(a, b):
    """Two dequantizations of any codes and formats in one launch: each the reference's, bit for bit."""
    jobs, wanted = [], []
    for spec, shape, axis, dtype in (a, b):
        q = quantize(torch.randn(shape).to(DEVICE) * 3, axis, spec)
        jobs.append((q.codes, q.scales, q.tensor_scale, axis, spec, dtype))
        wanted.append(dequantize_reference(q, dtype))
    for got, want in zip(kernels_dequantize.dequantize_pair(jobs), wanted):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="two"):
        kernels_dequantize.dequantize_pair(jobs[:1])
    with pytest.raises(ValueError, match="axis"):
        kernels_dequantize.dequantize_pair([jobs[0], (*jobs[1][:3], 7, *jobs[1][4:])])
