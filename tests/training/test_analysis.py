import json
import math

import pytest

from ufp4_compile.training import analysis, plot, report


def fake_run(recipe: str, seed: int, losses: list[float], tag: str = "", val: float = 2.0) -> dict:
    return {"run_id": f"{recipe}-seed{seed}" + (f"-{tag}" if tag else ""), "recipe": recipe, "seed": seed,
            "tag": tag, "complete": all(math.isfinite(v) for v in losses), "losses": losses,
            "steps_expected": 40, "val_loss": val, "tokens_per_s": 1000.0, "compile_time_s": 2.0,
            "step_time_s": 0.1, "peak_memory": {"kind": "cuda_max_allocated", "bytes": 2**30, "label": "CUDA"}}


def curve(level: float, wobble: float = 0.0) -> list[float]:
    return [level + 2.0 / (t + 1) + wobble * ((-1) ** t) for t in range(40)]


@pytest.fixture
def results():
    runs = [fake_run("bf16", 0, curve(2.0)), fake_run("bf16", 1, curve(2.01)),
            fake_run("bf16", 0, curve(2.0), tag="repeat"),
            fake_run("ufp4", 0, curve(2.04), val=2.05), fake_run("ufp4", 1, curve(2.06), val=2.07),
            fake_run("e2m1-ref", 0, curve(2.10), val=2.12), fake_run("e2m1-ref", 1, curve(2.12), val=2.13)]
    return runs


def test_gap_is_computed_as_defined(results):
    out = analysis.analyze(results, last_n=10)
    by_id = {r["run_id"]: r for r in results}
    for seed in (0, 1):
        run, ref = by_id[f"ufp4-seed{seed}"]["losses"][-10:], by_id[f"bf16-seed{seed}"]["losses"][-10:]
        expected = sum(abs(a - b) / b for a, b in zip(run, ref)) / 10
        assert out["per_run"][f"ufp4-seed{seed}"]["gap"]["abs"] == pytest.approx(expected)
    ufp4 = out["recipes"]["ufp4"]
    assert ufp4["gap_abs"]["n"] == 2 and ufp4["gap_abs"]["min"] < ufp4["gap_abs"]["max"]
    assert ufp4["val_gap"]["mean"] == pytest.approx(((2.05 - 2.0) / 2.0 + (2.07 - 2.0) / 2.0) / 2)
    floor = out["noise_floor"]
    assert floor["same_seed"] == 0.0 and floor["different_seed_pairs"] == 1
    assert 0 < floor["floor"] < ufp4["gap_abs"]["mean"]
    pair = next(r for r in out["comparisons"] if {r["a"], r["b"]} == {"ufp4", "e2m1-ref"})
    assert pair["resolved"] and pair["lower_loss"] == "ufp4"
    assert "gap_abs" not in out["recipes"]["bf16"]


def test_unstable_runs_are_flagged(results):
    bad = curve(2.05)
    bad[30] = float("nan")
    results[3] = fake_run("ufp4", 0, bad[:31])
    spiky = curve(2.12)
    spiky[25] *= 1.5
    results[5] = fake_run("e2m1-ref", 0, spiky)
    out = analysis.analyze(results, last_n=10)
    assert any("non-finite loss at step 30" in f for f in out["recipes"]["ufp4"]["flags"])
    assert any("loss spike" in f for f in out["recipes"]["e2m1-ref"]["flags"])
    assert math.isnan(out["per_run"]["ufp4-seed0"]["gap"]["abs"])


def test_report_files(results, tmp_path):
    out = analysis.analyze(results, last_n=10)
    meta = {"preset": "tiny", "steps": 40, "batch_size": 8, "seq_len": 128, "num_params": 1234, "seeds": [0, 1],
            "device": "cpu", "precision": "fp32", "backend": "ufp4", "memory_label": "CUDA", "command": "ufp4 train",
            "corpus": {"source": "stdlib", "train_tokens": 10, "val_tokens": 1}}
    report.write_json(tmp_path / "r.json", {"meta": meta, "analysis": out, "runs": results})
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert loaded["analysis"]["recipes"]["ufp4"]["gap_abs"]["n"] == 2
    md = report.markdown(meta, out)
    assert "| ufp4 | 2 |" in md and "Noise floor" in md and "| e2m1-ref | ufp4 |" in md
    plot.write_png(tmp_path / "r.png", results, out)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_safe():
    assert report.json_safe({"a": [float("nan"), 1.0, (float("inf"),)]}) == {"a": [None, 1.0, [None]]}
