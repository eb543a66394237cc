"""What the quantize / dequantize lowerings emit into Inductor's wrapper on CUDA, checked without a GPU
(ufp4_compile/testing/fake_cuda.py): the Triton kernels launched directly, no call back into the ufp4 ops
(the Python launcher per call that made the step host-bound), no fill kernel per call (E4M3's global-amax
partials included), the 0-d tensor scale a view of the buffer the kernel writes.

The lowering needs Triton's compiled-kernel objects, not the interpreter's that the CPU suite runs with
(TRITON_INTERPRET=1), so the wrappers are generated in one subprocess without it."""

import json
import re

import pytest
import torch

CASES = [("int4/16/fp32/stochastic", 16, 1), ("int4/16/fp32/nearest", 16, 0), ("e2m1/16/e4m3/nearest", 0, 1),
         ("e2m1/32/e8m0/stochastic", 16, 0)]


def _wrapper(spec: str, rht: int, axis: int) -> str:
    from ufp4_compile import lowering
    from ufp4_compile.lowering import kernel_calls
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()

    def f(x, seed):
        codes, scales, ts = torch.ops.ufp4.quantize(x, axis, spec, rht, 3, seed, 16)
        values, values_ts = torch.ops.ufp4.quantize_dequantize(x, axis, spec, rht, 3, seed, 16, torch.bfloat16)
        back = torch.ops.ufp4.dequantize(codes, scales, ts, axis, spec, torch.float32)
        return codes, scales, ts, values, values_ts, back

    with kernel_calls.pair_launches(False):  # one launch per op (the pairing has its own test)
        return wrapper_code(f, ((256, 512), torch.bfloat16), ((), torch.int64))


@pytest.fixture(scope="module")
def wrappers():
    from ufp4_compile.testing.fake_cuda import json_from_script

    return json_from_script(__file__)


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
    assert not fills, fills  # no fill kernel: the E4M3 pre-pass writes every partial maximum it leaves
    assert not [line for line in calls if "torch.ops.ufp4." in line], "an op ran as an extern fallback"
    # the tensor scale, returned to the user: a (1,) buffer the quantize kernel writes, handed out (and to
    # dequantize) as a 0-d view (one-level scales too: the user owns it; saved ones are tested below)
    returned = re.search(r"return \((.*)\)", code[code.index("def call("):]).group(1)
    assert len(re.findall(r"reinterpret_tensor\(buf\d+, \(\), \(\), 0\)", returned)) == 2
    assert re.search(r"_dequantize_kernel_\d+\.run\(\w+, \w+, reinterpret_tensor", code)


