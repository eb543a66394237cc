"""What the quantize / dequantize lowerings emit into Inductor's wrapper on CUDA, checked without a GPU
(ufp4_compile/testing/fake_cuda.py): the Triton kernels launched directly, no call back into the ufp4 ops
(the Python launcher per call that made the step host-bound), no fill kernel per call, the 0-d tensor scale
a view of the buffer the kernel writes.

The lowering needs Triton's compiled-kernel objects, not the interpreter's that the CPU suite runs with
(TRITON_INTERPRET=1), so the wrappers are generated in one subprocess without it."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

CASES = [("int4/16/fp32/stochastic", 16, 1), ("int4/16/fp32/nearest", 16, 0), ("e2m1/16/e4m3/nearest", 0, 1),
         ("e2m1/32/e8m0/stochastic", 16, 0)]


def _wrapper(spec: str, rht: int, axis: int) -> str:
    from ufp4_compile import lowering
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()

    def f(x, seed):
        codes, scales, ts = torch.ops.ufp4.quantize(x, axis, spec, rht, 3, seed, 16)
        values, values_ts = torch.ops.ufp4.quantize_dequantize(x, axis, spec, rht, 3, seed, 16, torch.bfloat16)
        back = torch.ops.ufp4.dequantize(codes, scales, ts, axis, spec, torch.float32)
        return codes, scales, ts, values, values_ts, back

    return wrapper_code(f, ((256, 512), torch.bfloat16), ((), torch.int64))


@pytest.fixture(scope="module")
def wrappers():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("spec, rht, axis", CASES)
def test_ops_lower_to_direct_kernel_launches(wrappers, spec, rht, axis):
    code = wrappers[f"{spec}/{rht}/{axis}"]
    calls = [line.strip() for line in code.splitlines() if not line.lstrip().startswith("#")]
    names = [re.match(r"(\w+)\.run\(", line).group(1) for line in calls if re.match(r"\w+\.run\(", line)]
    e4m3 = "e4m3" in spec
    # two quantize launches (codes; values), each after its global-amax pre-pass for E4M3, then the dequantize
    expected = (["_amax_kernel", "_quantize_kernel"] * 2 if e4m3 else ["_quantize_kernel"] * 2) + ["_dequantize_kernel"]
    assert [re.sub(r"_\d+$", "", n) for n in names if not n.startswith("triton_")] == expected
    fills = [n for n in names if n.startswith("triton_")]
    assert len(fills) == (2 if e4m3 else 0), fills  # only the E4M3 amax accumulators are zero-filled
    assert not [line for line in calls if "torch.ops.ufp4." in line], "an op ran as an extern fallback"
    # the tensor scale: a (1,) buffer the quantize kernel writes, handed out (and to dequantize) as a 0-d view
    assert re.search(r"reinterpret_tensor\(buf\d+, \(\), \(\), 0\)", code)


if __name__ == "__main__":
    print(json.dumps({f"{spec}/{rht}/{axis}": _wrapper(spec, rht, axis) for spec, rht, axis in CASES}))
