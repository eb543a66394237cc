"""The quantize / quantize_dequantize / dequantize lowerings: Inductor's generated code launches the Triton
kernels itself (no extern call into the ufp4 ops, so no Python launcher per call) and gets the eager
launcher's bits, through Triton's launcher and through Inductor's static one; and the backend's default on a GPU without native 4-bit MMA (dense GEMMs) equals the
codes path. GPU only: Inductor cannot generate code for user Triton kernels on CPU tensors."""

import re

import pytest
import torch

from ufp4_compile.testing.models import MLP

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CASES = [("int4/16/fp32/nearest", 16), ("int4/16/fp32/stochastic", 16), ("e2m1/16/e4m3/nearest", 0),
         ("e2m1/16x16/e4m3/nearest", 0), ("e2m1/32/e8m0/stochastic", 16), ("int4/16/e4m3/stochastic", 16)]


def _launches(kernel: str, code: str) -> int:
    """How many launches of ``kernel`` the generated ``code`` makes (its name in a kernel's source, say in a
    docstring, is not a launch)."""
    return len(re.findall(rf"\b{kernel}\w*\.run\(", code))


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec, rht", CASES)
@pytest.mark.parametrize("axis", [0, 1])
def test_compiled_ops_launch_kernels_and_match_eager(spec, rht, axis):
    from torch._inductor.utils import run_and_get_code

    from ufp4_compile import lowering
    from ufp4_compile.lowering import kernel_calls

    lowering.register()
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16) * 3
    seed = torch.tensor(7, device="cuda")

    def f(x, seed):
        codes, scales, ts = torch.ops.ufp4.quantize(x, axis, spec, rht, 3, seed, 16)
        values, values_ts = torch.ops.ufp4.quantize_dequantize(x, axis, spec, rht, 3, seed, 16, torch.bfloat16)
        back = torch.ops.ufp4.dequantize(codes, scales, ts, axis, spec, torch.float32)
        return codes, scales, ts, values, values_ts, back

    eager = f(x, seed)
    torch._dynamo.reset()
    with kernel_calls.pair_launches(False):  # one launch per op (pairs: test_paired_quantizations_match_eager)
        compiled, code = run_and_get_code(torch.compile(f, backend="inductor", fullgraph=True), x, seed)
    text = "\n".join(code)
    calls = [line for line in text.splitlines() if "torch.ops.ufp4." in line and not line.lstrip().startswith("#")]
    assert calls == [], "an op ran as an extern fallback"
    assert "_quantize_kernel" in text and "_dequantize_kernel" in text
    for got, want in zip(compiled, eager):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(_bits(got), _bits(want))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec, rht", CASES)
