"""A set of runs (recipes x seeds, plus the noise floor's extra bf16 runs) and their report.

Layout of the output directory::

    results.json  results.md  results.png      the report (written when every run is complete)
    runs/<recipe>-seed<s>[-tag].json           one finished run each (reused by --resume)
    checkpoints/<run>.pt                       while a run is unfinished (--checkpoint-every, --stop-at)
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from ufp4_compile.data.corpus import Corpus
from ufp4_compile.models.gpt import GPTConfig
from ufp4_compile.recipes import Recipe
from ufp4_compile.training import analysis, checkpoint, plot, report
from ufp4_compile.training.loop import Run, RunSpec, TrainConfig


@dataclass
class Experiment:
    preset: str
    model_config: GPTConfig
    corpus: Corpus
    train: TrainConfig
    recipes: list[Recipe]
    seeds: list[int]
    noise_floor: bool
    last_n: int
    out_dir: pathlib.Path
    resume: bool = False
    command: str = ""

    def plan(self) -> list[RunSpec]:
        """bf16 first (every gap is relative to it), then each recipe for every seed; recipe-major, so a
        recipe's compilation is reused from the compile caches for its later seeds."""
        baseline = next(r for r in self.recipes if r.name == analysis.BASELINE)
        specs = [RunSpec(baseline, s) for s in self.seeds]
        if self.noise_floor:
            specs.append(RunSpec(baseline, self.seeds[0], "repeat"))
            if len(self.seeds) < 2:
                specs.append(RunSpec(baseline, max(self.seeds) + 1, "floor"))
        for recipe in self.recipes:
            if recipe.name != analysis.BASELINE:
                specs += [RunSpec(recipe, s) for s in self.seeds]
        return specs

    def run_one(self, spec: RunSpec, reset: bool = True) -> dict:
        """Train one run (or reload it when --resume finds it finished); its result dict."""
        result_path = self.out_dir / "runs" / f"{spec.run_id}.json"
        ckpt = self.out_dir / "checkpoints" / f"{spec.run_id}.pt"
        use_ckpt = self.train.checkpoint_every > 0 or self.train.stop_at > 0 or self.resume
        run = Run(spec, self.model_config, self.corpus, self.train, ckpt if use_ckpt else None)
        identity = json.loads(json.dumps(run.identity(), sort_keys=True))
        if self.resume and result_path.exists():
            saved = json.loads(result_path.read_text())
            if saved.get("identity") == identity:
                return saved
            raise checkpoint.ResumeError(f"{result_path} was written by a run with other arguments; use a fresh --out "
                             f"directory or the original arguments")
        if self.resume:
            run.resume()
        result = run.execute(reset=reset)
        result["identity"] = identity
        release(run)
        if not result["interrupted"]:  # finished, or stopped on a non-finite loss
            result_path.parent.mkdir(parents=True, exist_ok=True)
            report.write_json(result_path, result)
            ckpt.unlink(missing_ok=True)
        return result

    def meta(self, results: list[dict]) -> dict:
        device = torch.device(self.train.device)
        return {
            "preset": self.preset, "model": dataclasses.asdict(self.model_config),
            "train": {f.name: getattr(self.train, f.name) for f in dataclasses.fields(self.train)},
            "steps": self.train.steps, "batch_size": self.train.batch_size, "seq_len": self.model_config.seq_len,
            "num_params": results[0]["num_params"], "seeds": self.seeds, "recipes": [r.to_dict() for r in self.recipes],
            "noise_floor": self.noise_floor, "device": device_name(device),
            "precision": "bf16 autocast" if self.train.autocast_bf16 else "fp32",
            "backend": self.train.backend, "corpus": self.corpus.info,
            "memory_label": results[0]["peak_memory"]["label"], "command": self.command,
            "torch": torch.__version__, "python": platform.python_version(), "git": git_sha(),
        }

    def execute(self) -> dict | None:
        """Every planned run, then the report; None when --stop-at interrupted the runs."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        results, previous = [], None
        for spec in self.plan():
            # Dynamo is reset when the recipe changes; later seeds of a recipe reuse its compiled graphs.
            results.append(self.run_one(spec, reset=spec.recipe.name != previous))
            previous = spec.recipe.name
        if any(r["interrupted"] for r in results):
            return None
        summary = analysis.analyze(results, self.last_n)
        meta = self.meta(results)
        meta["wall_s"] = time.perf_counter() - started
        payload = {"meta": meta, "analysis": summary, "runs": results}
        report.write_json(self.out_dir / "results.json", payload)
        report.write_markdown(self.out_dir / "results.md", meta, summary)
        plot.write_png(self.out_dir / "results.png", results, summary)
        return payload


def release(run: Run) -> None:
    """Drop a finished run's model, optimizer and compiled module before the next run allocates its own."""
    run.model = run.optimizer = run.compiled = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def git_sha() -> str | None:
    """The commit of the code that ran: ``UFP4_GIT_SHA`` when set (a copy of the tree whose ``.git`` is
    missing or belongs to an older checkout), else ``git rev-parse`` of the package's tree."""
    if os.environ.get("UFP4_GIT_SHA"):
        return os.environ["UFP4_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=pathlib.Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def command_line() -> str:
    return " ".join(["ufp4"] + sys.argv[1:]) if sys.argv else "ufp4 train"
