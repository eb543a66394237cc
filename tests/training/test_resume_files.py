"""--resume and the files it reads: run identity, damaged run JSONs and checkpoints, atomic writes."""

import dataclasses
import json
import logging
import math
import pathlib

import numpy as np
import pytest
import torch

from ufp4_compile.data.corpus import Corpus, TokenStream
from ufp4_compile.models.gpt import GPTConfig
from ufp4_compile.recipes import get_recipe
from ufp4_compile.training import report
from ufp4_compile.training.checkpoint import ResumeError
from ufp4_compile.training.experiment import RESULT_KEYS, Experiment, read_finished_run
from ufp4_compile.training.loop import Run, RunSpec, TrainConfig

MODEL = GPTConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, seq_len=32)
STEPS = 6


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    text = (rng.integers(0, 64, 20_000) // 3 * 3).astype(np.uint8)
    return Corpus(TokenStream([text[:18_000]]), TokenStream([text[18_000:]]), 64,
                  {"sha256": "synthetic", "tokenizer": "bytes"})


def config(**overrides) -> TrainConfig:
    base = TrainConfig(steps=STEPS, batch_size=2, lr=1e-2, warmup_steps=1, backend="eager", eval_batches=1,
                       log_every=3, progress=False)
    return dataclasses.replace(base, **overrides)


def experiment(corpus, out: pathlib.Path, resume: bool = False, **overrides) -> Experiment:
    return Experiment(preset="tiny", model_config=MODEL, corpus=corpus, train=config(**overrides),
                      recipes=[get_recipe("bf16")], seeds=[0], noise_floor=False, last_n=2, out_dir=out,
                      resume=resume)


def run_once(corpus, out: pathlib.Path, resume: bool = False, **overrides) -> dict:
    exp = experiment(corpus, out, resume, **overrides)
    return exp.run_one(exp.plan()[0])


def identity(corpus, **overrides) -> dict:
    return Run(RunSpec(get_recipe("bf16"), 0), MODEL, corpus, config(**overrides)).identity()


# ---- run identity ---------------------------------------------------------------------------------------

CHANGED = {"steps": 7, "batch_size": 3, "lr": 5e-3, "warmup_steps": 2, "min_lr_ratio": 0.2, "weight_decay": 0.0,
           "grad_clip": 0.5, "beta2": 0.99, "data_seed": 1, "device": "meta", "autocast_bf16": True,
           "backend": "ufp4", "parallel": "ddp", "eval_batches": 2, "eval_every": 2, "log_every": 2, "diagnose_every": 3,
           "checkpoint_every": 2, "stop_at": 3, "progress": True}


def test_every_field_that_changes_a_reported_number_is_in_the_identity(corpus):
    assert set(CHANGED) == {f.name for f in dataclasses.fields(TrainConfig)}  # a new field needs a decision here
    run = Run(RunSpec(get_recipe("bf16"), 0), MODEL, corpus, config())
    base = run.identity()
    for name, value in CHANGED.items():
        run.cfg = config(**{name: value})  # the identity reads the config only
        assert (run.identity() != base) == (name not in TrainConfig.CONTROL_FIELDS), name
    assert set(TrainConfig.CONTROL_FIELDS) == {"checkpoint_every", "stop_at", "progress"}


def test_the_corpus_tokenizer_is_in_the_identity(corpus):
    as_uint16 = dataclasses.replace(corpus, info={**corpus.info, "tokenizer": "uint16 tokens"})
    assert identity(corpus) != identity(as_uint16)  # same file hash, other tokens


def test_resume_refuses_a_finished_run_validated_on_another_set(corpus, tmp_path):
    first = run_once(corpus, tmp_path)
    assert first["complete"]
    assert run_once(corpus, tmp_path, resume=True)["losses"] == first["losses"]  # same arguments: reused
    for change in ({"eval_batches": 2}, {"eval_every": 2}):
        with pytest.raises(ResumeError, match=f"fields differ: {next(iter(change))}"):
            run_once(corpus, tmp_path, resume=True, **change)
    # Checkpoint cadence and stopping point change no reported number: the finished run is reused.
    assert run_once(corpus, tmp_path, resume=True, checkpoint_every=2)["losses"] == first["losses"]


# ---- damaged run JSONs --------------------------------------------------------------------------------

def _fewer_losses(data: dict) -> dict:
    return {**data, "losses": data["losses"][:2]}  # identity intact, 2 of 6 losses


def _fewer_losses_consistent(data: dict) -> dict:
    return {**data, "losses": data["losses"][:2], "steps_done": 2}


DAMAGE = {
    "empty": lambda text, data: "",
    "truncated": lambda text, data: text[: len(text) // 2],
    "list": lambda text, data: "[]",
    "no identity": lambda text, data: json.dumps({k: v for k, v in data.items() if k != "identity"}),
    "fewer losses": lambda text, data: json.dumps(_fewer_losses(data)),
    "fewer losses, step count edited": lambda text, data: json.dumps(_fewer_losses_consistent(data)),
    "a null loss marked complete": lambda text, data: json.dumps({**data, "losses": [None] * STEPS}),
    "missing keys": lambda text, data: json.dumps({"identity": data["identity"], "losses": data["losses"]}),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_run_json_is_trained_again_with_a_warning(corpus, tmp_path, caplog, damage):
    first = run_once(corpus, tmp_path)
    path = tmp_path / "runs" / "bf16-seed0.json"
    text = path.read_text()
    path.write_text(DAMAGE[damage](text, json.loads(text)))
    with caplog.at_level(logging.WARNING, logger="ufp4_compile.training.experiment"):
        again = run_once(corpus, tmp_path, resume=True)
    assert str(path) in caplog.text and "training this run again" in caplog.text
    assert again["complete"] and again["losses"] == first["losses"]
    assert json.loads(path.read_text())["losses"] == first["losses"]  # rewritten whole


def test_a_run_stopped_on_a_non_finite_loss_is_reused_with_its_nan(corpus, tmp_path):
    run_once(corpus, tmp_path)
    path = tmp_path / "runs" / "bf16-seed0.json"
    data = json.loads(path.read_text())
    diverged = {**data, "losses": data["losses"][:2] + [None], "steps_done": 3, "complete": False,
                "val_loss": None}
    path.write_text(json.dumps(diverged))
    saved = read_finished_run(path, data["identity"])
    assert saved is not None and saved["losses"][:2] == data["losses"][:2] and math.isnan(saved["losses"][2])


def test_result_keys_are_what_a_run_returns(corpus, tmp_path):
    result = run_once(corpus, tmp_path)
    assert set(result) - {"identity"} == set(RESULT_KEYS)


def test_write_json_replaces_the_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    report.write_json(path, {"a": 1})

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        report.write_json(path, {"a": 2, "b": list(range(1000))})
    assert json.loads(path.read_text()) == {"a": 1}  # the old file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


# ---- damaged checkpoints ------------------------------------------------------------------------------

class _RunsCode:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _truncated(path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CHECKPOINT_DAMAGE = {
    "truncated": _truncated,
    "empty": lambda path, tmp: path.write_bytes(b""),
    "garbage": lambda path, tmp: path.write_bytes(b"not a checkpoint at all" * 10),
    "a list": lambda path, tmp: torch.save([1, 2, 3], path),
    "foreign dict": lambda path, tmp: torch.save({"format_version": 1, "identity": "{}"}, path),
    "code": lambda path, tmp: torch.save({"payload": _RunsCode(tmp / "ran")}, path),
}


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_a_damaged_checkpoint_is_a_clear_error_naming_it(corpus, tmp_path, damage):
    ckpt = tmp_path / "run.pt"
    spec = RunSpec(get_recipe("bf16"), 0)
    Run(spec, MODEL, corpus, config(stop_at=3), ckpt).execute()
    CHECKPOINT_DAMAGE[damage](ckpt, tmp_path)
    with pytest.raises(ResumeError, match="is not a readable checkpoint") as err:
        Run(spec, MODEL, corpus, config(), ckpt).resume()
    assert str(ckpt) in str(err.value) and "Delete it to train this run from step 0" in str(err.value)
    assert not (tmp_path / "ran").exists()  # nothing was unpickled


def test_a_damaged_checkpoint_stops_the_cli_with_exit_2(corpus, tmp_path, capsys, monkeypatch):
    from ufp4_compile.cli import train as train_cli

    exp = experiment(corpus, tmp_path, resume=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "bf16-seed0.pt").write_bytes(b"PK\x03\x04 cut")
    monkeypatch.setattr(train_cli, "build_experiment", lambda args: exp)
    assert train_cli.run(None) == 2
    err = capsys.readouterr().err
    assert err.startswith("ufp4 train: error: ") and "bf16-seed0.pt is not a readable checkpoint" in err
