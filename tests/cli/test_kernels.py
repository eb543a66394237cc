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
    assert main(["kernels", "--jobs", "-1"]) == 2
    assert "--jobs=-1 is not valid" in capsys.readouterr().err


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