def _compile_with_constant_scalars() -> dict:
    """Each quantize kernel variant of the presets compiled for sm_90 with every integer scalar argument a
    constant, as Inductor's analysis of which arguments a user kernel writes compiles it (torch 2.11 bakes
    them in; a kernel that only compiles with them as runtime values is then assumed to write every input).
    The error per variant, or None."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    from ufp4_compile.kernels import quantize, quantize_pair_launchers
    from ufp4_compile.numerics.hadamard import sign_mask

    one = dict(O=4096, L=4096, s_page=2, offset=16, rht_key=sign_mask(16, 3))
    scalars = {f"{p}{k}": v for p in ("", "a_", "b_") for k, v in one.items()}  # a pair kernel's jobs a and b
    scalars.update(M=4096, N=4096)  # the dual kernel's sizes
    errors = {}
    for variant in quantize.compile_variants() + quantize_pair_launchers.compile_variants():
        signature = {k: ("constexpr" if k in scalars else v) for k, v in variant.signature.items()}
        constexprs = {**variant.constexprs, **{k: v for k, v in scalars.items() if k in signature}}
        for p, key in (("", "rht_key"), ("A_", "a_rht_key"), ("B_", "b_rht_key")):  # each job's own RHT
            if key in signature and (variant.constexprs.get(f"{p}SIGN_MASK") is False
                                     or variant.constexprs.get(f"{p}RHT", 16) != 16):
                constexprs[key] = 3  # a Philox seed where the kernel computes the signs
        try:
            triton_compile(ASTSource(fn=variant.fn, signature=signature, constexprs=constexprs),
                           target=GPUTarget("cuda", 90, 32), options=variant.options)
            errors[variant.name] = None
        except Exception as error:  # reported to the test
            errors[variant.name] = f"{type(error).__name__}: {str(error)[-400:]}"
    return errors


def test_kernels_compile_with_constant_scalars(wrappers):
    errors = wrappers["constant_scalars"]
    assert errors and not {name: e for name, e in errors.items() if e}


def _memoized_analysis_check() -> dict:
    """Lower every preset quantize variant (both axes, codes and values) twice, at different shapes and Philox
    offsets, with the memoized access analysis in verify mode: each hit is analysed afresh and compared."""
    from ufp4_compile import lowering, recipes
    from ufp4_compile.lowering import kernel_calls
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()
    specs = sorted({(g.a.spec, g.rht) for r in recipes.PRESETS.values() for role in r.quantized_roles
                    for g in [r.gemm(role)]} | {(g.b.spec, g.rht) for r in recipes.PRESETS.values()
                                                for role in r.quantized_roles for g in [r.gemm(role)]})

    def f(x, y, seed):
        outs = []
        for i, (spec, rht) in enumerate(specs):
            for axis in (0, 1):
                for t, offset in ((x, (i + 1) << 32), (y, (1 << 40) + 48 * i)):  # as seeds.philox_offset
                    outs += torch.ops.ufp4.quantize(t, axis, spec, rht, 3, seed, offset)[:2]
                    outs.append(torch.ops.ufp4.quantize_dequantize(t, axis, spec, rht, 3, seed, offset,
                                                                   torch.bfloat16)[0])
        return outs

    kernel_calls.VERIFY_ACCESSES = True
    kernel_calls._ACCESSES.clear()
    try:
        wrapper_code(f, ((256, 512), torch.bfloat16), ((512, 1024), torch.bfloat16), ((), torch.int64))
        error = None
    except Exception as e:  # reported to the test
        error = f"{type(e).__name__}: {str(e)[-600:]}"
    finally:
        kernel_calls.VERIFY_ACCESSES = False
    return {"error": error, "specs": len(specs), **kernel_calls.ACCESS_STATS}


def test_memoized_access_analysis_agrees_with_a_fresh_one(wrappers):
    """Inductor's analysis of which arguments a user kernel writes is memoized per kernel variant (it compiles
    the kernel to TTIR each time: most of the compile time a training step added). Every memo hit here, at
    another shape and offset than the first analysis, is analysed afresh and must agree."""
    check = wrappers["access_memo"]
    assert check["error"] is None, check["error"]
    assert check["specs"] >= 8 and check["hits"] > 0 and check["misses"] > 0


def _source_memo_check() -> dict:
    """The memoized source closure against Inductor's own, for our kernels and for a foreign one (compiled
    kernels: under the interpreter they carry no source)."""
    import triton
    import triton.language as tl
    from torch._inductor.codegen import wrapper

    from ufp4_compile import lowering
    from ufp4_compile.kernels.dequantize import _dequantize_kernel
    from ufp4_compile.kernels.quantize import _amax_kernel, _quantize_kernel

    lowering.register()
    closure = wrapper.user_defined_triton_kernel_transitive_closure_source_code
    out = {"memoized": bool(getattr(closure, "_ufp4_memoized", False))}
    for kernel in (_quantize_kernel, _dequantize_kernel, _amax_kernel):
        first = closure(kernel)
        out[kernel.__name__] = (first == closure.original(kernel), f"def {kernel.__name__}(" in first,
                                closure(kernel) is first)

    @triton.jit
    def foreign(x_ptr, N: tl.constexpr):
        tl.store(x_ptr + tl.arange(0, N), tl.zeros((N,), tl.float32))

    out["foreign"] = (closure(foreign) == closure.original(foreign), "def foreign(" in closure(foreign))
    return out


def test_kernel_sources_are_memoized_for_our_kernels_only(wrappers):
    """Inductor's wrapper codegen collects a user kernel's source closure at every launch site; for our
    kernels the lowering serves it once per kernel, the same text, and passes anything else through."""
    check = wrappers["source_memo"]
    assert check.pop("memoized") is True
    assert check == {"_quantize_kernel": [True, True, True], "_dequantize_kernel": [True, True, True],
                     "_amax_kernel": [True, True, True], "foreign": [True, True]}


def _pair_check() -> dict:
    """Launch names of a graph that quantizes x three times and y once, with pairing off and on, per format;
    and the writes the (memoized) access analysis finds in the pair kernel."""
    from ufp4_compile import lowering
    from ufp4_compile.lowering import kernel_calls
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()
    out = {}
    for spec in ("int4/16/fp32/stochastic", "int4/16/fp32/nearest", "e2m1/16/e4m3/nearest"):
        def f(x, y, seed, other_seed):
            v, vts = torch.ops.ufp4.quantize_dequantize(x, 1, spec, 16, 3, seed, 16, torch.bfloat16)
            c, s, ts = torch.ops.ufp4.quantize(x, 0, spec, 16, 3, seed, 1 << 32)
            w, wts = torch.ops.ufp4.quantize_dequantize(x, 0, spec, 16, 3, other_seed, 99, torch.bfloat16)
            d, dts = torch.ops.ufp4.quantize_dequantize(y, 1, spec, 16, 3, seed, 7, torch.bfloat16)
            return v, vts, c, s, ts, w, wts, d, dts

        def h(x, seed):  # one tensor's row-wise values and column-wise codes, nothing else to pair with
            v, vts = torch.ops.ufp4.quantize_dequantize(x, 1, spec, 16, 3, seed, 16, torch.bfloat16)
            c, s, ts = torch.ops.ufp4.quantize(x, 0, spec, 16, 3, seed, 1 << 32)
            return v, vts, c, s, ts

        for on in (False, True):
            with kernel_calls.pair_launches(on):
                code = wrapper_code(f, ((256, 512), torch.bfloat16), ((128, 512), torch.bfloat16),
                                    ((), torch.int64), ((), torch.int64))
                alone = wrapper_code(h, ((256, 512), torch.bfloat16), ((), torch.int64))
            out[f"{spec}/{int(on)}"] = [re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", code)]
            out[f"{spec}/alone/{int(on)}"] = [re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", alone)]
        with kernel_calls.pair_launches(True, dual=False):
            alone = wrapper_code(h, ((256, 512), torch.bfloat16), ((), torch.int64))
        out[f"{spec}/alone/nodual"] = [re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", alone)]
        with kernel_calls.pair_launches(True, dual="last"):
            code = wrapper_code(f, ((256, 512), torch.bfloat16), ((128, 512), torch.bfloat16),
                                ((), torch.int64), ((), torch.int64))
        out[f"{spec}/duallast"] = [re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", code)]

        def two(x, w, seed, w_seed):  # a linear layer's forward: X's and W's two quantizations each
            xv = torch.ops.ufp4.quantize_dequantize(x, 1, spec, 16, 3, seed, 16, torch.bfloat16)
            wv = torch.ops.ufp4.quantize_dequantize(w, 1, spec, 16, 5, w_seed, 0, torch.bfloat16)
            wc = torch.ops.ufp4.quantize(w, 0, spec, 16, 5, w_seed, 1 << 33)
            xc = torch.ops.ufp4.quantize(x, 0, spec, 16, 3, seed, 1 << 32)
            return (*xv, *wv, *wc, *xc)

        for on in (True, False):
            with kernel_calls.pair_launches(two_duals=on):
                code = wrapper_code(two, ((256, 512), torch.bfloat16), ((384, 512), torch.bfloat16),
                                    ((), torch.int64), ((), torch.int64))
            out[f"{spec}/two/{int(on)}"] = [re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", code)]
    for sr, scale_dtype in (("int4/16/fp32/stochastic", torch.float32), ("e2m1/16/e4m3/stochastic", torch.float8_e4m3fn)):
        near = sr.replace("stochastic", "nearest")

        def back(dy, cx, sx, tx, cw, sw, tw, seed):  # a linear layer's backward: dY's two, X's and W's codes
            dyc = torch.ops.ufp4.quantize_dequantize(dy, 0, sr, 16, 3, seed, 1 << 33, torch.bfloat16)
            xv = torch.ops.ufp4.dequantize(cx, sx, tx, 0, near, torch.bfloat16)
            dyr = torch.ops.ufp4.quantize_dequantize(dy, 1, sr, 16, 3, seed, 16, torch.bfloat16)
            wv = torch.ops.ufp4.dequantize(cw, sw, tw, 0, near, torch.bfloat16)
            return dyc[0], xv, dyr[0], wv  # dY's tensor scales unread, as in a backward

        shapes = (((256, 384), torch.bfloat16), ((128, 512), torch.uint8), ((16, 512), scale_dtype),
                  ((), torch.float32), ((192, 512), torch.uint8), ((24, 512), scale_dtype), ((), torch.float32),
                  ((), torch.int64))
        for on in (True, False):
            with kernel_calls.pair_launches(dual_dequantize=on):
                code = wrapper_code(back, *shapes)
            out[f"{sr}/back/{int(on)}"] = [re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", code)]
    def weights(w, seed):  # NVFP4's weights: row-wise values for Fprop, column-wise codes for Dgrad (16 x 16)
        wv = torch.ops.ufp4.quantize_dequantize(w, 1, "e2m1/16x16/e4m3/nearest", 0, 5, seed, 0, torch.bfloat16)
        wc = torch.ops.ufp4.quantize(w, 0, "e2m1/16x16/e4m3/nearest", 0, 5, seed, 1 << 33)
        return (*wv, *wc)

    for on in (False, True):
        with kernel_calls.pair_launches(on):
            code = wrapper_code(weights, ((384, 512), torch.bfloat16), ((), torch.int64))
        out[f"16x16/{int(on)}"] = [re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", code)]

    def nvfp4(x, w, seed):  # NVFP4's linear forward: X's dual (1 x 16 blocks), W's 16 x 16 values and codes
        xv = torch.ops.ufp4.quantize_dequantize(x, 1, "e2m1/16/e4m3/nearest", 0, 3, seed, 16, torch.bfloat16)
        wv = torch.ops.ufp4.quantize_dequantize(w, 1, "e2m1/16x16/e4m3/nearest", 0, 5, seed, 0, torch.bfloat16)
        wc = torch.ops.ufp4.quantize(w, 0, "e2m1/16x16/e4m3/nearest", 0, 5, seed, 1 << 33)
        xc = torch.ops.ufp4.quantize(x, 0, "e2m1/16/e4m3/nearest", 16, 3, seed, 1 << 32)
        return (*xv, *wv, *wc, *xc)

    for on in (False, True):
        with kernel_calls.pair_launches(two_duals=on):
            code = wrapper_code(nvfp4, ((256, 512), torch.bfloat16), ((384, 512), torch.bfloat16),
                                ((), torch.int64))
        out[f"nvfp4/two/{int(on)}"] = [re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", code)]
    out["dual_single_accesses"] = [
        kernel_calls._access_summary(a) for key, a in kernel_calls._ACCESSES.items()
        if getattr(getattr(key[0], "fn", None), "__name__", "") == "_quantize_dual_single_kernel"]
    out["dual_dequantize_accesses"] = [
        kernel_calls._access_summary(a) for key, a in kernel_calls._ACCESSES.items()
        if getattr(getattr(key[0], "fn", None), "__name__", "") == "_quantize_dual_dequantize_kernel"]

    def g(x, w, seed):  # the backward's dequantizations of saved codes (two formats), and a third
        cx, sx, tx = torch.ops.ufp4.quantize(x, 0, "int4/16/fp32/nearest", 16, 3, seed, 16)
        cw, sw, tw = torch.ops.ufp4.quantize(w, 0, "e2m1/16/e4m3/nearest", 0, 3, seed, 16)
        a = torch.ops.ufp4.dequantize(cx, sx, tx, 0, "int4/16/fp32/nearest", torch.bfloat16)
        b = torch.ops.ufp4.dequantize(cw, sw, tw, 0, "e2m1/16/e4m3/nearest", torch.bfloat16)
        c = torch.ops.ufp4.dequantize(cx, sx, tx, 0, "int4/16/fp32/nearest", torch.float32)
        return a, b, c

    for on in (False, True):
        with kernel_calls.pair_launches(on):
            code = wrapper_code(g, ((256, 512), torch.bfloat16), ((128, 512), torch.bfloat16), ((), torch.int64))
        out[f"dequantize/{int(on)}"] = [re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", code)
                                        if "dequantize" in n]
    out["pair_accesses"] = [kernel_calls._access_summary(a) for key, a in kernel_calls._ACCESSES.items()
                            if getattr(getattr(key[0], "fn", None), "__name__", "") == "_quantize_pair_kernel"]
    out["dual_accesses"] = [kernel_calls._access_summary(a) for key, a in kernel_calls._ACCESSES.items()
                            if getattr(getattr(key[0], "fn", None), "__name__", "") == "_quantize_dual_kernel"]
    out["two_duals_accesses"] = [kernel_calls._access_summary(a) for key, a in kernel_calls._ACCESSES.items()
                                 if getattr(getattr(key[0], "fn", None), "__name__", "") == "_quantize_two_duals_kernel"]
    out["dequantize_pair_accesses"] = [
        kernel_calls._access_summary(a) for key, a in kernel_calls._ACCESSES.items()
        if getattr(getattr(key[0], "fn", None), "__name__", "") == "_dequantize_pair_kernel"]
    return out


def _unread_tensor_scales() -> dict:
    """Per format and pairing: the tensor-scale buffers (``(1,)`` FP32) the wrapper allocates and the unit constants
    beyond the first it names, when only the values of a quantize_dequantize and the codes and scales of a
    quantize are returned (nobody reads their tensor scales), when the tensor scales are returned too, and when
    they are outputs saved for a backward; and how many outputs are the unit constant."""
    from ufp4_compile import lowering
    from ufp4_compile.lowering import kernel_calls
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()
    out = {}
    for spec, rht in (("int4/16/fp32/stochastic", 16), ("e2m1/16/e4m3/nearest", 0)):
        def unread(x, seed):
            values, _ = torch.ops.ufp4.quantize_dequantize(x, 1, spec, rht, 3, seed, 16, torch.bfloat16)
            codes, scales, _ = torch.ops.ufp4.quantize(x, 0, spec, rht, 3, seed, 32)
            return values, codes, scales

        def read(x, seed):
            values, ts = torch.ops.ufp4.quantize_dequantize(x, 1, spec, rht, 3, seed, 16, torch.bfloat16)
            codes, scales, ts2 = torch.ops.ufp4.quantize(x, 0, spec, rht, 3, seed, 32)
            return values, codes, scales, ts, ts2

        # "read": the tensor scales returned to the user; "saved": the same outputs, the tensor scales kept for a
        # backward (outputs Inductor does not mark user-visible)
        for paired in (False, True):
            for name, fn, visible in (("unread", unread, None), ("read", read, None), ("saved", read, [0, 1, 2])):
                # no buffer reuse: each allocation its own line
                with kernel_calls.pair_launches(paired), torch._inductor.config.patch(allow_buffer_reuse=False):
                    code = wrapper_code(fn, ((256, 512), torch.bfloat16), ((), torch.int64), user_visible=visible)
                returned = re.search(r"return \((.*)\)", code[code.index("def call("):]).group(1)
                # (tensor-scale buffers allocated, graph constants 1 defined); and how many results are the constant
                out[f"{spec}/{int(paired)}/{name}"] = (
                    len(re.findall(r"empty_strided_cuda\(\(1, \), \(1, \), torch.float32\)", code)),
                    len(set(re.findall(r"ufp4_unit_tensor_scale\w*", code)) - {"ufp4_unit_tensor_scale"}))
                out[f"{spec}/{int(paired)}/{name}/returned"] = returned.count("ufp4_unit_tensor_scale")
    return out


def _unit_fill_check() -> dict:
    """A backward's dequantizations of saved codes as the dense-GEMM pass writes them (one-level scales): their
    tensor scale one ``full([], 1.0)`` of the graph. Per pairing: the wrapper's launches and the tensor-scale
    argument each dequantize job was passed."""
    from ufp4_compile import lowering
    from ufp4_compile.lowering import kernel_calls
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()
    spec = "int4/16/fp32/nearest"

    def f(codes, scales, w_codes, w_scales):
        one = torch.full([], 1.0, dtype=torch.float32, device=codes.device)
        x = torch.ops.ufp4.dequantize(codes, scales, one, 0, spec, torch.bfloat16)
        w = torch.ops.ufp4.dequantize(w_codes, w_scales, one, 0, spec, torch.bfloat16)
        return x, w

    out = {}
    for paired in (False, True):
        with kernel_calls.pair_launches(paired):
            code = wrapper_code(f, ((128, 512), torch.uint8), ((16, 512), torch.float32), ((64, 256), torch.uint8),
                                ((8, 256), torch.float32))
        body = code[code.index("def call("):]
        out[str(int(paired))] = dict(
            launches=[re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", body)],
            # each job's arguments start (codes, scales, tensor scale): -1 where the launch takes no pointer
            tensor_scales=[ts for line in body.splitlines() if ".run(" in line
                           for ts in re.findall(r"\b(?:w_)?codes_1, (?:w_)?scales_1, ([^,]+),", line)])

    def roundtrip(x, seed):  # a quantization's own tensor scale (the graph's constant 1) into its dequantize
        codes, scales, ts = torch.ops.ufp4.quantize(x, 0, spec, 16, 3, seed, 0)
        return torch.ops.ufp4.dequantize(codes, scales, ts, 0, spec, torch.bfloat16)

    with kernel_calls.pair_launches(False):
        body = wrapper_code(roundtrip, ((256, 512), torch.bfloat16), ((), torch.int64))
    body = body[body.index("def call("):]
    out["constant"] = re.findall(r"_dequantize_kernel_\d+\.run\(\w+, \w+, ([^,]+),", body)
    return out


def _folded_cast_check() -> dict:
    """A linear layer's forward as the pass writes it under autocast: X (bf16) and W's bf16 cast of its FP32
    master copy (a graph input), each quantized row-wise and column-wise. Per format and case (the cast read
    by the quantizations only; the cast also returned): the wrapper's launches, whether the cast was computed,
    and the ``ROUND`` constexprs the launches' definitions carry."""
    from ufp4_compile import lowering
    from ufp4_compile.lowering import kernel_calls
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()
    out = {}
    for spec in ("int4/16/fp32/nearest", "int4/16/e4m3/nearest"):
        for returned in (False, True):
            def f(x, w, seed):
                wc = torch.ops.prims.convert_element_type(w, torch.bfloat16)
                outs = [torch.ops.ufp4.quantize_dequantize(x, 1, spec, 16, 3, seed, 0, torch.bfloat16)[0],
                        *torch.ops.ufp4.quantize(x, 0, spec, 16, 3, seed, 1 << 32)[:2],
                        *torch.ops.ufp4.quantize(wc, 0, spec, 16, 5, seed, 7)[:2],
                        torch.ops.ufp4.quantize_dequantize(wc, 1, spec, 16, 5, seed, 3, torch.bfloat16)[0]]
                return outs + [wc] if returned else outs

            code = wrapper_code(f, ((256, 512), torch.bfloat16), ((128, 512), torch.float32), ((), torch.int64))
            body = code[code.index("def call("):]
            out[f"{spec}/{int(returned)}"] = dict(
                launches=[re.sub(r"_\d+$", "", n) for n in re.findall(r"(\w+)\.run\(", body)],
                rounds=sorted(set(re.findall(r"'([A-Z]?_?ROUND)': True", code))),
                w_read=[line.strip().split("(")[0] for line in body.splitlines()
                        if ".run(" in line and re.search(r"\bw_1\b", line)])
    return out


