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
import logging
import math
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
from ufp4_compile.training import analysis, checkpoint, parallel, plot, report
from ufp4_compile.training.loop import Run, RunSpec, TrainConfig

log = logging.getLogger("ufp4_compile.training.experiment")

# What the report reads from a run result (loop.Run.result()); a stored run lacking one is not reused.
RESULT_KEYS = ("run_id", "recipe", "seed", "tag", "backend", "complete", "steps_done", "steps_expected",
               "interrupted", "losses", "val_loss", "val_history", "tokens_per_s", "step_time_s", "first_step_s",
               "compile_time_s", "compilation_reused", "peak_memory", "wall_s", "diagnostics", "num_params",
               "parallel", "world_size", "peak_memory_per_rank", "ranks_identical")


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

    def __post_init__(self):
        if self.resume and self.train.parallel != "none":
            raise ValueError(f"resume=True is not supported with parallel={self.train.parallel!r}")

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
            saved = read_finished_run(result_path, identity)
            if saved is not None:
                return saved
        if self.resume:
            run.resume()
        result = run.execute(reset=reset)
        result["identity"] = identity
        release(run)
        if not result["interrupted"] and run.ranks.is_main:  # finished, or stopped on a non-finite loss
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
            "backend": self.train.backend, "parallel": self.train.parallel,
            "world_size": results[0].get("world_size", 1), "corpus": self.corpus.info,
            "memory_label": results[0]["peak_memory"]["label"], "command": self.command,
            "torch": torch.__version__, "python": platform.python_version(), "git": git_sha(),
        }

    def execute(self) -> dict | None:
        """Every planned run, then the report; None when --stop-at interrupted the runs. Under data
        parallelism every rank trains and returns the payload; only rank 0 writes files."""
        main = parallel.Ranks.of(self.train.parallel).is_main
        if main:
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
        if not main:
            return payload
        report.write_json(self.out_dir / "results.json", payload)
        report.write_markdown(self.out_dir / "results.md", meta, summary)
        plot.write_png(self.out_dir / "results.png", results, summary)
        return payload


def _damaged(path: pathlib.Path, why: str) -> None:
    log.warning("ufp4 train: warning: %s %s; training this run again", path, why)
    return None


def _result_problem(saved: dict, identity: dict) -> str | None:
    """Why a run JSON with the right identity is not a finished run (None when it is one)."""
    missing = [key for key in RESULT_KEYS if key not in saved]
    if missing:
        return f"lacks {', '.join(missing)}"
    losses, steps = saved["losses"], identity["steps"]
    if not isinstance(losses, list) or not all(v is None or isinstance(v, (int, float)) for v in losses):
        return "has no list of losses"
    if not (saved["val_loss"] is None or isinstance(saved["val_loss"], (int, float))):
        return "has no validation loss"
    if saved["run_id"] != identity["run_id"] or saved["steps_expected"] != steps or saved["steps_done"] != len(losses):
        return "does not match its own identity (run id, step counts)"
    finite = sum(v is not None and math.isfinite(v) for v in losses)
    if saved["complete"] is True and saved["interrupted"] is False:
        if len(losses) != steps or finite != steps:
            return f"is marked complete but holds {finite} finite losses of {steps} steps"
    elif saved["complete"] is False and saved["interrupted"] is False:  # stopped on a non-finite loss
        if finite == len(losses) or len(losses) > steps:
            return f"is marked stopped on a non-finite loss but holds {finite} finite losses of {len(losses)}"
    else:
        return "is not a finished run"
    return None


def read_finished_run(path: pathlib.Path, identity: dict) -> dict | None:
    """The finished run stored at ``path`` for ``identity``, or None (with a warning naming the file) when
    the file is empty, truncated, not a run result or an unfinished one: --resume then trains the run again,
    which rewrites the file. ResumeError when it is a finished run of other arguments: that result is
    someone's, so it is neither reused nor overwritten."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return _damaged(path, f"cannot be read as JSON ({type(exc).__name__}: {exc})")
    if not isinstance(saved, dict) or not isinstance(saved.get("identity"), dict):
        return _damaged(path, f"is not a run result (a JSON {type(saved).__name__} without an identity)")
    if saved["identity"] != identity:
        differ = checkpoint.differing_fields(saved["identity"], identity)
        raise checkpoint.ResumeError(f"{path} was written by a run with other arguments (fields differ: "
                                     f"{', '.join(differ)}); use a fresh --out directory or the original arguments")
    problem = _result_problem(saved, identity)
    if problem is not None:
        return _damaged(path, problem)
    saved["losses"] = [float("nan") if v is None else v for v in saved["losses"]]  # JSON has no NaN
    return saved


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
    missing or belongs to an older checkout), else ``git rev-parse`` of the package's tree, with ``-dirty``
    when tracked files differ from that commit (a stale ``.git`` under a newer tree reads as dirty, not as
    the old commit)."""
    if os.environ.get("UFP4_GIT_SHA"):
        return os.environ["UFP4_GIT_SHA"]
    here = pathlib.Path(__file__).parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=here).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=here).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command_line() -> str:
    """The command as a user would type it again; under torchrun with its process count."""
    if not sys.argv:
        return "ufp4 train"
    launcher = ["ufp4"]
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        nodes = int(os.environ["WORLD_SIZE"]) // max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
        launcher = ["torchrun", *([f"--nnodes {nodes}"] if nodes > 1 else []),
                    f"--nproc-per-node {os.environ['LOCAL_WORLD_SIZE']}", "-m ufp4_compile.cli.main"]
    return " ".join(launcher + sys.argv[1:])
