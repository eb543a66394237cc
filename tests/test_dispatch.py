"""Dispatch of GEMM paths per (formats, compute dtype, target), with faked targets: no GPU needed."""

import dataclasses

import pytest
import torch

from ufp4_compile.dispatch import GemmPath, Target, current_target, gemm_paths, recipe_paths
from ufp4_compile.numerics.formats import Grid, OperandFormat, ScaleFormat
from ufp4_compile.recipes import PRESETS, ComputeDtype, Role

SM90, SM100, GFX950, CPU = Target("cuda", 90), Target("cuda", 100), Target("hip", "gfx950"), Target("cpu")
NVFP4 = OperandFormat(Grid.E2M1, 16, ScaleFormat.E4M3)
MXFP4 = OperandFormat(Grid.E2M1, 32, ScaleFormat.E8M0)
INT4_MX = OperandFormat(Grid.INT4, 32, ScaleFormat.E8M0)
INT4_FP32 = OperandFormat(Grid.INT4, 16, ScaleFormat.FP32)
INT4_NV = OperandFormat(Grid.INT4, 16, ScaleFormat.E4M3)
E2M1_FP32 = OperandFormat(Grid.E2M1, 16, ScaleFormat.FP32)


def paths(a, b, target, compute=ComputeDtype.BF16):
    return [d.path for d in gemm_paths(a, b, compute, target)]


@pytest.mark.parametrize("text, expected", [
    ("sm_100", Target("cuda", 100)), ("sm90a", Target("cuda", 90)), ("cuda:103", Target("cuda", 103)),
    ("gfx950", Target("hip", "gfx950")), ("hip:gfx942", Target("hip", "gfx942")), ("CPU", Target("cpu")),
])
def test_target_parse(text, expected):
    assert Target.parse(text) == expected
    assert Target.parse(expected.name) == expected


@pytest.mark.parametrize("bad", ["sm_", "h100", "gfx", "cuda:x", ""])
def test_target_parse_rejects_with_valid_forms(bad):
    with pytest.raises(ValueError, match="sm_<capability>"):
        Target.parse(bad)


@pytest.mark.parametrize("backend, arch, field", [
    ("rocm", "gfx950", "backend"), ("cuda", "100", "arch"), ("hip", 950, "arch"), ("cpu", 90, "arch"),
    ("cuda", True, "arch"),
])
def test_target_validates_fields(backend, arch, field):
    with pytest.raises(ValueError, match=f"{field}="):
        Target(backend, arch)


def test_warp_sizes():
    assert (SM100.warp_size, GFX950.warp_size, Target("hip", "gfx1201").warp_size) == (32, 64, 32)


def test_nvfp4_native_on_sm100_only():
    first = gemm_paths(NVFP4, dataclasses.replace(NVFP4, block_2d=True), "bf16", SM100)[0]
    assert first.path is GemmPath.NATIVE
    assert (first.a_elem, first.b_elem, first.scale) == ("e2m1", "e2m1", ScaleFormat.E4M3)
    assert first.instruction == "tcgen05.mma kind::mxf4nvf4"
    assert "epilogue" in first.reason
    gfx = gemm_paths(NVFP4, NVFP4, "bf16", GFX950)
    assert [d.path for d in gfx] == [GemmPath.EMULATED, GemmPath.DEQUANT_MM]
    assert "E8M0 scales only" in gfx[0].reason


@pytest.mark.parametrize("target, instruction", [(SM100, "tcgen05.mma kind::mxf4"),
                                                 (Target("cuda", 103), "tcgen05.mma kind::mxf4"),
                                                 (GFX950, "v_mfma_scale_f32_*_f8f6f4")])
def test_mxfp4_native(target, instruction):
    first = gemm_paths(MXFP4, MXFP4, "bf16", target)[0]
    assert (first.path, first.instruction, first.a_elem) == (GemmPath.NATIVE, instruction, "e2m1")


@pytest.mark.parametrize("target, instruction", [(SM100, "tcgen05.mma kind::mxf8f6f4"),
                                                 (GFX950, "v_mfma_scale_f32_*_f8f6f4")])
def test_int4_with_e8m0_runs_as_fp8(target, instruction):
    first = gemm_paths(INT4_MX, INT4_MX, "bf16", target)[0]
    assert (first.path, first.a_elem, first.b_elem, first.instruction) == (
        GemmPath.NATIVE, "e4m3", "e4m3", instruction)
    mixed = gemm_paths(MXFP4, INT4_MX, "bf16", target)[0]
    assert (mixed.a_elem, mixed.b_elem) == ("e2m1", "e4m3")
    if target.backend == "cuda":
        assert mixed.instruction == "tcgen05.mma kind::mxf8f6f4"