def _definitions(code: str) -> tuple[dict, list]:
    """A wrapper's definitions of our kernels (name -> source, Inductor's ``kernel_name`` entry taken out) and
    its launches of them (names, in order)."""
    quotes = "'" * 3
    pattern = rf"^(\w+) = async_compile\.triton\('\w+', {quotes}(.*?){quotes}, device_str"
    sources = dict(re.findall(pattern, code, re.M | re.S))
    sources = {name: re.sub(r"'kernel_name': '\w+', ", "", src) for name, src in sources.items()
               if not name.startswith("triton_")}  # ours, not Inductor's
    launches = re.findall(r"^\s*(\w+)\.run\(", code, re.M)
    return sources, [name for name in launches if name in sources]


def _shared_definitions_check() -> dict:
    """Stochastic quantizations of three tensors of one shape and one of another, each with its own Philox
    offset and RHT seed (as a step's layers differ), one launch each; and two layers' backward quantizations
    and dequantizations, paired as in a step; lowered with our kernels' definitions shared (the default) and
    once per launch site (Inductor's keying on scalar values)."""
    from ufp4_compile import lowering
    from ufp4_compile.lowering import kernel_calls
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()
    spec = "int4/16/fp32/stochastic"

    def quantizations(x, y, seed):
        outs = [torch.ops.ufp4.quantize(t, 1, spec, 16, 3 + i, seed, 16 * (i + 1))
                for i, t in enumerate((x, x * 2, x * 3, y))]
        return tuple(t for o in outs for t in o)

    def backward(dy, x, w, seed):
        outs = []
        for i, g in enumerate((dy, dy * 2)):
            xc, xs, xt = torch.ops.ufp4.quantize(x * (i + 1), 0, spec, 16, 5 + i, seed, 0)
            wc, ws, wt = torch.ops.ufp4.quantize(w * (i + 1), 0, spec, 16, 7 + i, seed, 0)
            a, at = torch.ops.ufp4.quantize_dequantize(g, 1, spec, 16, 9 + i, seed, 32 * i + 16, torch.bfloat16)
            b, bt = torch.ops.ufp4.quantize_dequantize(g, 0, spec, 16, 11 + i, seed, 32 * i + 32, torch.bfloat16)
            outs += [a, at, b, bt, torch.ops.ufp4.dequantize(xc, xs, xt, 0, spec, torch.bfloat16),
                     torch.ops.ufp4.dequantize(wc, ws, wt, 0, spec, torch.bfloat16)]
        return tuple(outs)

    out = {}
    for share in (True, False):
        kernel_calls.SHARE_DEFINITIONS = share
        try:
            with kernel_calls.pair_launches(False):
                code = wrapper_code(quantizations, ((256, 512), torch.bfloat16), ((512, 256), torch.bfloat16),
                                    ((), torch.int64))
            with kernel_calls.pair_launches(True):
                back = wrapper_code(backward, ((256, 512), torch.bfloat16), ((256, 256), torch.bfloat16),
                                    ((512, 256), torch.bfloat16), ((), torch.int64))
        finally:
            kernel_calls.SHARE_DEFINITIONS = True
        out[f"{int(share)}/quantize"], out[f"{int(share)}/backward"] = _definitions(code), _definitions(back)
    return out


