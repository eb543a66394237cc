"""``ufp4::round_to_bf16`` (lowering/rounding.py): the dense GEMMs' rounding of the FP32 product to bfloat16
stays a rounding where Inductor fuses it with a consumer that upcasts it, and the CPU takes the op's own
implementation (Inductor's C++ kernels would map that upcast back to the unrounded FP32 value)."""

from __future__ import annotations

import re

import pytest
import torch

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(device):
    specials = torch.tensor([0.0, -0.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8), 3.3895314e38,
                             3.4028235e38, -3.4028235e38, 1e-40, -1e-45, float("inf"), float("-inf"), float("nan")])
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (1 << 16,), generator=torch.Generator().manual_seed(0),
                         dtype=torch.int64)
    return torch.cat([specials, bits.to(torch.int32).view(torch.float32)]).to(device)


def _round_and_upcast(t):
    rounded = torch.ops.ufp4.round_to_bf16(t * 2.0)
    return rounded, rounded.float() * 0.5  # the upcast and the next op fuse with the rounding


def _check(device):
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    from ufp4_compile import lowering

    lowering.register()
    x = _inputs(device)
    want = (x * 2.0).to(torch.bfloat16)
    with config.patch(force_disable_caches=True):
        (low, high), (code,) = run_and_get_code(torch.compile(_round_and_upcast), x)
    assert low.dtype == torch.bfloat16 and high.dtype == torch.float32
    got = torch.stack([low.float(), high * 2.0])
    same = (got.view(torch.int32) == want.float().view(torch.int32)) | (got.isnan() & want.isnan())
    assert bool(same.all()), x[~same.all(0)][:8]
    return code


def test_cpu_calls_the_op_and_rounds():
    code = _check("cpu")
    assert "torch.ops.ufp4.round_to_bf16.default(" in code


@gpu
@pytest.mark.gpu
def test_cuda_fuses_the_rounding_and_rounds():
    code = _check("cuda")
    assert "torch.ops.ufp4.round_to_bf16.default(" not in code  # in the Triton kernel, not an extern call


def test_cuda_lowering_converts_down_and_up_in_the_fused_kernel():
    """On CPU, what Inductor generates for CUDA (testing/fake_cuda.py): one Triton kernel in which the product
    goes down to bfloat16 and back before the consumer's multiply reads it."""
    from ufp4_compile import lowering
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()

    def f(t):
        rounded = torch.ops.ufp4.round_to_bf16(t * 2.0)
        return rounded, torch.ops.prims.convert_element_type.default(rounded, torch.float32) * 0.5

    code = wrapper_code(f, ((1024,), torch.float32))
    assert "round_to_bf16.default(" not in code and code.count("async_compile.triton(") == 1
    down = re.search(r"(tmp\d+) = (tmp\d+)\.to\(tl\.bfloat16\)", code)
    assert down and re.search(rf"(tmp\d+) = {down.group(1)}\.to\(tl\.float32\)", code), code
