"""One training run: a GPT under one recipe and one seed, with timing, evaluation and checkpoints.

Every run of a given seed starts from the same weights (built on the CPU from ``torch.manual_seed(seed)``)
and sees the same batches (drawn from ``(data_seed, step)``), whatever the recipe. The seed also seeds
torch's generators for training (stochastic-rounding seeds are drawn from them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ufp4_compile.data.corpus import Corpus, train_batch, val_batches
from ufp4_compile.models.gpt import GPT, GPTConfig
from ufp4_compile.recipes import Recipe
from ufp4_compile.training import checkpoint, diagnose, parallel

_TRAIN_SEED_OFFSET = 0x5EED  # training RNG seed = seed + offset, distinct from the initialization stream


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    beta2: float = 0.95
    data_seed: int = 0
    device: str = "cpu"
    autocast_bf16: bool = False
    backend: str = "ufp4"
    parallel: str = "none"  # "ddp" or "fsdp2": data parallel over the process group (training/parallel.py)
    eval_batches: int = 8
    eval_every: int = 0  # 0: only at the end
    log_every: int = 10
    diagnose_every: int = 0
    checkpoint_every: int = 0  # 0: only at --stop-at
    stop_at: int = 0  # 0: never; else stop after this many steps (resume later)
    progress: bool = True

    # Fields that only say how a run is carried out (where it pauses, when it checkpoints, whether a bar is
    # drawn) and change no number it reports. Every other field belongs to the run identity: the curve
    # (lr, batches...), the validation set (eval_batches) and points (eval_every), where a diverged run's
    # curve ends and the timing intervals (log_every), the diagnostics (diagnose_every).
    CONTROL_FIELDS = ("checkpoint_every", "stop_at", "progress")

    @classmethod
    def identity_fields(cls) -> tuple[str, ...]:
        """The fields a checkpoint or finished run must share with the run that reuses it."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in cls.CONTROL_FIELDS)

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; it must be a positive integer")
        for name in ("warmup_steps", "eval_every", "diagnose_every", "checkpoint_every", "stop_at", "data_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; it must be >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} is not valid; it must be > 0")
        if self.log_every <= 0:
            raise ValueError(f"log_every={self.log_every!r} is not valid; it must be a positive integer")
        if self.parallel not in parallel.MODES:
            raise ValueError(f"parallel={self.parallel!r} is not valid; valid values: {', '.join(parallel.MODES)}")
        for name in ("checkpoint_every", "stop_at", "diagnose_every"):
            if self.parallel != "none" and getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported with parallel={self.parallel!r}")

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class RunSpec:
    recipe: Recipe
    seed: int
    tag: str = ""  # "repeat" for the noise floor's same-seed bf16 rerun

    @property
    def run_id(self) -> str:
        return f"{self.recipe.name}-seed{self.seed}" + (f"-{self.tag}" if self.tag else "")


def peak_memory(device: torch.device) -> dict:
    """CUDA: max allocated during the run. CPU: the whole process's peak RSS (not per run), so labelled."""
    if device.type == "cuda":
        return {"kind": "cuda_max_allocated", "bytes": torch.cuda.max_memory_allocated(device),
                "label": "CUDA max allocated"}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = rss if sys.platform == "darwin" else rss * 1024
        return {"kind": "cpu_process_peak_rss", "bytes": rss, "label": "process peak RSS (CPU, whole process)"}
    except ImportError:
        return {"kind": "n/a", "bytes": None, "label": "n/a"}


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only; fused on CUDA."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    fused = {"fused": True} if torch.device(cfg.device).type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), **fused)