if __name__ == "__main__":
    out = {f"{spec}/{rht}/{axis}": _wrapper(spec, rht, axis) for spec, rht, axis in CASES}
    out["shared_definitions"] = _shared_definitions_check()
    out["tensor_scales"] = _unread_tensor_scales()
    out["unit_fill"] = _unit_fill_check()
    out["pairs"] = _pair_check()
    out["constant_scalars"] = _compile_with_constant_scalars()
    out["access_memo"] = _memoized_analysis_check()
    out["source_memo"] = _source_memo_check()
    out["folded_cast"] = _folded_cast_check()
    print(json.dumps(out))


def test_quantizations_and_dequantizations_share_launches_when_pairing(wrappers):
    """With pairing on (the default), a quantization shares the one-read dual launch with its
    tensor's other-axis quantization where the dual kernel takes both (x's row-wise values and column-wise
    codes), else one launch of the pair kernel with the next one of the same format along the same kind of
    axis whose inputs exist, else along the other axis (x's column-wise values with y's row-wise values); with
    the dual kernel last, same-axis partners come first (x's and y's row-wise values; x's column-wise codes
    and values), and with dual launches off one tensor's two axes take the pair kernel. A format whose
    row-wise and column-wise tiles take different warp counts (nvfp4's E4M3) pairs in the dual kernel (its own
    tile) and along one kind of axis, not across; its two jobs' global-amax pre-passes read the tensor once in
    one launch (two tensors' in one launch before a two-duals launch). The
    access analysis sees each pair launch read both inputs and write both results. Two neighbouring dequantizations (of any formats) become
    one launch, a third its own. Off, every quantization and dequantization is its own launch."""
    pairs = wrappers["pairs"]
    for spec in ("int4/16/fp32/stochastic", "int4/16/fp32/nearest"):  # in the scheduler's order: compare as sets
        assert pairs[f"{spec}/0"] == ["_quantize_kernel"] * 4
        # x's row values with its column codes from one read (the dual kernel first, the default), then x's
        # column values with y's row values (other-axis pairs: on without CUDA graphs)
        assert sorted(pairs[f"{spec}/1"]) == ["_quantize_dual_kernel", "_quantize_pair_kernel"]
        # the dual kernel last: x's and y's row values, x's column codes and values
        assert pairs[f"{spec}/duallast"] == ["_quantize_pair_kernel"] * 2
        assert pairs[f"{spec}/alone/0"] == ["_quantize_kernel"] * 2
        assert pairs[f"{spec}/alone/1"] == ["_quantize_dual_kernel"]
        assert pairs[f"{spec}/alone/nodual"] == ["_quantize_pair_kernel"]
    e4m3, alone = ["_amax_kernel", "_quantize_kernel"], "e2m1/16/e4m3/nearest/alone"
    # each quantization its own launch after its own pre-pass; independent launches in the scheduler's order
    assert sorted(pairs["e2m1/16/e4m3/nearest/0"]) == sorted(e4m3 * 4)
    assert sorted(pairs[f"{alone}/0"]) == sorted(pairs[f"{alone}/nodual"]) == sorted(e4m3 * 2)
    # x's row values and column codes from one read, their pre-passes too; x's column values and y's
    # row values each alone (their tiles take different warp counts)
    assert sorted(pairs["e2m1/16/e4m3/nearest/1"]) == sorted(["_dual_amax_kernel", "_quantize_dual_kernel"] + e4m3 * 2)
    assert pairs[f"{alone}/1"] == ["_dual_amax_kernel", "_quantize_dual_kernel"]
    # the dual kernel last: x's and y's row values, x's column codes and values, in the pair kernel
    assert pairs["e2m1/16/e4m3/nearest/duallast"] == ["_amax_pair_kernel", "_quantize_pair_kernel"] * 2
    for spec in ("int4/16/fp32/stochastic", "int4/16/fp32/nearest"):  # X's and W's duals in one launch
        assert pairs[f"{spec}/two/1"] == ["_quantize_two_duals_kernel"]
        assert pairs[f"{spec}/two/0"] == ["_quantize_dual_kernel"] * 2
    assert pairs["e2m1/16/e4m3/nearest/two/1"] == ["_two_dual_amax_kernel", "_quantize_two_duals_kernel"]
    # NVFP4's weights (16 x 16 blocks, no RHT, round to nearest): one launch writes the row-wise values and
    # the column-wise codes, after one pre-pass
    assert pairs["16x16/1"] == e4m3 and pairs["16x16/0"] == e4m3 * 2
    # NVFP4's linear forward: X's dual and W's one launch as one, after one pre-pass launch for the three jobs;
    # with two_duals off, X's dual (and its dual pre-pass) and W's launch (and its pre-pass)
    assert pairs["nvfp4/two/1"] == ["_dual_single_amax_kernel", "_quantize_dual_single_kernel"]
    assert sorted(pairs["nvfp4/two/0"]) == sorted(["_dual_amax_kernel", "_quantize_dual_kernel"] + e4m3)
    single = {(tuple(reads), tuple(writes)) for reads, writes, _ in pairs["dual_single_accesses"]}
    assert single, "the dual-single kernel was never analysed"
    for reads, writes in single:  # X read as a_x_ptr, W as c_x_ptr; W's codes, scales and values written
        assert {"a_x_ptr", "c_x_ptr"} <= set(reads)
        assert {"a_values_ptr", "b_codes_ptr", "b_scales_ptr", "c_codes_ptr", "c_scales_ptr", "c_values_ptr",
                "c_ts_ptr"} <= set(writes)
    assert pairs["dequantize/0"] == ["_dequantize_kernel"] * 3
    assert sorted(pairs["dequantize/1"]) == ["_dequantize_kernel", "_dequantize_pair_kernel"]
    for reads, writes, _ in pairs["dequantize_pair_accesses"]:
        assert set(writes) == {"a_out_ptr", "b_out_ptr"}
    assert pairs["dequantize_pair_accesses"], "the dequantize pair kernel was never analysed"
    accesses = {(tuple(reads), tuple(writes), fuse) for reads, writes, fuse in pairs["pair_accesses"]}
    for reads, _, _ in accesses:
        assert {"a_x_ptr", "b_x_ptr"} <= set(reads)
    # the written outputs, tensor scales aside: a job writes its tensor scale only where a node reads it
    # (test_a_tensor_scale_nobody_reads_gets_no_buffer), which differs between these graphs
    outs = lambda writes: frozenset(w for w in writes if not w.endswith("_ts_ptr"))
    rows, cols = {"a_values_ptr", "b_values_ptr"}, {"a_codes_ptr", "a_scales_ptr", "b_values_ptr"}
    row_col = {"a_values_ptr", "b_codes_ptr", "b_scales_ptr"}
    assert {outs(writes) for _, writes, _ in accesses} == {frozenset(rows), frozenset(cols), frozenset(row_col)}
    dual = {(tuple(reads), tuple(writes)) for reads, writes, _ in pairs["dual_accesses"]}
    assert dual and all("a_x_ptr" in reads for reads, _ in dual)
    # X's row-wise values and column-wise codes; dY's two values (the backward with dual_dequantize off)
    assert {outs(writes) for _, writes in dual} == {frozenset(row_col), frozenset(rows)}
    two = {outs(writes) for reads, writes, _ in pairs["two_duals_accesses"]}
    assert two == {frozenset(row_col | {w.replace("a_", "c_").replace("b_", "d_") for w in row_col})}
    assert all({"a_x_ptr", "c_x_ptr"} <= set(reads) for reads, _, _ in pairs["two_duals_accesses"])


