"""``ufp4::sample_median`` (lowering/median.py): on CUDA the mean split's ``mu`` is one launch of our selection
kernel, reading the sampled tokens where they lie (a transposed view without a copy); elsewhere the op's own
implementation. What Inductor generates for CUDA is checked on CPU (testing/fake_cuda.py), in a subprocess
without Triton's interpreter (the lowering needs compiled-kernel objects); the kernel's bits are
tests/kernels/test_median.py's."""

from __future__ import annotations

import json
import re

import pytest
import torch

from ufp4_compile import ops

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
prims = torch.ops.prims


@pytest.fixture(autouse=True)
def _registered():
    from ufp4_compile import lowering

    lowering.register()


def _split(x):
    """The rewrite pass's split of an operand Inductor computes (a pointwise producer)."""
    y = x * 2
    mu = ops.sample_median(y)
    return mu, prims.convert_element_type.default(y, torch.float32) - mu


def _launches(code: str):
    """The wrapper's kernel launches and op calls, in order."""
    lines = (line.strip() for line in code.splitlines())
    return [line for line in lines if not line.startswith("#")
            and re.search(r"^\w+\.run\(|extern_kernels\.\w+\(|torch\.ops\.\w+\.\w+\.\w+\(", line)]


def _names(launches):
    """The kernels the launches run, without Inductor's numbering."""
    return [re.sub(r"_\d+$", "", line.split(".run(")[0]) for line in launches if ".run(" in line]


def _split_quantized(spec):
    """The mean split as the rewrite pass leaves it for a dense GEMM: ``mu``, then the residual's values with
    the quantize op subtracting ``mu`` (its shift) and ``mu``'s own values."""
    def f(x):
        y = x * 2
        mu = ops.sample_median(y)
        values, _ = ops.quantize_dequantize(y, 1, spec, 16, 5, None, 0, torch.bfloat16, mu)
        mu_values, _ = ops.quantize_dequantize(mu, 1, spec, 16, 5, None, 0, torch.bfloat16)
        return values, mu_values
    return f


def _split_linear_forward(x, w):
    """A split linear layer's forward quantizations as the rewrite pass leaves them (dense GEMMs): X's residual
    values (Fprop) and column-wise codes (Wgrad), mu's values, W's values and column-wise codes (Dgrad)."""
    spec = "int4/16/fp32/nearest"
    y = x * 2
    mu = ops.sample_median(y)
    xv, _ = ops.quantize_dequantize(y, 1, spec, 16, 5, None, 0, torch.bfloat16, mu)
    xc = ops.quantize(y, 0, spec, 16, 5, None, 1 << 32)
    muv, _ = ops.quantize_dequantize(mu, 1, spec, 16, 5, None, 0, torch.bfloat16)
    wv, _ = ops.quantize_dequantize(w, 1, spec, 16, 6, None, 0, torch.bfloat16)
    wc = ops.quantize(w, 0, spec, 16, 6, None, 1 << 32)
    return xv, *xc, muv, wv, *wc


def _split_linear_backward(dy, seed, cw, sw, tw, cx, sx, tx):
    """A split linear layer's backward: dY's residual values (Dgrad, stochastic) and column-wise values
    (Wgrad), mu's values, and the dequantizations of W's and X's saved codes."""
    spec, near = "int4/16/fp32/stochastic", "int4/16/fp32/nearest"
    g = dy * 2
    mu = ops.sample_median(g)
    dr, _ = ops.quantize_dequantize(g, 1, spec, 16, 7, seed, 0, torch.bfloat16, mu)
    dc, _ = ops.quantize_dequantize(g, 0, spec, 16, 7, seed, 1 << 32, torch.bfloat16)
    muv, _ = ops.quantize_dequantize(mu, 1, spec, 16, 7, seed, 1 << 33, torch.bfloat16)
    wv = torch.ops.ufp4.dequantize(cw, sw, tw, 0, near, torch.bfloat16)
    xv = torch.ops.ufp4.dequantize(cx, sx, tx, 0, near, torch.bfloat16)
    return dr, dc, muv, wv, xv


