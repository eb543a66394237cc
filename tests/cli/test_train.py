import argparse
import json

import pytest
import torch.distributed as dist

from ufp4_compile.cli.main import main
from ufp4_compile.recipes import recipe_names
from ufp4_compile.training import compile as compile_step

# A very small run: 2 layers of width 64 over 32-token sequences.
FAST = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--eval-batches", "2", "--log-every", "2",
        "--no-progress"]


def train(*args) -> int:
    return main(["train", *args])


@pytest.mark.parametrize("args, expected", [
    (["--recipes", "bf16,fp3"], "recipe='fp3' is not a known recipe; valid names: " + ", ".join(recipe_names())),
    (["--preset", "huge"], "--preset='huge' is not a known preset; valid names: tiny, small, bench"),
    (["--data", "/nonexistent/corpus.txt"], "no such file"),
    (["--seeds", "0,x"], "comma-separated integers"),
    (["--seeds", "1,1"], "distinct non-negative integers"),
    (["--steps", "10", "--last-n", "11"], "--last-n=11 is not valid"),
    (["--steps", "10", "--stop-at", "10"], "--stop-at=10 is not valid"),
    (["--backend", "inductor", "--recipes", "bf16,ufp4"], "backend='inductor' cannot run recipe 'ufp4'"),
    (["--backend", "tvm"], "valid values: ufp4, inductor, eager"),
    (["--device", "tpu"], "--device='tpu' is not valid"),
])
def test_bad_arguments_are_clear_errors(args, expected, capsys, tmp_path):
    assert train(*args, "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ufp4 train: error: ") and expected in err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("flag, value, valid", [
    ("--batch-size", "0", "an integer >= 1"), ("--steps", "-1", "an integer >= 1"),
    ("--seq-len", "0", "an integer >= 1"), ("--lr", "0", "a finite number > 0"), ("--lr", "-0.001", "> 0"),
    ("--lr", "nan", "a finite number > 0"), ("--lr", "inf", "a finite number > 0"), ("--warmup", "-1", ">= 0"),
    ("--eval-batches", "0", "an integer >= 1"), ("--eval-every", "-2", ">= 0"), ("--last-n", "0", ">= 1"),
    ("--log-every", "0", ">= 1"), ("--diagnose", "-1", ">= 0"), ("--checkpoint-every", "-1", ">= 0"),
    ("--stop-at", "-1", ">= 0"), ("--data-seed", "-1", ">= 0"), ("--batch-size", "two", "is not an integer"),
    ("--parallel", "mpi", "invalid choice: 'mpi'"),
])
def test_values_that_make_no_sense_are_argparse_errors(flag, value, valid, capsys, tmp_path):
    # --batch-size 0 used to train with the preset's 8 and --lr 0 with 0.003, while results.json said 0.
    with pytest.raises(SystemExit) as exit_:
        train(flag, value, "--out", str(tmp_path))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"ufp4 train: error: argument {flag}: " in err and valid in err
    assert not list(tmp_path.iterdir())


TORCHRUN = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("env, args, expected", [
    (TORCHRUN, [], "--parallel=none under WORLD_SIZE=2 would train 2 independent copies; use --parallel ddp or fsdp2"),
    (TORCHRUN, ["--parallel", "ddp", "--batch-size", "3"], "--batch-size=3 is not valid with 2 ranks"),
    ({}, ["--parallel", "ddp", "--checkpoint-every", "2"], "--checkpoint-every=2 is not supported with --parallel ddp"),
    ({}, ["--parallel", "fsdp2", "--stop-at", "2"], "--stop-at=2 is not supported with --parallel fsdp2"),
    ({}, ["--parallel", "fsdp2", "--resume"], "--resume is not supported with --parallel fsdp2"),
    ({}, ["--parallel", "ddp", "--diagnose", "1"], "--diagnose=1 is not supported with --parallel ddp"),
    ({**TORCHRUN, "MASTER_ADDR": ""}, ["--parallel", "ddp"], "MASTER_ADDR is not set; start data-parallel runs with "
                                                            "torchrun"),
    ({**TORCHRUN, "RANK": "2"}, ["--parallel", "ddp"], "RANK=2 is not valid; it must be below WORLD_SIZE=2"),
    ({**TORCHRUN, "WORLD_SIZE": "two"}, ["--parallel", "ddp"], "WORLD_SIZE='two' is not an integer"),
])
def test_data_parallel_errors_name_what_to_change(env, args, expected, capsys, tmp_path, monkeypatch):
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert train(*args, "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ufp4 train: error: ") and expected in err
    assert not list(tmp_path.iterdir()) and not dist.is_initialized()  # refused before any work