def test_dual_launch_takes_the_backward_dequantizations(wrappers):
    """A linear layer's backward: dY's two quantizations and the dequantizations of X's and W's saved codes
    lower to one launch (E4M3: after dY's two global-amax pre-passes from one read of it), which reads dY and both
    codes and writes dY's two results and both dequantized operands; with dual_dequantize off, the dual
    launch and the dequantize pair."""
    pairs = wrappers["pairs"]
    assert pairs["int4/16/fp32/stochastic/back/1"] == ["_quantize_dual_dequantize_kernel"]
    assert sorted(pairs["int4/16/fp32/stochastic/back/0"]) == ["_dequantize_pair_kernel", "_quantize_dual_kernel"]
    assert pairs["e2m1/16/e4m3/stochastic/back/1"] == ["_dual_amax_kernel", "_quantize_dual_dequantize_kernel"]
    assert sorted(pairs["e2m1/16/e4m3/stochastic/back/0"]) == ["_dequantize_pair_kernel", "_dual_amax_kernel",
                                                               "_quantize_dual_kernel"]
    accesses = pairs["dual_dequantize_accesses"]
    assert accesses, "the dual-dequantize kernel was never analysed"
    written = set()
    for reads, writes, _ in accesses:
        assert {"a_x_ptr", "c_codes_ptr", "c_scales_ptr", "d_codes_ptr", "d_scales_ptr"} <= set(reads)
        written.add(frozenset(writes))
    # UFP4's one-level tensor scales are the graph's constant (no pointer); E4M3's are written
    values = {"a_values_ptr", "b_values_ptr", "c_out_ptr", "d_out_ptr"}
    assert written == {frozenset(values), frozenset(values | {"a_ts_ptr", "b_ts_ptr"})}