def test_paired_quantizations_match_eager(spec, rht):
    """With pairing (the default), two quantizations of x in one graph (row-wise values, column-wise codes)
    run as one launch where the format allows (the dual kernel, one read of x, where dual_refusal allows,
    else the pair kernel). With x's and w's, each with its own RHT seed and seed, both ways (as the forward
    quantizes X and W for Fprop, Wgrad and Dgrad): by default each tensor's two from one read, both tensors'
    in one two-duals launch; with the dual launch last, the row-wise values of x and w side by side, and
    their column-wise codes. Bit for bit eager's."""
    from torch._inductor.utils import run_and_get_code

    from ufp4_compile import lowering
    from ufp4_compile.kernels.quantize import launch_plan
    from ufp4_compile.kernels.quantize_pair import dual_refusal, pair_refusal, same_values_refusal
    from ufp4_compile.lowering import kernel_calls
    from ufp4_compile.numerics.quantize import as_format

    lowering.register()
    # 16 x 16 blocks without RHT, round to nearest: a tensor's row-wise values and column-wise codes are one
    # launch of the single kernel writing both, before any other partner
    shared = same_values_refusal((256, 512), as_format(spec), [(1, rht, torch.bfloat16), (0, rht, None)]) is None
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16) * 3
    seed = torch.tensor(7, device="cuda")

    def f(x, seed):
        values, values_ts = torch.ops.ufp4.quantize_dequantize(x, 1, spec, rht, 3, seed, 16, torch.bfloat16)
        codes, scales, ts = torch.ops.ufp4.quantize(x, 0, spec, rht, 3, seed, 1 << 32)
        return values, values_ts, codes, scales, ts

    eager = f(x, seed)
    torch._dynamo.reset()
    with kernel_calls.pair_launches():
        compiled, code = run_and_get_code(torch.compile(f, backend="inductor", fullgraph=True), x, seed)
    text = "\n".join(code)
    plans = [launch_plan((256, 512), 2, axis, as_format(spec), rht, axis == 0, axis == 1, True) for axis in (1, 0)]
    one_read = dual_refusal((256, 512), *plans) is None
    assert bool(_launches("_quantize_dual_kernel", text)) == one_read
    assert bool(_launches("_quantize_pair_kernel", text)) == (not one_read and not shared
                                                              and pair_refusal(*plans) is None)
    assert _launches("_quantize_kernel", text) == (1 if shared else 0 if one_read or pair_refusal(*plans) is None
                                                   else 2)
    for got, want in zip(compiled, eager):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(_bits(got), _bits(want))

    w = torch.randn(384, 512, device="cuda", dtype=torch.bfloat16)
    w_seed = torch.tensor(11, device="cuda")

    def g(x, w, seed, w_seed):
        xv, xvts = torch.ops.ufp4.quantize_dequantize(x, 1, spec, rht, 3, seed, 16, torch.bfloat16)
        wv, wvts = torch.ops.ufp4.quantize_dequantize(w, 1, spec, rht, 5, w_seed, 0, torch.bfloat16)
        xc, xs, xts = torch.ops.ufp4.quantize(x, 0, spec, rht, 3, seed, 1 << 32)
        wc, ws, wts = torch.ops.ufp4.quantize(w, 0, spec, rht, 5, w_seed, 1 << 33)
        return xv, xvts, wv, wvts, xc, xs, xts, wc, ws, wts

    eager = g(x, w, seed, w_seed)
    allowed = sum(pair_refusal(*(launch_plan(shape, 2, axis, as_format(spec), rht, axis == 0, axis == 1, True)
                                 for shape in ((256, 512), (384, 512)))) is None for axis in (1, 0))
    duals = sum(dual_refusal(shape, *(launch_plan(shape, 2, axis, as_format(spec), rht, axis == 0, axis == 1, True)
                                      for axis in (1, 0))) is None for shape in ((256, 512), (384, 512)))
    for dual in ("first", "last"):  # the default: each tensor's two from one read; "last": same-axis pairs first
        torch._dynamo.reset()
        # no FX graph cache: the pairing setting is not in the key of a plain backend="inductor" compile
        # (backend="ufp4" puts it there), so the second compile would get the first one's code
        with kernel_calls.pair_launches(dual=dual), torch._inductor.config.patch(force_disable_caches=True):
            compiled, code = run_and_get_code(torch.compile(g, backend="inductor", fullgraph=True), x, w, seed, w_seed)
        text = "\n".join(code)
        if dual == "first":  # both tensors' duals in one two-duals launch where both take the dual kernel
            two = len(re.findall(r"_quantize_two_duals_kernel\w*\.run\(", text))
            assert two == (duals == 2)
            assert len(re.findall(r"_quantize_dual_kernel\w*\.run\(", text)) == duals - 2 * two
        else:
            assert len(re.findall(r"_quantize_pair_kernel\w*\.run\(", text)) == (0 if shared else allowed)
        if shared:
            assert _launches("_quantize_kernel", text) == 2
        for got, want in zip(compiled, eager):
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(_bits(got), _bits(want))


def _strict_static_launch_patches() -> dict:
    """Inductor config patches that launch user Triton kernels with Inductor's static launcher and make
    falling back to Triton's launcher an error; skips where this torch lacks the options."""
    from torch._inductor import config

    keys = set(config._config)
    strict = next((k for k in ("strict_static_triton_launcher", "strict_static_cuda_launcher") if k in keys), None)
    if "static_launch_user_defined_triton_kernels" not in keys or strict is None:
        pytest.skip("this torch has no static launch of user-defined Triton kernels")
    return {"static_launch_user_defined_triton_kernels": True, strict: True}


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec, rht", CASES)
def test_static_launcher_launches_the_kernels_with_the_same_bits(spec, rht):
    """The backend's kernels through Inductor's static launcher (the option
    ``static_launch_user_defined_triton_kernels``), strict, so a kernel it cannot take is an error rather
    than a silent fallback to Triton's launcher: the same bits as eager."""
    from torch._inductor import config

    from ufp4_compile import lowering

    lowering.register()
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16) * 3
    seed = torch.tensor(7, device="cuda")

    def f(x, seed):
        codes, scales, ts = torch.ops.ufp4.quantize(x, 0, spec, rht, 3, seed, 16)
        values, values_ts = torch.ops.ufp4.quantize_dequantize(x, 1, spec, rht, 3, seed, 16, torch.bfloat16)
        back = torch.ops.ufp4.dequantize(codes, scales, ts, 0, spec, torch.float32)
        return codes, scales, ts, values, values_ts, back

    eager = f(x, seed)
    torch._dynamo.reset()
    with config.patch(force_disable_caches=True, **_strict_static_launch_patches()):
        compiled = torch.compile(f, backend="inductor", fullgraph=True)(x, seed)
    for got, want in zip(compiled, eager):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(_bits(got), _bits(want))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["int4/16/fp32/stochastic", "e2m1/16/e4m3/stochastic"])
