"""Launches that read an FP32 tensor in place of its bf16 cast (``ROUND``: the lowering's folded weight casts,
docs/kernels.md "The weight casts folded into the quantize launches"): every result is bit for bit the same
launch's on the bf16 cast, including values that round up to the next binade, ties, and values that overflow bf16.

On CPU the kernels run in Triton's interpreter (tests/conftest.py), so shapes stay tiny; the GPU tests repeat the
comparison at the training step's shapes.
"""

from __future__ import annotations

import pytest
import torch

from ufp4_compile.numerics.formats import OperandFormat

kernels_quantize = pytest.importorskip("ufp4_compile.kernels.quantize")
quantize_pair = pytest.importorskip("ufp4_compile.kernels.quantize_pair")
launchers = pytest.importorskip("ufp4_compile.kernels.quantize_pair_launchers")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SPECS = [("int4/16/fp32/nearest", 16), ("int4/16/e4m3/nearest", 16), ("e2m1/16/e4m3/nearest", 0),
         ("e2m1/32/e8m0/nearest", 16)]


def _master(shape, seed=0) -> torch.Tensor:
    """FP32 values whose bf16 rounding matters: random ones, exact ties (to even, both ways), values just below
    a power of two that round up to it, the largest FP32 (bf16's infinity) and a NaN."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    flat = w.view(-1)
    tie = torch.tensor([0x3F808000, 0x3F818000, 0x3F7FFFFF, 0x7F7FFFFF, 0x7FC00000], dtype=torch.int32)
    flat[3:8] = tie.view(torch.float32)  # 1 + 2**-8 (tie, down), 1 + 3 * 2**-8 (tie, up), 1 - 2**-24, FP32 max, NaN
    flat[-1] = -flat[5]
    return w.to(DEVICE)


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g.view(torch.uint8) if g.dtype == torch.float8_e4m3fn else g,
                           w.view(torch.uint8) if w.dtype == torch.float8_e4m3fn else w) or \
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True) is None


def _run_single(x, axis, spec, rht, codes, rounded):
    fmt = OperandFormat.from_spec(spec)
    plan = kernels_quantize.plan_for(x.to(torch.bfloat16), axis, fmt, rht, codes=codes, values=not codes)
    written, result = kernels_quantize.eager_outputs(plan, x.shape, None if codes else torch.bfloat16, x.device)
    ts = kernels_quantize._launch(x, plan, 3, None, 0, *written[:3], rounded=rounded)
    return result[:-1], ts


@pytest.mark.parametrize("spec, rht", SPECS)
@pytest.mark.parametrize("axis", [0, 1])
def test_a_single_launch_rounds_its_fp32_input_as_the_cast_does(spec, rht, axis):
    """One quantize launch (and its global-amax pre-pass for E4M3 scales) on the FP32 tensor with ``ROUND``
    writes the codes, scales, values and tensor scale it writes for the tensor's bf16 cast."""
    w = _master((32, 64))
    for codes in (True, False):
        got, got_ts = _run_single(w, axis, spec, rht, codes, rounded=True)
        want, want_ts = _run_single(w.to(torch.bfloat16), axis, spec, rht, codes, rounded=False)
        _same([t for t in got if t is not None], [t for t in want if t is not None])
        assert torch.equal(got_ts, want_ts)


