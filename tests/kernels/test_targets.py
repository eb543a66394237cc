"""Compile-only verification for GPUs we do not have: the native GEMM must use the block-scaled MMA.

The unit tests run in-process with a fake compiler. The compile test runs ``ufp4 kernels`` in a fresh
process without ``TRITON_INTERPRET`` (this suite sets it on CPU machines, and interpreter kernels cannot
be compiled) and reads its JSON report.
"""

import json
import os
import subprocess
import sys
import types

import pytest

triton = pytest.importorskip("triton", reason="compiling kernels needs triton")

from ufp4_compile.dispatch import GemmPath, Target  # noqa: E402
from ufp4_compile.kernels import targets  # noqa: E402
from ufp4_compile.kernels.targets import (  # noqa: E402
    KernelVariant, compile_variant, find_matrix_instructions, instruction_matches, short_instruction)
from ufp4_compile.numerics.formats import OperandFormat  # noqa: E402
from ufp4_compile.recipes import PRESETS  # noqa: E402

SM90, SM100, GFX950 = Target("cuda", 90), Target("cuda", 100), Target("hip", "gfx950")
PTX = """
    tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X [%r1], %rd2, %rd3, %r4, [%r5], [%r6], p;
    wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f1}, %rd1, %rd2, p, 1, 1, 0, 1;
    tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X [%r7], %rd8, %rd9, %r4, [%r5], [%r6], p;
"""
AMDGCN = "  v_mfma_scale_f32_32x32x64_f8f6f4 a[0:15], v[0:7], v[8:15], 0 op_sel_hi:[0,0,0]\n  v_mfma_f32_16x16x32_bf16 v1"