def test_given_values_are_used_as_given(tmp_path):
    from ufp4_compile.cli.main import build_parser
    from ufp4_compile.cli.train import build_experiment

    argv = ["train", "--batch-size", "3", "--lr", "1e-4", "--warmup", "0", "--out", str(tmp_path)]
    args = build_parser(argv).parse_args(argv)
    train_config = build_experiment(args).train
    assert (train_config.batch_size, train_config.lr, train_config.warmup_steps) == (3, 1e-4, 0)
    # A 0 that reaches build_experiment (a caller without argparse) is an error, not "use the default".
    for name, message in (("lr", "lr=0.0 is not valid"), ("batch_size", "batch_size=0 is not valid")):
        with pytest.raises(ValueError, match=message):
            build_experiment(argparse.Namespace(**{**vars(args), name: type(getattr(args, name))(0)}))


def test_out_must_be_a_writable_directory(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {str(a_file): "exists and is not a directory", str(a_file / "sub"): "is a file, not a directory",
             "": "--out='' is not valid"}
    for out, message in cases.items():
        assert train("--out", out) == 2
        err = capsys.readouterr().err
        assert err.startswith("ufp4 train: error: ") and message in err, (out, err)
    from ufp4_compile.cli import args as cli_args

    monkeypatch.setattr(cli_args.os, "access", lambda path, mode: False)  # read-only or not ours
    for out in (tmp_path, tmp_path / "new" / "dir"):
        assert train("--out", str(out)) == 2
        assert "permission denied or read-only" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing was created


def read(out) -> dict:
    return json.loads((out / "results.json").read_text())


def test_resume_through_the_cli_reproduces_the_run(tmp_path, capsys):
    args = [*FAST, "--backend", "eager", "--recipes", "bf16", "--steps", "10", "--seeds", "0,1"]
    assert train(*args, "--out", str(tmp_path / "full")) == 0
    assert train(*args, "--out", str(tmp_path / "split"), "--stop-at", "4") == 0
    assert "continue with the same arguments and --resume" in capsys.readouterr().out
    assert not (tmp_path / "split" / "results.json").exists()
    assert len(list((tmp_path / "split" / "checkpoints").glob("*.pt"))) == 2
    assert train(*args, "--out", str(tmp_path / "split"), "--resume") == 0
    full, split = read(tmp_path / "full"), read(tmp_path / "split")
    assert [r["compilation_reused"] for r in full["runs"]] == [False, True]  # seed 1 reuses seed 0's graphs
    for a, b in zip(full["runs"], split["runs"]):
        assert a["run_id"] == b["run_id"] and a["losses"] == b["losses"] and a["val_loss"] == b["val_loss"]
    assert not list((tmp_path / "split" / "checkpoints").glob("*.pt"))  # removed once a run is finished
    # --resume with other arguments is refused, naming the difference.
    assert train(*args[:-4], "--steps", "10", "--seeds", "0,1", "--lr", "1e-4", "--out", str(tmp_path / "split"),
                 "--resume") == 2
    assert "other arguments" in capsys.readouterr().err
    # So is a finished run validated on another set (or at other steps).
    for flag, value in (("--eval-batches", "3"), ("--eval-every", "5")):
        assert train(*args, flag, value, "--out", str(tmp_path / "split"), "--resume") == 2
        assert f"fields differ: {flag[2:].replace('-', '_')}" in capsys.readouterr().err


@pytest.mark.skipif(not compile_step.ufp4_backend_available(), reason="the ufp4 backend is not installed")
def test_two_recipes_end_to_end_through_the_ufp4_backend(tmp_path):
    out = tmp_path / "run"
    assert train(*FAST, "--recipes", "bf16,ufp4", "--steps", "6", "--last-n", "3", "--diagnose", "3",
                 "--out", str(out)) == 0
    for name in ("results.json", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    data = read(out)
    runs = {r["recipe"]: r for r in data["runs"]}
    assert set(runs) == {"bf16", "ufp4"} and all(r["backend"] == "ufp4" for r in runs.values())
    ufp4, bf16 = runs["ufp4"]["losses"], runs["bf16"]["losses"]
    assert len(ufp4) == len(bf16) == 6 and ufp4 != bf16  # the recipe changed the numerics
    expected = sum(abs(a - b) / b for a, b in zip(ufp4[-3:], bf16[-3:])) / 3
    assert data["analysis"]["recipes"]["ufp4"]["gap_abs"]["mean"] == pytest.approx(expected)
    assert [d["step"] for d in runs["ufp4"]["diagnostics"]] == [0, 3]
    layer = runs["ufp4"]["diagnostics"][0]["layers"]["layers.0.mlp.down"]
    assert set(layer) == {"fprop", "dgrad", "wgrad"} and layer["fprop"]["a"]["sqnr_db"] > 0
    assert "| ufp4 | 1 |" in (out / "results.md").read_text()