def _wrappers() -> dict:
    from ufp4_compile import lowering
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()
    return {
        "shifted": wrapper_code(_split_quantized("int4/16/fp32/nearest"), ((8192, 1024), torch.bfloat16)),
        "shifted_two_level": wrapper_code(_split_quantized("e2m1/16/e4m3/nearest"), ((8192, 1024), torch.bfloat16)),
        "split": wrapper_code(_split, ((8192, 1024), torch.bfloat16)),
        "split_forward": wrapper_code(_split_linear_forward, ((1024, 512), torch.bfloat16),
                                      ((768, 512), torch.bfloat16)),
        "split_backward": wrapper_code(_split_linear_backward, ((1024, 768), torch.bfloat16), ((), torch.int64),
                                       ((384, 512), torch.uint8), ((48, 512), torch.float32), ((), torch.float32),
                                       ((512, 512), torch.uint8), ((64, 512), torch.float32), ((), torch.float32)),
        "transposed": wrapper_code(lambda x: ops.sample_median(torch.ops.aten.permute.default(x, [1, 0])),
                                   ((1024, 4096), torch.bfloat16)),
        "3d": wrapper_code(lambda x: ops.sample_median(x), ((64, 3, 5), torch.bfloat16)),
        "float64": wrapper_code(lambda x: ops.sample_median(x), ((64, 8), torch.float64)),
    }


@pytest.fixture(scope="module")
def wrappers():
    from ufp4_compile.testing.fake_cuda import json_from_script

    return json_from_script(__file__)


def test_cuda_split_is_one_selection_launch(wrappers):
    code = wrappers["split"]
    launches = _launches(code)
    selections = [line for line in launches if line.startswith("_sample_median_kernel")]
    assert len(selections) == 1, launches
    assert "nanmedian" not in code and "sample_median.default(" not in code
    # reads the producer's buffer: 1024 channels with strides (1024, 1), every 17th of 8192 tokens (482);
    # the grid's three dimensions (Inductor's launcher of a user kernel takes all three)
    # (no quantization: its five pointers None, its offset and RHT key 0)
    assert re.search(r"_sample_median_kernel_\d+\.run\(buf\d+, buf\d+, 1024, 1024, 1, 17, 482, -1, -1, -1, -1, -1, "
                     r"0, 0, 64, 1, 1, stream", selections[0])
    assert len(launches) == 3, launches  # producer, selection, residual


def test_split_forward_reads_x_once_for_both_axes(wrappers):
    """A split X's residual values (the kernel subtracts mu) and its column-wise codes share the dual launch,
    with W's two in the two-duals launch: one read of X and of W, as without the split; the selection launch
    quantizes mu: two launches a split."""
    launches = _launches(wrappers["split_forward"])
    assert _names(launches) == ["triton_poi_fused", "_sample_median_kernel", "_quantize_two_duals_kernel"], launches
    selection = re.match(r"_sample_median_kernel_\d+\.run\(\w+, (buf\d+), .*, -1, -1, (buf\d+), -1, -1, 0, ",
                         launches[1])
    assert selection, launches[1]  # mu, and mu's values (no tensor scale: nobody reads it)
    assert re.search(rf"\b{selection.group(1)}\b", launches[2])  # the row-wise job's shift


def test_split_backward_reads_dy_once_beside_the_dequantizations(wrappers):
    """A split dY's residual values (Dgrad) and column-wise values (Wgrad) share the dual launch with the two
    dequantizations of the saved codes, and the selection quantizes mu (stochastic rounding: the seed and
    offset of mu's quantize node): the layer's backward launches as without the split, plus the selection."""
    launches = _launches(wrappers["split_backward"])
    assert _names(launches) == ["triton_poi_fused", "_sample_median_kernel", "_quantize_dual_dequantize_kernel"], \
        launches
    selection = re.match(rf"_sample_median_kernel_\d+\.run\(\w+, (buf\d+), .*, -1, -1, buf\d+, -1, seed_1, "
                         rf"{1 << 33}, ", launches[1])
    assert selection, launches[1]
    assert re.search(rf"\b{selection.group(1)}\b", launches[2])