def test_find_matrix_instructions():
    assert find_matrix_instructions(PTX) == (
        "tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X",
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16")
    assert find_matrix_instructions(AMDGCN) == ("v_mfma_scale_f32_32x32x64_f8f6f4", "v_mfma_f32_16x16x32_bf16")
    assert find_matrix_instructions("ld.global.u8 %r1, [%rd1];") == ()


def test_instruction_matches_kind_exactly():
    found = find_matrix_instructions(PTX)
    assert instruction_matches("tcgen05.mma kind::mxf4nvf4", found)
    assert not instruction_matches("tcgen05.mma kind::mxf4", found)  # mxf4 is not mxf4nvf4
    assert instruction_matches("v_mfma_scale_f32_*_f8f6f4", find_matrix_instructions(AMDGCN))
    assert not instruction_matches("v_mfma_scale_f32_*_f8f6f4", ("v_mfma_f32_16x16x32_bf16",))


def test_short_instruction():
    assert short_instruction("tcgen05.mma.cta_group::1.kind::mxf4.block_scale.scale_vec::2X") == \
        "tcgen05.mma kind::mxf4 2X"
    assert short_instruction("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16") == "wgmma m64n128k16 f32.bf16.bf16"
    assert short_instruction("v_mfma_scale_f32_32x32x64_f8f6f4") == "v_mfma_scale_f32_32x32x64_f8f6f4"


class _FakeKernel:
    __name__ = "_fake_kernel"
    arg_names = ["x_ptr", "n", "BLOCK"]


MXFP4 = OperandFormat.from_spec("e2m1/32/e8m0/nearest")
NVFP4 = OperandFormat.from_spec("e2m1/16/e4m3/nearest")


def _variant(formats=(MXFP4, MXFP4), path=GemmPath.NATIVE):
    return KernelVariant.build("fake", "mxfp4", _FakeKernel(), {"x_ptr": "*u8", "n": "i32"}, {"BLOCK": 64},
                               aligned=("x_ptr",), formats=formats, path=path)


def test_build_fills_signature_and_checks_names():
    variant = _variant()
    assert variant.signature == {"x_ptr": "*u8", "n": "i32", "BLOCK": "constexpr"}
    with pytest.raises(ValueError, match="'n' of _fake_kernel has neither"):
        KernelVariant.build("bad", "-", _FakeKernel(), {"x_ptr": "*u8"}, {"BLOCK": 64})
    with pytest.raises(ValueError, match=r"\['y'\] are not arguments"):
        KernelVariant.build("bad", "-", _FakeKernel(), {"x_ptr": "*u8", "n": "i32", "y": "i32"}, {"BLOCK": 64})


def test_used_on_and_expected_follow_dispatch():
    native = _variant()
    assert native.used_on(SM100) and native.used_on(GFX950) and not native.used_on(SM90)
    assert native.expected_instruction(SM100) == "tcgen05.mma kind::mxf4"
    assert native.expected_instruction(SM90) is None
    assert not _variant((NVFP4, NVFP4)).used_on(GFX950)
    emulated = _variant(path=GemmPath.EMULATED)
    assert emulated.used_on(SM90) and emulated.used_on(SM100) and emulated.expected_instruction(SM100) is None
    quantize = _variant(formats=None, path=None)
    assert quantize.used_on(GFX950) and not quantize.used_on(Target("cpu"))


def _fake_compile(asm=None, error=None):
    def compile_fn(source, target, options):
        assert source.attrs == {(0,): [["tt.divisibility", 16]]}
        if error:
            os.write(2, b"x.py:3:4: error: 'ttg.convert_layout' op requires the same element type\n")
            raise RuntimeError("PassManager::run failed")
        key = "amdgcn" if target.backend == "hip" else "ptx"
        return types.SimpleNamespace(asm={key: asm})
    return compile_fn


def test_compile_variant_statuses():
    ok = compile_variant(_variant(), SM100, _fake_compile(asm=PTX.replace("mxf4nvf4", "mxf4")))
    assert (ok.status, ok.compiled, ok.used, ok.error) == ("ok", True, True, None)
    wrong = compile_variant(_variant(), SM100, _fake_compile(asm=PTX))
    assert wrong.status == "FAIL" and wrong.compiled and "expected tcgen05.mma kind::mxf4" in wrong.error
    broken = compile_variant(_variant(), GFX950, _fake_compile(error=True))
    assert (broken.status, broken.compiled) == ("FAIL", False)
    assert broken.error == "RuntimeError: 'ttg.convert_layout' op requires the same element type"
    unused = compile_variant(_variant((NVFP4, NVFP4)), GFX950, _fake_compile(error=True))
    assert unused.status == "unused"
    # An emulated GEMM may use FMAs (an IEEE FP32 tl.dot on sm_90 does): reported, not a failure.
    fma = compile_variant(_variant(path=GemmPath.EMULATED), SM90, _fake_compile(asm="fma.rn.f32 %f1, %f2;"))
    assert (fma.status, fma.instructions) == ("ok", ())


def test_interpreter_kernels_are_reported_not_compiled():
    class InterpretedFunction:
        arg_names = ["x_ptr", "n", "BLOCK"]
    variant = KernelVariant("k", "-", InterpretedFunction(), {"x_ptr": "*u8", "n": "i32", "BLOCK": "constexpr"},
                            {"BLOCK": 64})
    result = compile_variant(variant, SM90, _fake_compile(asm=PTX))
    assert not result.compiled and "TRITON_INTERPRET=1" in result.error


def test_preset_enumeration_covers_every_gemm_and_quantize_call():
    gemms = targets.preset_gemms()
    quantize_calls = targets.preset_quantize_calls()
    key = lambda f: (f.grid, f.scale, f.block)  # noqa: E731 (what a GEMM kernel sees)
    for name, recipe in PRESETS.items():
        for role in recipe.quantized_roles:
            g = recipe.gemm(role)
            match = [p for p in gemms if (key(p.a), key(p.b)) == (key(g.a), key(g.b))]
            assert len(match) == 1 and name in match[0].label.split(", "), (name, role)
            for fmt, rowwise in zip((g.a, g.b), targets.ROLE_ROWWISE[role]):
                assert name in quantize_calls[(fmt, g.rht, rowwise)].split(", "), (name, role, fmt.spec)
    assert len({(key(p.a), key(p.b), p.compute_dtype) for p in gemms}) == len(gemms)  # no duplicates
    assert {p.name for p in gemms} >= {"ufp4", "ufp4-nv", "e2m1-ref", "nvfp4", "mxfp4", "int4-e8m0"}


def test_every_kernel_module_offers_its_variants():
    variants, missing = targets.collect_variants()
    assert missing == {}
    by_name = {v.name: v for v in variants}
    assert len(by_name) == len(variants)  # names are unique
    for (fmt, rht, rowwise), presets in targets.preset_quantize_calls().items():
        orientation = "row-wise" if rowwise else "column-wise"
        variant = by_name[f"quantize[{fmt.spec} rht{rht} {orientation}]"]
        assert variant.recipe == presets and variant.constexprs["ROWWISE"] is rowwise
        if fmt.scale.value == "e4m3":  # two-level scales launch the amax pre-pass first
            assert f"quantize_amax[rht{rht} {orientation}]" in by_name
    for gemm in targets.preset_gemms():
        dequant = by_name[f"scaled_mm[{gemm.name} dequant-bf16]"]
        assert dequant.path is GemmPath.EMULATED and dequant.formats == (gemm.a, gemm.b)
        for fmt in (gemm.a, gemm.b):
            assert by_name[f"dequantize[{fmt.spec.rsplit('/', 1)[0].replace('16x16', '16')}]"].path is \
                GemmPath.DEQUANT_MM
    # A blockscale loop exactly where it is exact with bf16 compute: E4M3/E8M0 scales (FP8 dots for block 32).
    blockscale = sorted(n for n in by_name if "blockscale" in n)
    assert blockscale == ["scaled_mm[int4-e8m0 blockscale-fp8]", "scaled_mm[mxfp4 blockscale-fp8]",
                          "scaled_mm[nvfp4 blockscale-bf16]", "scaled_mm[ufp4-nv blockscale-bf16]"]


def test_a_failing_provider_is_reported(monkeypatch):
    import ufp4_compile.kernels.dequantize as dequantize_module

    def broken():
        raise KeyError("no such format")
    monkeypatch.setattr(dequantize_module, "compile_variants", broken)
    variants, missing = targets.collect_variants(["ufp4_compile.kernels.dequantize"])
    assert variants == [] and "compile_variants() failed (KeyError" in missing["ufp4_compile.kernels.dequantize"]


def test_collect_variants_reports_missing_modules():
    variants, missing = targets.collect_variants(["ufp4_compile.kernels.no_such_module", "ufp4_compile.recipes"])
    assert variants == []
    assert "import failed" in missing["ufp4_compile.kernels.no_such_module"]
    assert "no compile_variants()" in missing["ufp4_compile.recipes"]


# ---- real compilation (one subprocess compiling in one worker per CPU; about 9 minutes for 254
# variants x 3 targets on 2 cores with an empty Triton cache, a few seconds with a warm one) ---------------

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels") / "kernels.json"
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-m", "ufp4_compile", "kernels", "--targets", "sm_90,sm_100,gfx950",
                           "--json", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), f"ufp4 kernels wrote no report (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    data = json.loads(out.read_text())
    data["returncode"], data["stdout"] = proc.returncode, proc.stdout
    return data