@pytest.mark.parametrize("spec, rht", SPECS[:3])
def test_two_duals_round_the_weight_and_not_the_activation(spec, rht):
    """The forward's two-duals launch (X in bf16 as jobs a and b, W's FP32 master copy as jobs c and d) with
    ``C_ROUND`` only: each result is the launch's on W's bf16 cast, and X's pre-pass and jobs are untouched."""
    fmt = OperandFormat.from_spec(spec)
    x = (torch.randn(48, 128) * 3).to(DEVICE, torch.bfloat16)
    w = _master((32, 128), seed=1)
    x_jobs, w_jobs = ((1, 16, torch.bfloat16), (0, 1 << 32, None)), ((0, 7, None), (1, 3, torch.bfloat16))

    def run(w_in, rounded):
        duals, plans = [], []
        for t, jobs in ((x, x_jobs), (w_in.to(torch.bfloat16), w_jobs)):  # the plans are bf16 ones
            own = [kernels_quantize.plan_for(t, axis, fmt, rht, codes=dtype is None, values=dtype is not None)
                   for axis, _, dtype in jobs]
            duals.append(quantize_pair.pair_launch(*own, dual_shape=tuple(t.shape)))
            plans += own
        assert quantize_pair.two_duals_refusal(*duals) is None
        launch = quantize_pair.two_duals_launch(*duals)
        return launchers._run(launch, plans, [(x, 3, None)] * 2 + [(w_in, 5, None)] * 2, [*x_jobs, *w_jobs],
                              rounded=(w_in,) if rounded else ())

    for got, want in zip(run(w, True), run(w.to(torch.bfloat16), False)):
        _same([t for t in got if t is not None], [t for t in want if t is not None])


def test_the_constexprs_follow_the_pointer_names():
    """``rounding_constexprs``: the input pointer's prefix names the constexpr (``x_ptr``: ``ROUND``, ``c_x_ptr``:
    ``C_ROUND``), by the tensor's identity, and every kernel with an input pointer takes its constexpr."""
    w, x = torch.zeros(2), torch.zeros(2)
    single, two_duals = kernels_quantize._quantize_kernel, quantize_pair._quantize_two_duals_kernel
    assert kernels_quantize.rounding_constexprs(single, {"x_ptr": w, "gamax_ptr": w}, [w]) == {"ROUND": True}
    assert kernels_quantize.rounding_constexprs(two_duals, {"a_x_ptr": x, "c_x_ptr": w}, [w]) == {
        "A_ROUND": False, "C_ROUND": True}
    assert kernels_quantize.rounding_constexprs(single, {"x_ptr": x}, []) == {"ROUND": False}
    from ufp4_compile.kernels import prepass

    kernels = [getattr(m, name) for m in (kernels_quantize, quantize_pair, prepass) for name in dir(m)
               if name.endswith("_kernel") and hasattr(getattr(m, name), "arg_names")]
    assert len(kernels) >= 11
    for kernel in kernels:
        names = set(kernel.arg_names)
        inputs = [name for name in names if kernels_quantize.input_constexpr(name) is not None]
        assert inputs, kernel.fn.__name__
        for name in inputs:
            assert kernels_quantize.input_constexpr(name) in names, (kernel.fn.__name__, name)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec, rht", SPECS[:3])
def test_rounded_launches_at_the_steps_shapes(spec, rht):
    """The two-duals launch at a linear layer's shapes (X 8192 x 1024 in bf16, W 2816 x 1024 in FP32) with W
    rounded as loaded: each result is the launch's on W's bf16 cast."""
    fmt = OperandFormat.from_spec(spec)
    x = (torch.randn(8192, 1024, device=DEVICE) * 3).to(torch.bfloat16)
    w = torch.randn(2816, 1024, device=DEVICE) * 0.02
    first, jobs = (x, 3, None, (rht, rht), ((1, 16, torch.bfloat16), (0, 1 << 32, None))), ((0, 7, None),
                                                                                              (1, 3, torch.bfloat16))
    want = launchers.quantize_two_duals(fmt, first, (w.to(torch.bfloat16), 5, None, (rht, rht), jobs))
    duals, plans = [], []
    for t, js in ((x, first[4]), (w.to(torch.bfloat16), jobs)):
        own = [kernels_quantize.plan_for(t, axis, fmt, rht, codes=dtype is None, values=dtype is not None)
               for axis, _, dtype in js]
        duals.append(quantize_pair.pair_launch(*own, dual_shape=tuple(t.shape)))
        plans += own
    got = launchers._run(quantize_pair.two_duals_launch(*duals), plans, [(x, 3, None)] * 2 + [(w, 5, None)] * 2,
                         [*first[4], *jobs], rounded=(w,))
    for g, w_ in zip(got, want):
        _same([t for t in g if t is not None], [t for t in w_ if t is not None])
