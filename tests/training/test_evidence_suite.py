"""benchmarks/evidence_suite.sh on the CPU with the tiny preset: the machinery that spreads the evidence runs
over GPUs and resumes them across calls (the GPU runs cost device time; this costs none)."""

import json
import os
import pathlib
import subprocess
import tarfile

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "evidence_suite.sh"


@pytest.mark.slow
def test_jobs_share_finished_runs_and_the_report_trains_nothing(tmp_path):
    committed = tmp_path / "committed"
    committed.mkdir()
    env = {**os.environ, "SKIP_INSTALL": "1", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "RUNS": str(committed), "ARGS": "--preset tiny --steps 4 --seq-len 32 --batch-size 4 --eval-batches 2 "
                                           "--no-progress",
           "JOBS0": "bf16:0 ufp4:0", "JOBS1": "bf16:1"}
    first = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600,
                           cwd=SCRIPT.parents[1])
    assert first.returncode == 0, first.stderr[-2000:]
    out, work = tmp_path / "out", tmp_path / "work"
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["bf16-seed0.json", "bf16-seed1.json",
                                                                  "ufp4-seed0.json"]
    # only tarballs in OUT (a remote call returns a few files); each GPU's has the runs and the logs
    assert sorted(p.name for p in out.iterdir()) == ["runs_gpu0.tgz", "runs_gpu1.tgz"]
    with tarfile.open(out / "runs_gpu0.tgz") as tar:  # what a cut-off remote call would bring back
        assert {"runs/bf16-seed0.json", "runs/ufp4-seed0.json", "logs/gpu0-ufp4-0.log"} <= set(tar.getnames())
    # A later call: the runs come back as committed files; ufp4 seed 1 reloads bf16 seed 1, and the report
    # of both seeds reloads all four runs.
    for path in (work / "runs").iterdir():
        (committed / path.name).write_bytes(path.read_bytes())
    env.update(OUT=str(tmp_path / "out2"), WORK=str(tmp_path / "work2"), JOBS0="ufp4:1", JOBS1="", REPORT="0,1",
               RECIPES="bf16,ufp4", NOISE_FLOOR="0")
    second = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600,
                            cwd=SCRIPT.parents[1])
    assert second.returncode == 0, second.stderr[-2000:]
    out2, work2 = tmp_path / "out2", tmp_path / "work2"
    assert sorted(p.name for p in (work2 / "runs").iterdir()) == ["bf16-seed0.json", "bf16-seed1.json",
                                                                   "ufp4-seed0.json", "ufp4-seed1.json"]
    for name in ("bf16-seed0.json", "bf16-seed1.json", "ufp4-seed0.json"):  # reloaded, not trained again
        assert (work2 / "runs" / name).read_bytes() == (committed / name).read_bytes()
    assert sorted(p.name for p in out2.iterdir()) == ["report.tgz", "runs_gpu0.tgz"]
    with tarfile.open(out2 / "report.tgz") as tar:
        names = set(tar.getnames())
        assert {"results.md", "results.json"} <= names
        report = json.load(tar.extractfile("results.json"))
    assert sorted((r["recipe"]["name"] if isinstance(r["recipe"], dict) else r["recipe"], r["seed"])
                  for r in report["runs"]) == [("bf16", 0), ("bf16", 1), ("ufp4", 0), ("ufp4", 1)]