def _row(report, kernel, target):
    rows = [r for r in report["results"] if r["kernel"] == kernel and r["target"] == target]
    assert len(rows) == 1, (kernel, target)
    return rows[0]


# Facts of Triton 3.6 (checked by compiling), written out rather than taken from the dispatch.
NATIVE_EXPECTED = [
    ("native_scaled_mm[nvfp4]", "sm_100", ".kind::mxf4nvf4."),
    ("native_scaled_mm[nvfp4-k-tail]", "sm_100", ".kind::mxf4nvf4."),
    ("native_scaled_mm[mxfp4]", "sm_100", ".kind::mxf4."),
    ("native_scaled_mm[mxfp4-k-tail]", "sm_100", ".kind::mxf4."),
    ("native_scaled_mm[int4-e8m0]", "sm_100", ".kind::mxf8f6f4."),
    ("native_scaled_mm[e2m1-x-int4-e8m0]", "sm_100", ".kind::mxf8f6f4."),
    ("native_scaled_mm[mxfp4]", "gfx950", "v_mfma_scale_f32_"),
    ("native_scaled_mm[int4-e8m0]", "gfx950", "v_mfma_scale_f32_"),
    ("native_scaled_mm[e2m1-x-int4-e8m0]", "gfx950", "v_mfma_scale_f32_"),
]


@pytest.mark.slow
@pytest.mark.parametrize("kernel, target, needle", NATIVE_EXPECTED)
def test_native_gemm_uses_block_scaled_mma(report, kernel, target, needle):
    row = _row(report, kernel, target)
    assert row["compiled"] and row["used"] and row["status"] == "ok", row
    assert any(needle in i for i in row["instructions"]), row["instructions"]