def test_cuda_reads_a_transposed_view_in_place(wrappers):
    launches = _launches(wrappers["transposed"])
    assert len(launches) == 1, launches  # no copy first
    assert re.search(r"_sample_median_kernel_\d+\.run\(reinterpret_tensor\(x_1, \(4096, 1024\), \(1, 4096\), 0\), "
                     r"buf\d+, 1024, 1, 4096, 9, 456, -1, -1, -1, -1, -1, 0, 0, 64, 1, 1, stream", launches[0])


def test_cuda_quantizes_the_residual_without_writing_it(wrappers):
    """The selection, which quantizes mu too (its values), then one launch of the residual's values (the kernel
    subtracts mu as it loads x): no kernel writes x - mu."""
    launches = _launches(wrappers["shifted"])
    assert _names(launches) == ["triton_poi_fused", "_sample_median_kernel", "_quantize_kernel"], launches
    # the selection writes mu and mu's values (no codes, no scales, no seed: round to nearest; no tensor scale:
    # nobody reads it)
    selection = re.match(r"_sample_median_kernel_\d+\.run\((buf\d+), (buf\d+), 1024, 1024, 1, 17, 482, -1, -1, "
                         r"(buf\d+), -1, -1, 0, ", launches[1])
    assert selection, launches[1]
    # the residual's launch reads the producer's buffer and takes mu as its shift
    assert re.match(rf"_quantize_kernel_\d+\.run\({selection.group(1)}, .*\b{selection.group(2)}, ", launches[2])


def test_cuda_two_level_formats_quantize_the_difference(wrappers):
    """NVFP4's global-amax pre-pass reads its input as it is: the lowering writes x - mu first."""
    launches = _launches(wrappers["shifted_two_level"])
    assert _names(launches)[:3] == ["triton_poi_fused", "_sample_median_kernel", "triton_poi_fused"], launches
    # the difference reads the producer's buffer and mu, and the residual's pre-pass reads the difference
    producer, mu, difference = (re.search(r"\.run\((\w+), (\w+)(?:, (\w+))?", line).groups() for line in launches[:3])
    assert difference[:2] == (producer[1], mu[1]) and re.match(rf"_amax_kernel_\d+\.run\({difference[2]},", launches[3])


@pytest.mark.parametrize("case", ["3d", "float64"])
def test_cuda_falls_back_to_the_op_for_what_the_kernel_refuses(wrappers, case):
    code = wrappers[case]
    assert "torch.ops.ufp4.sample_median.default(" in code and "_sample_median_kernel" not in code


def test_cpu_calls_the_op():
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    from ufp4_compile.numerics import mean_split

    x = torch.randn(3000, 20).bfloat16()
    with config.patch(force_disable_caches=True):
        (mu, residual), (code,) = run_and_get_code(torch.compile(_split), x)
    assert "torch.ops.ufp4.sample_median.default(" in code
    want_mu, want_residual = mean_split(x * 2)
    assert torch.equal(mu, want_mu) and torch.equal(residual, want_residual)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("tokens, channels", [(8192, 1024), (8192, 2752), (1000, 48)])
def test_cuda_compiled_split_equals_cpu_eager(tokens, channels):
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    from ufp4_compile.numerics import mean_split

    x = (torch.randn(tokens, channels) + torch.linspace(-3, 3, channels)).bfloat16()
    x[::3, 1] = float("nan")
    with config.patch(force_disable_caches=True):
        (mu, residual), (code,) = run_and_get_code(torch.compile(_split), x.cuda())
    assert "_sample_median_kernel" in code and "nanmedian" not in code
    want_mu, want_residual = mean_split(x * 2)
    assert torch.equal(mu.cpu(), want_mu)
    nan = want_residual.isnan()
    assert torch.equal(residual.cpu().isnan(), nan) and torch.equal(residual.cpu()[~nan], want_residual[~nan])


if __name__ == "__main__":
    print(json.dumps(_wrappers()))
