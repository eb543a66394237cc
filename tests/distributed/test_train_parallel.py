"""``ufp4 train --parallel ddp|fsdp2`` on CPU: two ranks (gloo) against one process with the same arguments.

Every launch runs at once (each rank a ``python -m ufp4_compile.cli.main train`` process with torchrun's
environment; about 30 s on 2 shared cores, most of it the run through the ufp4 backend):

- ``one``: no launcher, ``--parallel none`` (the reference);
- ``ddp``, ``fsdp2``: the same arguments over two ranks, backend eager and recipe bf16, which draws no random
  numbers: the ranks train the reference's global batch, two rows each, so the curve may differ from the
  reference by FP32 summation order only (the gradient of each half is summed apart, then averaged);
  measured ≤ 1e-7 relative (one FP32 ulp of the loss), held to ``FLOOR``;
- ``fsdp2-ufp4``: FSDP2 with every block compiled through the ufp4 backend, bf16 and ufp4 (stochastic
  rounding, so only held to the recipe's floor of docs/backend.md against the bf16 reference).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from ufp4_compile.cli.main import main
from ufp4_compile.testing.distributed import free_port, rank_env, wait_all

ARGS = ["train", "--preset", "tiny", "--steps", "3", "--batch-size", "4", "--seq-len", "16", "--eval-batches", "1",
        "--log-every", "1", "--no-progress"]
EAGER = [*ARGS, "--recipes", "bf16", "--backend", "eager"]
LAUNCHES = {  # name: (arguments, ranks; 0 = one process without torchrun's environment)
    "one": (EAGER, 0),
    "ddp": ([*EAGER, "--parallel", "ddp"], 2),
    "fsdp2": ([*EAGER, "--parallel", "fsdp2"], 2),
    "fsdp2-ufp4": ([*ARGS, "--recipes", "ufp4", "--backend", "ufp4", "--parallel", "fsdp2"], 2),
}
FLOOR = 1e-5  # relative loss gap to one process without random draws: FP32 summation order only
SR_FLOOR = 0.05  # ufp4 (stochastic rounding) against bf16 (docs/backend.md, "Distributed training")

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """{name: {"out": its --out, "ranks": [CompletedProcess of each rank]}}, every launch finished."""
    root = tmp_path_factory.mktemp("train-parallel")
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    base.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]),
                                                                 base.get("PYTHONPATH", "")]))
    procs, outs = {}, {}
    for name, (args, ranks) in LAUNCHES.items():
        outs[name] = root / name
        command = [sys.executable, "-m", "ufp4_compile.cli.main", *args, "--out", str(outs[name])]
        port = free_port()
        envs = [rank_env(r, ranks, port, base) for r in range(ranks)] or [base]
        for rank, env in enumerate(envs):
            procs[name, rank] = subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, text=True)
    done = wait_all(procs, timeout=300)
    failed = [f"{name} rank {rank} failed:\n{p.stderr[-3000:]}" for (name, rank), p in done.items() if p.returncode]
    assert not failed, "\n\n".join(failed)
    return {name: {"out": outs[name], "ranks": [done[name, r] for r in range(max(1, ranks))]}
            for name, (_, ranks) in LAUNCHES.items()}


def results(launch) -> dict:
    return json.loads((launch["out"] / "results.json").read_text())


def relative_gaps(values, reference) -> list[float]:
    assert len(values) == len(reference)
    return [abs(a - b) / b for a, b in zip(values, reference)]


@pytest.mark.parametrize("name", ["ddp", "fsdp2"])
def test_rank_zero_writes_the_report_and_the_other_rank_stays_silent(launches, name):
    launch = launches[name]
    zero, one = launch["ranks"]
    assert sorted(p.name for p in launch["out"].iterdir()) == ["results.json", "results.md", "results.png", "runs"]
    assert [p.name for p in (launch["out"] / "runs").iterdir()] == ["bf16-seed0.json"]
    assert f"wrote {launch['out'] / 'results.json'}" in zero.stdout
    assert one.stdout == ""
    md = (launch["out"] / "results.md").read_text()
    assert f"data parallel `{name}` over 2 ranks (2 sequences each)" in md and "on rank 0" in md
    meta = results(launch)["meta"]
    assert (meta["parallel"], meta["world_size"], meta["train"]["parallel"]) == (name, 2, name)
    assert meta["command"].startswith("torchrun --nproc-per-node 2 -m ufp4_compile.cli.main train --preset tiny")


@pytest.mark.parametrize("name", ["ddp", "fsdp2"])
def test_two_ranks_train_the_one_process_curve(launches, name):
    run, = results(launches[name])["runs"]
    reference, = results(launches["one"])["runs"]
    assert (run["parallel"], run["world_size"], run["ranks_identical"]) == (name, 2, True)
    assert len(run["peak_memory_per_rank"]) == 2 and min(run["peak_memory_per_rank"]) > 0
    assert run["peak_memory"]["bytes"] == run["peak_memory_per_rank"][0]
    assert max(relative_gaps(run["losses"], reference["losses"])) < FLOOR, (run["losses"], reference["losses"])
    assert max(relative_gaps([run["val_loss"]], [reference["val_loss"]])) < FLOOR
    assert run["tokens_per_s"] > 0 and run["step_time_s"] > 0
    assert (reference["parallel"], reference["world_size"], reference["ranks_identical"]) == ("none", 1, True)
    assert len(reference["peak_memory_per_rank"]) == 1


def test_fsdp2_with_blocks_compiled_through_the_ufp4_backend(launches):
    runs = {r["recipe"]: r for r in results(launches["fsdp2-ufp4"])["runs"]}
    reference, = results(launches["one"])["runs"]
    assert set(runs) == {"bf16", "ufp4"}
    assert all(r["complete"] and r["ranks_identical"] and r["world_size"] == 2 for r in runs.values())
    # bf16 through the backend changes no number: the eager reference's curve, up to summation order.
    assert max(relative_gaps(runs["bf16"]["losses"], reference["losses"])) < FLOOR
    ufp4 = relative_gaps(runs["ufp4"]["losses"], runs["bf16"]["losses"])
    assert 0 < max(ufp4) < SR_FLOOR, ufp4  # quantized (the curve moved), within the recipe's noise


def test_parallel_without_torchrun_is_one_rank(launches, tmp_path, monkeypatch, capsys):
    """No WORLD_SIZE in the environment: --parallel fsdp2 runs as a group of one, the one-process curve."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert main([*EAGER, "--parallel", "fsdp2", "--out", str(tmp_path)]) == 0
    assert not dist.is_initialized()  # destroyed at the end
    run, = json.loads((tmp_path / "results.json").read_text())["runs"]
    reference, = results(launches["one"])["runs"]
    assert (run["parallel"], run["world_size"], run["ranks_identical"]) == ("fsdp2", 1, True)
    assert max(relative_gaps(run["losses"], reference["losses"])) < FLOOR
    assert "data parallel `fsdp2` over 1 rank (4 sequences each)" in capsys.readouterr().out
