"""``ufp4 kernels``: argument handling, the support matrix and the report, with compilation faked."""

import json

import pytest

from ufp4_compile.cli import kernels
from ufp4_compile.cli.main import main
from ufp4_compile.kernels.targets import CompileResult


def _result(status="ok", compiled=True, error=None, target="sm_100"):
    instructions = ("tcgen05.mma.cta_group::1.kind::mxf4.block_scale.scale_vec::2X",) if compiled else ()
    return CompileResult("ufp4_compile.kernels.native_gemm", "native_scaled_mm[mxfp4]", "mxfp4", target, status,
                         compiled, error, instructions, "tcgen05.mma kind::mxf4", True, 0.5)


def _matrix_rows(capsys, *extra):
    assert main(["kernels", "--matrix", *extra]) == 0
    return capsys.readouterr().out


def test_matrix_follows_the_formats(capsys):
    out = _matrix_rows(capsys, "--markdown")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines()[2:]}
    # columns: recipe, formats, sm_90, sm_100, gfx950, CPU
    assert rows["nvfp4"][3] == "native (`kind::mxf4nvf4`)" and rows["nvfp4"][4] == "emulated (Triton)"
    assert rows["mxfp4"][3] == "native (`kind::mxf4`)" and rows["mxfp4"][4].startswith("native (`v_mfma_scale")
    assert rows["custom: INT4 + MX scales"][3] == "native (`kind::mxf8f6f4`)"
    for name in ("ufp4", "ufp4-nv", "e2m1-ref"):  # FP32 or INT4 x E4M3 scales: never native
        assert rows[name][2:5] == ["emulated (Triton)"] * 3
    assert all(row[2] == "emulated (Triton)" for name, row in rows.items() if name != "bf16")  # sm_90
    assert all(row[5].startswith("dequant + matmul") for name, row in rows.items() if name != "bf16")


@pytest.mark.parametrize("targets", ["sm_90,cpu", "h100", ","])
def test_bad_targets_exit_2_with_the_valid_forms(targets, capsys):
    assert main(["kernels", "--targets", targets]) == 2
    assert "sm_" in capsys.readouterr().err


def test_bad_jobs_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["kernels", "--jobs", "-1"])
    assert exit_.value.code == 2
    assert "argument --jobs: -1 is not valid; it must be an integer >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("target, valid", [("sm_999", "valid CUDA targets: sm_80"), ("sm_200", "sm_90, "),
                                           ("sm_75", "sm_100"), ("gfx0", "valid HIP targets: gfx908"),
                                           ("gfx803", "gfx950")])
def test_targets_triton_cannot_compile_exit_2_before_compiling(target, valid, capsys, monkeypatch):
    # sm_999 and sm_200 aborted the process (exit 134) or hung the worker pool; gfx0 failed every kernel.
    from ufp4_compile.kernels import targets

    monkeypatch.setattr(targets, "compile_all", lambda *a, **k: pytest.fail("compiled an invalid target"))
    assert main(["kernels", "--targets", f"sm_90,{target}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ufp4 kernels: error: target {target!r} is not supported by the installed Triton")
    assert valid in err


def test_cuda_capabilities_come_from_tritons_ptxas():
    from ufp4_compile.kernels.targets import MIN_CUDA_CAPABILITY, cuda_capabilities

    found = cuda_capabilities()
    assert {80, 90, 100}.issubset(found) and 999 not in found and 200 not in found
    assert min(found) == MIN_CUDA_CAPABILITY


def test_a_glob_that_matches_nothing_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # nothing is compiled: no match
    assert main(["kernels", "--targets", "sm_90", "--kernels", "no_such_kernel*"]) == 2
    assert "--kernels='no_such_kernel*' matches no kernel variant" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["missing-dir/out.json", "."])
def test_a_bad_json_path_fails_before_compiling(where, tmp_path, monkeypatch, capsys):
    from ufp4_compile.kernels import targets

    monkeypatch.setattr(targets, "compile_all", lambda *a, **k: pytest.fail("compiled before checking --json"))
    with pytest.raises(SystemExit) as exit_:
        main(["kernels", "--targets", "sm_90", "--json", str(tmp_path / where)])
    assert exit_.value.code == 2 and "argument --json: " in capsys.readouterr().err