@pytest.mark.slow
def test_sm90_upcasts_and_e4m3_scales_stay_off_gfx950(report):
    # sm_90: Triton lowers dot_scaled with E8M0 scales to a bf16 wgmma; the dispatch does not use it there.
    mx = _row(report, "native_scaled_mm[mxfp4]", "sm_90")
    assert mx["compiled"] and not mx["used"] and any("wgmma" in i and "bf16" in i for i in mx["instructions"])
    # NVFP4 (E4M3 scales) does not compile for gfx950 or sm_90 with Triton 3.6; if it starts to, the
    # dispatch (which sends NVFP4 there to the emulated path) should be revisited.
    for target in ("gfx950", "sm_90"):
        nv = _row(report, "native_scaled_mm[nvfp4]", target)
        assert not nv["compiled"] and nv["status"] == "unused", nv


@pytest.mark.slow
def test_every_kernel_compiles_where_dispatch_uses_it(report):
    failing = [r for r in report["results"] if r["status"] == "FAIL"]
    assert failing == [] and report["returncode"] == 0, failing or report["stdout"]
    with_rows = {r["module"] for r in report["results"]}
    assert "ufp4_compile.kernels.native_gemm" in with_rows
    for module in targets.KERNEL_MODULES:  # every kernel module has rows, or says why it has none
        assert (module in with_rows) != (module in report["not_available"]), module


# The Hopper kernels' MMAs (facts of Triton 3.6, checked by compiling): (main loop, target, needle).
EMULATED_EXPECTED = [
    ("dequant-bf16", "sm_90", "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16"),
    ("dequant-bf16", "sm_100", "tcgen05.mma.cta_group::1.kind::f16"),
    ("dequant-bf16", "gfx950", "v_mfma_f32_32x32x16_bf16"),
    ("blockscale-bf16", "sm_90", "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16"),
    ("blockscale-fp8", "sm_90", "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3"),
    ("blockscale-fp8", "sm_100", "tcgen05.mma.cta_group::1.kind::f8f6f4"),
    ("blockscale-fp8", "gfx950", "v_mfma_f32_32x32x16_fp8_fp8"),
]


@pytest.mark.slow
@pytest.mark.parametrize("loop, target, needle", EMULATED_EXPECTED)
def test_emulated_gemm_uses_the_tensor_cores(report, loop, target, needle):
    rows = [r for r in report["results"]
            if r["kernel"].startswith("scaled_mm[") and r["kernel"].endswith(f" {loop}]") and r["target"] == target]
    assert len(rows) >= 2, (loop, rows)
    for row in rows:
        assert row["compiled"] and row["used"] and row["status"] == "ok", row
        assert needle in row["instructions"], (row["kernel"], row["instructions"])


@pytest.mark.slow
def test_quantize_and_dequantize_compile_everywhere(report):
    rows = [r for r in report["results"] if r["kernel"].startswith(("quantize", "dequantize", "sample_median"))]
    variants, _ = targets.collect_variants(["ufp4_compile.kernels.quantize", "ufp4_compile.kernels.quantize_pair_launchers",
                                            "ufp4_compile.kernels.prepass", "ufp4_compile.kernels.dequantize",
                                            "ufp4_compile.kernels.median"])
    assert len(rows) == 3 * len(variants)
    for row in rows:  # element-wise kernels: compiled, used on every GPU, no matrix instruction
        assert row["compiled"] and row["used"] and row["status"] == "ok" and row["instructions"] == [], row


@pytest.mark.slow
def test_report_keeps_variant_then_target_order(report):
    variants, _ = targets.collect_variants()
    expected = [(v.name, t) for v in variants for t in ("sm_90", "sm_100", "gfx950")]
    assert [(r["kernel"], r["target"]) for r in report["results"]] == expected


def test_compile_all_globs_with_literal_brackets():
    # In-process (jobs=1) under the interpreter the kernels are not compilable: each is a reported row.
    results, missing = targets.compile_all([SM90], "scaled_mm[* blockscale-fp8]", ["ufp4_compile.kernels.gemm"],
                                           jobs=1)
    assert missing == {}
    assert [r.kernel for r in results] == ["scaled_mm[mxfp4 blockscale-fp8]", "scaled_mm[int4-e8m0 blockscale-fp8]"]