def test_memos_take_either_torch_api():
    """torch 2.11 names the analysis identify_mutated_tensors (a list of written argument names) and its
    source-closure function takes the kernel only; later versions identify_accessed_tensors and an
    epilogue_fusion argument. The memos wrap whichever exists, serve our kernels once per variant, pass other
    kernels through, and leave a module with neither untouched."""
    import types

    from ufp4_compile.lowering import kernel_calls

    calls = []
    # Stands for one of our jit kernels: what the memos read of one (its module, its parameters).
    class Kernel:
        fn = types.SimpleNamespace(__module__="ufp4_compile.kernels.quantize")
        params = [types.SimpleNamespace(name="BLOCK", is_constexpr=True)]

    _quantize_kernel = Kernel()

    def identify_mutated_tensors(kernel, kwargs, tma_descriptor_metadata):
        calls.append(kernel)
        return ["codes_ptr"]

    def closure_source(kernel):  # torch 2.11's signature
        calls.append(("source", kernel))
        return f"src of {kernel}"

    def foreign():
        pass

    wrap = types.SimpleNamespace(identify_mutated_tensors=identify_mutated_tensors)
    wrapper = types.SimpleNamespace(user_defined_triton_kernel_transitive_closure_source_code=closure_source)
    assert kernel_calls.memoize_access_analysis(wrap) == "identify_mutated_tensors"
    assert kernel_calls.memoize_closure_source(wrapper) is True
    analyse = wrap.identify_mutated_tensors
    assert analyse is not identify_mutated_tensors and analyse.original is identify_mutated_tensors
    kernel_calls._ACCESSES.clear()
    for _ in range(3):
        assert analyse(_quantize_kernel, {"L": 4096, "BLOCK": 16}, {}) == ["codes_ptr"]
    assert calls == [_quantize_kernel]  # served from the memo after the first
    analyse(foreign, {}, {}), analyse(foreign, {}, {})
    assert calls == [_quantize_kernel, foreign, foreign]
    source = wrapper.user_defined_triton_kernel_transitive_closure_source_code
    assert source(_quantize_kernel) == source(_quantize_kernel) == f"src of {_quantize_kernel}"
    assert calls.count(("source", _quantize_kernel)) == 1
    assert kernel_calls.memoize_access_analysis(wrap) == "identify_mutated_tensors"  # idempotent
    assert wrap.identify_mutated_tensors is analyse
    kernel_calls._ACCESSES.clear()

    bare = types.SimpleNamespace()
    assert kernel_calls.memoize_access_analysis(bare) is None and kernel_calls.memoize_closure_source(bare) is False
    assert vars(bare) == {}