CRASHING_MODULE = """
import os
from ufp4_compile.kernels.targets import KernelVariant

class Aborts:  # the compiler's abort(): the worker process dies without an exception
    @property
    def arg_names(self):
        os.abort()

def compile_variants():
    return [KernelVariant("aborts", "-", Aborts(), {}, {}), KernelVariant("plain", "-", object(), {}, {})]
"""


def test_a_worker_killed_by_the_compiler_is_reported_not_awaited(tmp_path, monkeypatch):
    from ufp4_compile.dispatch import Target
    from ufp4_compile.kernels.targets import compile_all

    (tmp_path / "ufp4_crashing_kernels.py").write_text(CRASHING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get the parent's sys.path
    results, missing = compile_all([Target.parse("sm_90")], modules=("ufp4_crashing_kernels",), jobs=2)
    assert missing == {}
    crashed, plain = results
    assert (crashed.kernel, crashed.status, crashed.compiled) == ("aborts", "FAIL", False)
    assert "crashed its worker process" in crashed.error
    assert plain.kernel == "plain" and "not a compilable @triton.jit function" in plain.error  # its own error, not the crash


def test_jobs_reach_compile_all(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    from ufp4_compile.kernels import targets

    seen = []
    monkeypatch.setattr(targets, "compile_all", lambda t, pattern, jobs: seen.append(jobs) or ([_result()], {}))
    assert main(["kernels", "--targets", "sm_100", "--jobs", "1"]) == 0
    assert main(["kernels", "--targets", "sm_100"]) == 0
    assert seen == [1, None]  # None: one worker per CPU


def test_tables_plain_and_markdown():
    header, rows = kernels._result_rows([_result(), _result("FAIL", False, "RuntimeError: boom", "gfx950")],
                                        {"ufp4_compile.kernels.gemm": "not available: import failed"})
    plain = kernels.format_table(header, rows, markdown=False)
    assert "tcgen05.mma kind::mxf4 2X" in plain and "no: RuntimeError: boom" in plain
    assert plain.splitlines()[-1].split()[:2] == ["gemm", "-"]
    md = kernels.format_table(header, rows, markdown=True).splitlines()
    assert md[0].startswith("| kernel |") and md[1] == "|" + "---|" * len(header)
    assert all(line.count(" | ") == len(header) - 1 for line in md[2:])


def test_run_writes_json_and_fails_on_fail_rows(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    from ufp4_compile.kernels import targets

    outcomes = {"ok": [_result()], "fail": [_result(), _result("FAIL", False, "RuntimeError: boom")]}
    for name, results in outcomes.items():
        monkeypatch.setattr(targets, "compile_all", lambda t, pattern, jobs, r=results: (r, {"m": "not available"}))
        path = tmp_path / f"{name}.json"
        rc = main(["kernels", "--targets", "sm_100", "--json", str(path)])
        assert rc == (0 if name == "ok" else 1)
        data = json.loads(path.read_text())
        assert data["targets"] == ["sm_100"] and len(data["results"]) == len(results)
        assert data["not_available"] == {"m": "not available"} and "triton" in data["versions"]
    assert "1 failing" in capsys.readouterr().out


def test_interpreter_mode_reruns_in_a_fresh_process(monkeypatch):
    calls = []
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(kernels.subprocess, "call", lambda argv, env: calls.append((argv, env)) or 0)
    assert main(["kernels", "--targets", "gfx950", "--kernels", "native*", "--markdown", "--jobs", "3"]) == 0
    (argv, env), = calls
    assert argv[1:] == ["-m", "ufp4_compile", "kernels", "--targets", "gfx950", "--kernels", "native*", "--markdown",
                        "--jobs", "3"]
    assert env["TRITON_INTERPRET"] == "0"


def test_markdown_pivots_targets_into_columns():
    from ufp4_compile.dispatch import Target

    results = [_result(), _result("unused", False, "RuntimeError: no", "gfx950")]
    header, rows = kernels._pivot_rows(results, {"ufp4_compile.kernels.gemm": "not available"},
                                       [Target.parse("sm_100"), Target.parse("gfx950"), Target.parse("sm_90")])
    assert header == ["kernel", "recipe / formats", "sm_100", "gfx950", "sm_90"]
    assert rows[0] == ["native_scaled_mm[mxfp4]", "mxfp4", "`tcgen05.mma kind::mxf4 2X`",
                       "does not compile (RuntimeError: no)", "-"]
    assert rows[1] == ["gemm", "-"] + ["not available"] * 3
