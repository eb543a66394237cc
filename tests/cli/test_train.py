import json

import pytest

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