def test_a_unit_fill_as_tensor_scale_is_left_out(wrappers):
    """The dense-GEMM pass's tensor scale for saved codes, one ``full([], 1.0)`` a partition: the dequantize
    launches (alone or paired) take no pointer for it and no fill kernel is launched."""
    unit = wrappers["unit_fill"]
    assert unit["0"] == {"launches": ["_dequantize_kernel"] * 2, "tensor_scales": ["-1", "-1"]}
    assert unit["1"] == {"launches": ["_dequantize_pair_kernel"], "tensor_scales": ["-1", "-1"]}
    assert unit["constant"] == ["-1"]  # the graph's constant 1 as a quantization's tensor scale, likewise


def test_one_level_tensor_scales_are_the_graphs_constant_one(wrappers):
    """One-level scales (UFP4): a quantization whose tensor scale nobody reads, or that is saved for a backward,
    is launched without a tensor-scale pointer and allocates no buffer for it, alone or sharing a launch; a saved
    one is the graph's constant 1 (one per graph, however many). One returned to the user keeps a buffer of its
    own. Two-level (E4M3) scales keep a buffer each (the GEMM epilogue's factor)."""
    counts = wrappers["tensor_scales"]
    for paired in (0, 1):
        int4 = "int4/16/fp32/stochastic"
        assert counts[f"{int4}/{paired}/unread"] == counts[f"{int4}/{paired}/saved"] == [0, 0]  # JSON: lists
        assert counts[f"{int4}/{paired}/saved/returned"] == 2
        assert counts[f"{int4}/{paired}/read"] == [2, 0] and counts[f"{int4}/{paired}/read/returned"] == 0
        for read in ("unread", "read", "saved"):
            assert counts[f"e2m1/16/e4m3/nearest/{paired}/{read}"] == [2, 0]


def test_a_kernel_variant_is_defined_once_whatever_its_scalars(wrappers):
    """Launches of one kernel variant that differ only in scalar values (Philox offsets, RHT seeds, sizes of
    one class) share one definition, so the graph compiles the kernel once; each launch passes its own
    values, and each definition kept is exactly the source Inductor would have compiled for every launch it
    serves (its launch configuration, signature, specializations and constexprs)."""
    checked = wrappers["shared_definitions"]
    for graph in ("quantize", "backward"):
        shared, launches = checked[f"1/{graph}"]
        apart, apart_launches = checked[f"0/{graph}"]
        assert len(launches) == len(apart_launches) >= 4
        assert len(shared) < len(apart), (sorted(shared), sorted(apart))
        for ours, theirs in zip(launches, apart_launches):
            assert shared[ours] == apart[theirs], (ours, theirs)
    _, apart = checked["0/quantize"]
    assert [re.sub(r"_\d+$", "", n) for n in apart] == ["_quantize_kernel"] * 4 and len(set(apart)) == 4
    _, launches = checked["1/quantize"]
    assert len(set(launches[:3])) == 1  # x's three launches: one definition (y's, another shape, may differ)