def test_dual_dequantize_launch_through_the_static_launcher(spec):
    """A linear layer's backward (dY's two quantizations and the dequantizations of saved X and W codes) as
    one launch of the dual-dequantize kernel through Inductor's strict static launcher: eager's bits."""
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    from ufp4_compile import lowering
    from ufp4_compile.kernels.quantize import quantize

    lowering.register()
    near = spec.replace("stochastic", "nearest")
    dy = torch.randn(512, 768, device="cuda", dtype=torch.bfloat16)
    x, w = torch.randn(512, 256, device="cuda"), torch.randn(768, 256, device="cuda") * 0.05
    (cx, sx, tx), (cw, sw, tw) = quantize(x, 0, near, 16, 3, None, 0), quantize(w, 0, near, 16, 5, None, 0)
    seed = torch.tensor(7, device="cuda")

    def back(dy, cx, sx, tx, cw, sw, tw, seed):
        dyc = torch.ops.ufp4.quantize_dequantize(dy, 0, spec, 16, 3, seed, 1 << 33, torch.bfloat16)
        xv = torch.ops.ufp4.dequantize(cx, sx, tx, 0, near, torch.bfloat16)
        dyr = torch.ops.ufp4.quantize_dequantize(dy, 1, spec, 16, 3, seed, 16, torch.bfloat16)
        wv = torch.ops.ufp4.dequantize(cw, sw, tw, 0, near, torch.bfloat16)
        return (*dyc, xv, *dyr, wv)

    args = (dy, cx, sx, tx, cw, sw, tw, seed)
    eager = back(*args)
    torch._dynamo.reset()
    with config.patch(force_disable_caches=True, **_strict_static_launch_patches()):
        compiled, code = run_and_get_code(torch.compile(back, backend="inductor", fullgraph=True), *args)
    assert _launches("_quantize_dual_dequantize_kernel", "\n".join(code)) == 1
    for got, want in zip(compiled, eager):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(_bits(got), _bits(want))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["ufp4", "nvfp4"])
def test_static_launchers_from_the_worker_pools_binaries(recipe):
    """A training step with the static launchers of our kernels built from the binaries Inductor's worker pool
    compiled (static_launch.reuse_worker_binaries, the default) against the parent compiling them again,
    under the strict static launcher (a kernel left on Triton's launcher is an error): the same output and
    gradients, bit for bit, and no second compile timed with reuse. Skipped, after the bit check, where no
    kernel of ours compiled in the worker pool (a cold pool compiles in the parent)."""
    from torch._dynamo.utils import compilation_time_metrics
    from torch._inductor import config

    from ufp4_compile.backend import make_backend
    from ufp4_compile.lowering import static_launch

    results, timed = [], []
    for reuse in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = MLP(256, 512).cuda()
        x = torch.randn(4, 64, 256, device="cuda", requires_grad=True)
        backend = make_backend({"recipe": recipe, "sr_seed_policy": "fixed"})
        before = len(compilation_time_metrics.get(static_launch.TIMER, []))
        with (static_launch.reuse_worker_binaries(reuse),
              config.patch(force_disable_caches=True, **_strict_static_launch_patches())):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = torch.compile(model, backend=backend, fullgraph=True)(x)
            out.float().square().sum().backward()
        timed.append(len(compilation_time_metrics.get(static_launch.TIMER, [])) - before)
        results.append([out.detach(), x.grad.clone(), *[p.grad.clone() for p in model.parameters()]])
    for got, want in zip(results[1], results[0]):
        assert torch.equal(got, want)
    if timed[0] == 0:
        pytest.skip("no kernel of ours compiled in the worker pool here: nothing to reuse")
    assert timed[1] == 0