@pytest.mark.parametrize("a, b, why", [
    (INT4_FP32, INT4_FP32, "FP32 block scales"),
    (E2M1_FP32, E2M1_FP32, "FP32 block scales"),
    (INT4_NV, INT4_NV, "E8M0 scales of block 32 only"),
    (OperandFormat(Grid.E2M1, 16, ScaleFormat.E8M0), OperandFormat(Grid.E2M1, 16, ScaleFormat.E8M0),
     "per 32 elements only"),
    (OperandFormat(Grid.E2M1, 32, ScaleFormat.E4M3), OperandFormat(Grid.E2M1, 32, ScaleFormat.E4M3),
     "per 16 elements only"),
    (OperandFormat(Grid.E2M1, 32, ScaleFormat.E4M3), MXFP4, "per 16 elements only"),
    (NVFP4, OperandFormat(Grid.E2M1, 16, ScaleFormat.E8M0), "per 32 elements only"),
])
@pytest.mark.parametrize("target", [SM100, GFX950])
def test_non_native_formats_fall_back_to_emulation_with_reason(a, b, why, target):
    decisions = gemm_paths(a, b, "bf16", target)
    assert [d.path for d in decisions] == [GemmPath.EMULATED, GemmPath.DEQUANT_MM]
    assert why in decisions[0].reason


def test_operands_need_one_block_size():
    with pytest.raises(ValueError, match="same block size"):
        gemm_paths(NVFP4, MXFP4, "bf16", SM100)


@pytest.mark.parametrize("fmt", [NVFP4, MXFP4, INT4_MX, INT4_FP32, INT4_NV])
def test_sm90_always_takes_the_hopper_paths(fmt):
    b = dataclasses.replace(fmt, block_2d=fmt.block == 16)
    assert paths(fmt, b, SM90) == [GemmPath.EMULATED, GemmPath.DEQUANT_MM]
    assert "sm_90 has no block-scaled MMA" in gemm_paths(fmt, b, "bf16", SM90)[0].reason


def test_cpu_and_old_gpus_only_dequantize():
    assert paths(MXFP4, MXFP4, CPU) == [GemmPath.DEQUANT_MM]
    decisions = gemm_paths(MXFP4, MXFP4, "bf16", Target("cuda", 75))
    assert [d.path for d in decisions] == [GemmPath.DEQUANT_MM]
    assert "bf16 tensor cores" in decisions[0].reason


def test_fp32_compute_keeps_native_and_changes_emulation():
    # Code x E8M0/E4M3 scale is exact in bf16, so FP32 compute gives the same product: native stays.
    assert paths(MXFP4, MXFP4, SM100, ComputeDtype.FP32)[0] is GemmPath.NATIVE
    emulated = gemm_paths(INT4_FP32, INT4_FP32, "fp32", SM90)[0]
    assert "FP32 partial sums" in emulated.reason
    assert "2^-9" in gemm_paths(INT4_FP32, INT4_FP32, "bf16", SM90)[0].reason


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="compute_dtype="):
        gemm_paths(MXFP4, MXFP4, "fp16", SM100)
    with pytest.raises(ValueError, match="a_fmt and b_fmt"):
        gemm_paths("e2m1/32/e8m0/nearest", MXFP4, "bf16", SM100)
    with pytest.raises(ValueError, match="sm_<capability>"):
        gemm_paths(MXFP4, MXFP4, "bf16", "blackwell")


# Expected best path per preset, role and target: derived from the formats of each recipe, role by role.
EXPECTED_FIRST = {
    "ufp4": {"sm_90": "emulated", "sm_100": "emulated", "gfx950": "emulated", "cpu": "dequant-mm"},
    "ufp4-nv": {"sm_90": "emulated", "sm_100": "emulated", "gfx950": "emulated", "cpu": "dequant-mm"},
    "e2m1-ref": {"sm_90": "emulated", "sm_100": "emulated", "gfx950": "emulated", "cpu": "dequant-mm"},
    "nvfp4": {"sm_90": "emulated", "sm_100": "native", "gfx950": "emulated", "cpu": "dequant-mm"},
    "mxfp4": {"sm_90": "emulated", "sm_100": "native", "gfx950": "native", "cpu": "dequant-mm"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FIRST))
@pytest.mark.parametrize("target", [SM90, SM100, GFX950, CPU])
def test_presets(name, target):
    by_role = recipe_paths(PRESETS[name], target)
    assert set(by_role) == set(Role)
    for role, decisions in by_role.items():
        assert decisions[0].path.value == EXPECTED_FIRST[name][target.name], (role, decisions[0].reason)
        assert decisions[-1].path is GemmPath.DEQUANT_MM


def test_bf16_preset_has_no_quantized_gemms():
    assert recipe_paths(PRESETS["bf16"], SM100) == {}


class _FakeProps:
    gcnArchName = "gfx950:sramecc+:xnack-"


def test_current_target_reads_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert current_target() == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (10, 0))
    assert current_target() == SM100
    monkeypatch.setattr(torch.version, "hip", "7.0")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: _FakeProps())
    assert current_target() == GFX950
    assert gemm_paths(MXFP4, MXFP4)[0].path is GemmPath.NATIVE  # target=None reads the (faked) device
    assert current_target(torch.device("cpu")) == CPU  # a CPU tensor's device, GPU or not
    assert current_target(torch.device("cuda", 0)) == GFX950


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_running_gpu_dispatch():
    target = current_target()
    decisions = gemm_paths(MXFP4, MXFP4)
    assert decisions[0].target == target
    if target.backend == "cuda" and target.arch == 90:  # H100 / H200: the Hopper paths only
        assert [d.path for d in decisions] == [GemmPath.EMULATED, GemmPath.DEQUANT_MM]
    assert (decisions[0].path is GemmPath.NATIVE) == target.has_native_block_scaled_mma