def test_shared_definitions_change_only_our_kernels_integers():
    """The definition wrapper hands Inductor a representative of each non-constexpr integer of our kernels
    (same class: 1, a multiple of 16, past INT32_MAX) and everything else as it is; another kernel, or one of
    ours with several configs (an autotuner would pick by the values), keeps its values. Installing it twice
    wraps once; a class without the method is left alone."""
    import types

    from ufp4_compile.lowering import kernel_calls

    seen = []

    class Wrapper:
        def define_user_defined_triton_kernel(self, kernel, configs, kwargs, *rest):
            seen.append(dict(kwargs))
            return "name"

    class Kernel:
        fn = types.SimpleNamespace(__module__="ufp4_compile.kernels.quantize")
        params = [types.SimpleNamespace(name="BLOCK", is_constexpr=True),
                  types.SimpleNamespace(name="offset", is_constexpr=False)]

    assert kernel_calls.define_once_per_variant(Wrapper) is True
    define = Wrapper.define_user_defined_triton_kernel
    assert kernel_calls.define_once_per_variant(Wrapper) is True and Wrapper.define_user_defined_triton_kernel is define
    kwargs = {"BLOCK": 48, "x_ptr": "buf0", "scale": 0.5, "flag": True, "none": None}
    values = {"one": 1, "zero": 0, "sixteen": 4096, "odd": 939, "negative": -3, "wide": 2**33, "wide_odd": 2**33 + 5}
    Wrapper().define_user_defined_triton_kernel(Kernel(), [object()], {**kwargs, **values})
    assert {k: seen[-1][k] for k in kwargs} == kwargs  # the constexpr, a tensor, a float, a bool, None
    got = {k: int(seen[-1][k]) for k in values}
    for name, value in values.items():
        assert (got[name] == 1) == (value == 1) and (got[name] % 16 == 0) == (value % 16 == 0), name
        assert (got[name] <= 2**31 - 1) == (value <= 2**31 - 1), name
    assert len({got["sixteen"], got["zero"]}) == 1 and got["odd"] == got["negative"]
    foreign = types.SimpleNamespace(fn=types.SimpleNamespace(__module__="user"), params=Kernel.params)
    for kernel, configs in ((foreign, [object()]), (Kernel(), [object(), object()])):
        Wrapper().define_user_defined_triton_kernel(kernel, configs, {"offset": 939})
        assert seen[-1] == {"offset": 939}
    bare = type("Bare", (), {})
    assert kernel_calls.define_once_per_variant(bare) is False
    assert not hasattr(bare, "define_user_defined_triton_kernel")


@pytest.mark.parametrize("returns, visible, expected", [
    ("all", None, True),  # the graph does not say which outputs reach the user: every one may
    ("all", [0, 1], False),  # the tensor scale an output saved for a backward
    ("all", [0, 1, 2], True),
    ("view", [0], True),  # a view of it leaves the graph
    ("codes", None, False),  # nobody reads it
])
def test_a_tensor_scale_reaches_the_user_by_a_visible_output_or_a_view(returns, visible, expected):
    """Which one-level tensor scales keep a buffer of their own (the user owns what it is handed; the graph's
    constant 1 serves the rest): those of outputs Inductor marks user-visible, or all outputs where it does
    not say, and those that leave through a view."""
    from torch.fx.experimental.proxy_tensor import make_fx

    import ufp4_compile.ops  # noqa: F401  (defines the ufp4 ops)
    from ufp4_compile.lowering import kernel_calls

    def f(x, seed):
        codes, scales, ts = torch.ops.ufp4.quantize(x, 1, "int4/16/fp32/nearest", 16, 3, seed, 0)
        if returns == "view":
            return codes, ts.reshape(1)
        return (codes, scales, ts) if returns == "all" else (codes, scales)

    gm = make_fx(f)(torch.randn(32, 64), torch.tensor(3))
    if visible is not None:
        next(n for n in gm.graph.nodes if n.op == "output").meta["user_visible_output_idxs"] = visible
    node = next(n for n in gm.graph.nodes if n.target is torch.ops.ufp4.quantize.default)
    assert kernel_calls._tensor_scale_returned(node) is expected
    assert kernel_calls._tensor_scale_returned(None)  # unknown: kept


def test_a_weight_cast_read_only_by_quantizations_is_folded_into_their_launches(wrappers):
    """W's bf16 cast of its FP32 master copy, read by its two quantizations only: no cast kernel and no bf16
    copy; the launches (the two-duals launch, and for E4M3 scales the pre-pass before it) read the FP32 input
    and round it as they load it (``C_ROUND``, W's jobs; X's stay unrounded). Where the cast has another reader
    (here: returned), it is computed as before and the launches read it, unrounded."""
    folded = wrappers["folded_cast"]
    for spec, prepass in (("int4/16/fp32/nearest", []), ("int4/16/e4m3/nearest", ["_two_dual_amax_kernel"])):
        alone, kept = folded[f"{spec}/0"], folded[f"{spec}/1"]
        assert alone["launches"] == [*prepass, "_quantize_two_duals_kernel"]
        assert [re.sub(r"_\d+\.run$", "", n) for n in alone["w_read"]] == alone["launches"]
        assert alone["rounds"] == ["C_ROUND"]
        assert kept["launches"] == ["triton_poi_fused", *prepass, "_quantize_two_duals_kernel"]
        assert [re.sub(r"_\d+\.run$", "", n) for n in kept["w_read"]] == ["triton_poi_fused"]
        assert kept["rounds"] == []