class Run:
    """State of one run; ``execute()`` trains it (from a checkpoint when one is given) and returns a result."""

    def __init__(self, spec: RunSpec, model_config: GPTConfig, corpus: Corpus, cfg: TrainConfig,
                 checkpoint_path: pathlib.Path | None = None):
        self.spec, self.model_config, self.corpus, self.cfg = spec, model_config, corpus, cfg
        self.checkpoint_path = checkpoint_path
        self.device = torch.device(cfg.device)
        self.ranks = parallel.Ranks.of(cfg.parallel)
        torch.manual_seed(spec.seed)  # every rank builds the same weights, then shards them (FSDP2)
        self.model = parallel.shard(GPT(model_config).to(self.device), spec.recipe, cfg.parallel, cfg.backend)
        self.optimizer = build_optimizer(self.model, cfg)
        torch.manual_seed(spec.seed + _TRAIN_SEED_OFFSET)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(spec.seed + _TRAIN_SEED_OFFSET)
        self.progress = {"step": 0, "losses": [], "val_history": [], "diagnostics": [], "first_step_s": None,
                         "interval_step_s": [], "timed_steps": 0, "timed_s": 0.0, "wall_s": 0.0}

    def identity(self) -> dict:
        fields = {name: getattr(self.cfg, name) for name in TrainConfig.identity_fields()}
        return {"run_id": self.spec.run_id, "recipe": self.spec.recipe.fingerprint(), "seed": self.spec.seed,
                "model": dataclasses.asdict(self.model_config), "corpus": self.corpus.info.get("sha256"),
                "tokenizer": self.corpus.info.get("tokenizer"), **fields}

    def autocast(self):
        if self.cfg.autocast_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = train_batch(self.corpus.train, self.cfg.batch_size, self.model_config.seq_len, self.cfg.data_seed,
                           step)
        x, y = self.ranks.rows(x), self.ranks.rows(y)  # this rank's share of the global batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_step(self, compiled, step: int) -> torch.Tensor:
        x, y = self.batch(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr_at(step)
        with self.autocast():
            loss = compiled(x, y)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def evaluate(self, compiled, val_set) -> float:
        """Mean loss over the fixed validation batches, through the training graph (no recompilation).

        Grad mode stays on so the compiled training graph is reused (no backward is run); the RNG states
        are restored afterwards, so evaluation never changes the training curve.
        """
        saved = checkpoint.rng_state()
        total = 0.0
        for x, y in val_set:
            with self.autocast():
                total += float(compiled(x.to(self.device), y.to(self.device)).detach())
        checkpoint.set_rng_state(saved)
        if self.ranks.world_size > 1:  # each rank's share of every batch: the global mean is the ranks' mean
            total = float(self.ranks.mean(torch.tensor(total, dtype=torch.float64, device=self.device)))
        return total / len(val_set)

    def measure(self, step: int) -> None:
        """--diagnose: alpha and SQNR of every rewritten GEMM operand on this step's batch (not the training path)."""
        x, y = self.batch(step)
        saved = checkpoint.rng_state()
        layers = diagnose.measure(self.model, self.spec.recipe, x, y, self.autocast())
        checkpoint.set_rng_state(saved)
        self.progress["diagnostics"].append({"step": step, "layers": layers})

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            checkpoint.save(self.checkpoint_path, self.model, self.optimizer, self.identity(), self.progress)

    def resume(self) -> None:
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            self.progress = checkpoint.load(self.checkpoint_path, self.model, self.optimizer, self.identity())

    def _flush_due(self, step: int, done: int, start: int, end: int) -> bool:
        cfg = self.cfg
        return (step == start or done == end or done % cfg.log_every == 0
                or (cfg.eval_every and done % cfg.eval_every == 0)
                or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                or (cfg.diagnose_every and done % cfg.diagnose_every == 0))

    def _record(self, pending: list[torch.Tensor], mark: float, first_of_segment: bool) -> tuple[list[float], float]:
        """Synchronize, store the pending steps' losses and their time since ``mark``."""
        values = self.ranks.mean(torch.stack(pending).float()).cpu().tolist()  # waits for the device
        seconds = time.perf_counter() - mark
        progress = self.progress
        if first_of_segment:
            if not progress["losses"]:
                progress["first_step_s"] = seconds  # compilation happens in the first step
        else:
            progress["interval_step_s"].append(seconds / len(pending))
            progress["timed_steps"] += len(pending)
            progress["timed_s"] += seconds
        progress["losses"].extend(values)
        progress["step"] += len(values)
        return values, seconds

    def _after_sync(self, done: int) -> None:
        cfg = self.cfg
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            self.progress["val_history"].append({"step": done, "loss": self.evaluate(self.compiled, self.val_set)})
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.stop_at:
            self.save_checkpoint()

    def execute(self, reset: bool = True) -> dict:
        """Train from ``progress["step"]`` to the end (or to ``stop_at``); return the run's result.

        ``reset``: clear Dynamo's caches first, so the run compiles afresh. Without it, a run of the same
        recipe, backend and shapes as the previous one reuses its compiled graphs (its compile time is then
        close to 0); a different backend or recipe recompiles anyway (Dynamo's backend guard).
        """
        cfg, progress = self.cfg, self.progress
        if reset:
            torch._dynamo.reset()
        self.reused_compilation = not reset
        self.compiled = parallel.prepare(self.model, self.spec.recipe, cfg.backend, cfg.parallel, self.device)
        self.val_set = [(self.ranks.rows(x), self.ranks.rows(y)) for x, y in
                        val_batches(self.corpus.val, cfg.eval_batches, cfg.batch_size, self.model_config.seq_len)]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = progress["step"]
        end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
        bar = tqdm(total=cfg.steps, initial=start, desc=self.spec.run_id, disable=not cfg.progress,
                   dynamic_ncols=True, leave=True, file=sys.stderr)
        wall, pending, mark = time.perf_counter(), [], time.perf_counter()
        for step in range(start, end):
            if cfg.diagnose_every and step % cfg.diagnose_every == 0:
                self.measure(step)
                mark = time.perf_counter()
            pending.append(self.train_step(self.compiled, step))
            done = step + 1
            if not self._flush_due(step, done, start, end):
                continue
            values, seconds = self._record(pending, mark, step == start)
            bar.update(len(values))
            rate = len(values) * cfg.batch_size * self.model_config.seq_len / max(seconds, 1e-9)
            bar.set_postfix(loss=f"{values[-1]:.4f}", tok_s=f"{rate:,.0f}")
            pending = []
            if not all(math.isfinite(v) for v in values):
                break
            self._after_sync(done)
            mark = time.perf_counter()
        bar.close()
        progress["wall_s"] += time.perf_counter() - wall
        return self.result()

    def result(self) -> dict:
        p, cfg = self.progress, self.cfg
        median = statistics.median(p["interval_step_s"]) if p["interval_step_s"] else None
        finite = all(math.isfinite(v) for v in p["losses"])
        complete = p["step"] >= cfg.steps and finite
        interrupted = finite and p["step"] < cfg.steps  # --stop-at: continue with --resume
        if complete and not any(v["step"] == cfg.steps for v in p["val_history"]):
            p["val_history"].append({"step": cfg.steps, "loss": self.evaluate(self.compiled, self.val_set)})
        tokens = cfg.batch_size * self.model_config.seq_len  # the global batch: every rank's rows
        first = p["first_step_s"]
        memory = peak_memory(self.device)
        return {
            "run_id": self.spec.run_id, "recipe": self.spec.recipe.name, "seed": self.spec.seed,
            "tag": self.spec.tag, "backend": cfg.backend, "complete": complete, "steps_done": p["step"],
            "steps_expected": cfg.steps,
            "interrupted": interrupted, "losses": p["losses"],
            "val_loss": p["val_history"][-1]["loss"] if complete else None, "val_history": p["val_history"],
            "tokens_per_s": p["timed_steps"] * tokens / p["timed_s"] if p["timed_s"] > 0 else None,
            "step_time_s": median, "first_step_s": first,
            "compile_time_s": max(0.0, first - median) if first is not None and median is not None else None,
            "compilation_reused": self.reused_compilation,
            "peak_memory": memory, "wall_s": p["wall_s"], "diagnostics": p["diagnostics"],
            "num_params": self.model.num_params(), "parallel": cfg.parallel, "world_size": self.ranks.world_size,
            "peak_memory_per_rank": self.ranks.gather(memory["bytes"]),
            "ranks_identical": self.ranks.identical(self.model),
        }