def _mlp_step(recipe: str, lowering_setting, device: str = "cuda") -> tuple[list, str]:
    """One training step of a fresh ``MLP(256, 512)`` (seed 0) compiled by backend="ufp4" under bf16 autocast,
    with ``lowering_setting`` (a context manager) around the compiles, caches off: ``[output, x's gradient, each
    parameter's gradient]`` and the generated code."""
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    from ufp4_compile.backend import make_backend

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MLP(256, 512).to(device)
    x = torch.randn(4, 64, 256, device=device, requires_grad=True)
    backend = make_backend({"recipe": recipe, "sr_seed_policy": "fixed"})

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            out = torch.compile(model, backend=backend, fullgraph=True)(x)
        out.float().square().sum().backward()
        return out

    with lowering_setting, config.patch(force_disable_caches=True):
        out, code = run_and_get_code(step)
    return [out.detach(), x.grad.clone(), *[p.grad.clone() for p in model.parameters()]], "\n".join(code)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["ufp4", "e2m1-ref", "nvfp4", "ufp4-nv", "ufp4-mean"])
def test_paired_training_step_equals_unpaired(recipe):
    """A training step of backend="ufp4" with paired launches (the default without CUDA graphs: X's, W's and
    dY's two quantizations each from one read, dY's launch with the dequantizations of the saved codes, or
    with dual_dequantize off those two by two) against the same
    step with pair_launches(False), with pairs but without the one-read dual launch, and with the dual launch
    last (same-axis partners first: X's and W's row-wise quantizations side by side, their column-wise ones):
    the same output and gradients, bit for bit, and the pair and dual kernels in the generated code. nvfp4
    and ufp4-nv (E4M3 scales) pair too, each tensor's two global-amax pre-passes from one read of it. ufp4-mean's
    split X and dY take the one-read launches too (the kernels subtract mu from the row-wise job), and the
    selection launch quantizes mu."""
    from ufp4_compile.lowering import kernel_calls

    results, codes = [], []
    for paired, dual, two, deq in ((False, "first", True, True), (True, "first", True, True),
                                   (True, False, True, True), (True, "last", True, True),
                                   (True, "first", False, True), (True, "first", True, False)):
        result, code = _mlp_step(recipe, kernel_calls.pair_launches(paired, dual=dual, two_duals=two,
                                                                    dual_dequantize=deq))
        results.append(result)
        codes.append(code)
    launches = [{k: _launches(k, code) for k in ("_quantize_pair_kernel", "_dequantize_pair_kernel",
                                                 "_quantize_dual_kernel", "_quantize_two_duals_kernel",
                                                 "_quantize_dual_dequantize_kernel", "_quantize_dual_single_kernel")}
                for code in codes]
    # by default a linear layer's X and W duals share one launch (W's bf16 copy exists before X's
    # quantizations); with two_duals off each is its own dual launch. nvfp4's W (16 x 16 blocks) takes no dual
    # launch but one launch for its two quantizations, which joins X's dual (the dual-single kernel, after one
    # pre-pass launch for the three jobs); with two_duals off, X's dual launch and W's own.
    two = "_quantize_dual_single_kernel" if recipe == "nvfp4" else "_quantize_two_duals_kernel"
    assert launches[1][two] and not launches[4][two]
    assert launches[4]["_quantize_dual_kernel"] > launches[1]["_quantize_dual_kernel"]
    assert (recipe == "nvfp4") == bool(launches[1]["_quantize_dual_single_kernel"])
    if recipe == "nvfp4":
        assert _launches("_dual_single_amax_kernel", codes[1]) and not _launches("_dual_single_amax_kernel", codes[4])
    # dY's dual launch takes the dequantizations of the saved codes beside it; with dual_dequantize off (5),
    # dY's two share the dual launch and the dequantizations pair with each other
    assert not any(launches[0].values()) and launches[1]["_quantize_dual_dequantize_kernel"]
    assert launches[5]["_dequantize_pair_kernel"] and launches[5]["_quantize_dual_kernel"]
    assert not launches[5]["_quantize_dual_dequantize_kernel"]
    if recipe in ("nvfp4", "ufp4-nv"):
        # one tensor's two pre-passes from one read (dY's; X's, and W's in ufp4-nv, two tensors' in one launch)
        assert not _launches("_dual_amax_kernel", codes[0]) and _launches("_dual_amax_kernel", codes[1])
        assert (recipe == "ufp4-nv") == bool(_launches("_two_dual_amax_kernel", codes[1]))
    # Without the dual kernel (2) or with it last (3), one tensor's two axes take the pair kernel where their
    # tiles take one warp count: not E4M3's (4 warps row-wise, 2 column-wise). nvfp4's weights (16 x 16 blocks)
    # are another format than its activations, so nothing in this MLP has a same-axis partner there.
    no_same_axis = recipe == "nvfp4"
    assert (launches[2]["_quantize_pair_kernel"] or no_same_axis) and not launches[2]["_quantize_dual_kernel"]
    # dual last: same-axis pairs; ufp4 quantizes dY both ways with one RHT: the dual kernel's launches
    # (e2m1-ref rotates Wgrad's dY only)
    assert (launches[3]["_quantize_pair_kernel"] or no_same_axis) and (launches[3]["_quantize_dual_kernel"]
                                                                       or recipe != "ufp4")
    for unpaired, *others in zip(*results):
        for other in others:
            torch.testing.assert_close(other, unpaired, rtol=0, atol=0)
    if recipe == "ufp4-mean":  # mu quantized by the selection launch with pairing on, by its own launch without
        # (an unfused selection passes five None pointers, offset 0 and RHT key 0 for the quantization). fc2's
        # dY is the backward graph's input, so its selection comes first: the seed, which the partitioner places
        # just before its first user, is moved ahead of it (passes.hoist_seeds), else that one stays unfused.
        unfused = lambda code: [line for line in re.findall(r"_sample_median_kernel_\d+\.run\(.*", code)
                                if "-1, -1, -1, -1, -1, 0, 0, " in line]
        assert _launches("_sample_median_kernel", codes[1]) == 4 and not unfused(codes[1])
        assert len(unfused(codes[0])) == _launches("_sample_median_kernel", codes[0]) == 4


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["ufp4", "nvfp4", "mxfp4", "ufp4-mean"])
def test_dense_default_equals_codes_path_on_cuda(recipe):
    """backend="ufp4" with its default (dense GEMMs of dequantized operands on Hopper) against
    ``dense_gemms=False`` (the scaled_mm lowering's dequantize + cuBLAS): the same operands, the same cuBLAS
    products with FP32 accumulation, so the same bits."""
    from ufp4_compile.backend import make_backend

    from torch._inductor import config

    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = False  # as the extern choice runs cuBLAS
    try:
        results = []
        for dense in (False, "auto"):
            torch._dynamo.reset()
            torch.manual_seed(0)
            model = MLP(256, 512).cuda()
            x = torch.randn(4, 64, 256, device="cuda", requires_grad=True)
            backend = make_backend({"recipe": recipe, "sr_seed_policy": "fixed", "dense_gemms": dense})
            with torch.autocast("cuda", dtype=torch.bfloat16), config.patch(force_disable_caches=True):
                out = torch.compile(model, backend=backend, fullgraph=True)(x)
            out.float().square().sum().backward()
            results.append([out.detach(), x.grad.clone(), *[p.grad.clone() for p in model.parameters()]])
            assert len(backend.report.rewritten) == 6
    finally:
        matmul.allow_bf16_reduced_precision_reduction = saved
    for codes_path, dense_path in zip(*results):
        torch.testing.assert_close(dense_path, codes_path, rtol=0, atol=0)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["ufp4", "nvfp4", "ufp4-nv", "mxfp4", "ufp4-mean"])
def test_folded_weight_casts_give_the_casts_bits(recipe):
    """A training step under autocast with each weight's bf16 cast folded into the launches that quantize it
    (the default: they read the FP32 weight and round it as they load it) against the same step with
    fold_casts(False) (Inductor computes each cast, the launches read it): the same output and gradients, bit
    for bit; the folded forward sets a ROUND constexpr, launches fewer Inductor kernels, and the other none."""
    from ufp4_compile.lowering import folded_casts

    results, codes = zip(*(_mlp_step(recipe, folded_casts.fold_casts(fold)) for fold in (True, False)))
    rounds = [len(re.findall(r"'[A-Z]?_?ROUND': True", code)) for code in codes]
    inductor = [_launches("triton_", code) for code in codes]
    assert rounds[0] > 0 and rounds[1] == 0
    assert inductor[0] < inductor[1], inductor
    for folded, cast in zip(*results):
        torch.testing.assert_close(folded, cast, rtol=0, atol=0)
