"""Where the host's time goes in one training step: Python's profiler (cProfile) over steps issued while the
GPU is held busy by a sleep kernel queued first, so no call waits on the GPU and the figures are the host's
own cost. Per variant: the functions with the most own time (tottime) and the most time including callees
(cumtime) per step, and the step's host time without the profiler (the median of ``--steps`` steps).

    python benchmarks/host_profile.py --variants inductor,ufp4,ufp4:ufp4-mean --out benchmarks/results   # GPU

A variant is a train_step.py kind, optionally with its recipe after a colon (``--recipe`` otherwise). A step of
more launches than the GPU's launch queue holds (about 1024) cannot be issued behind the sleep kernel: the host
blocks in a launch until the sleep ends. ``--no-sleep`` profiles such steps as they run (the calls that wait on
the GPU then show as the launches' own time). Each variant also gets the timed step (CUDA events, median) with
Python's cyclic garbage collector on and off, the collector's time per step, and the threads alive in the
process: what else takes the host's time besides the step's own calls.

The model and variants are benchmarks/train_step.py's (the issue-6 GPT, bf16 autocast, fused AdamW).
cProfile slows Python calls down (builtins and C functions less), so its figures rank the host's costs;
``host ms`` (no profiler) is the figure to compare with the step's kernel time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pathlib
import pstats
import statistics
import sys
import threading
from collections import defaultdict
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_step  # noqa: E402
from common import device_slug, git_sha  # noqa: E402

from ufp4_compile.models.gpt import get_config  # noqa: E402


class _GcClock:
    """Seconds spent in Python's cyclic garbage collector, and collections by generation, while enabled."""

    def __init__(self):
        self.seconds, self.collections, self._t0 = 0.0, [0, 0, 0], None

    def __call__(self, phase, info):
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self.collections[info["generation"]] += 1
            self._t0 = None

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self)


def _median_ms(times) -> float:
    return 1e3 * statistics.median(times)


def phase_host_times(forward, backward, n: int, device) -> tuple[list[float], list[float]]:
    """Host seconds to issue the forward, and the backward with the optimizer's step, each behind its own sleep
    kernel: each half of a step issues fewer launches than the queue holds where the whole step does not."""
    fwd, bwd = [], []
    for _ in range(n):
        torch.cuda.synchronize(device)
        torch.cuda._sleep(train_step.SLEEP_CYCLES)
        t0 = time.perf_counter()
        loss = forward()
        fwd.append(time.perf_counter() - t0)
        torch.cuda.synchronize(device)
        torch.cuda._sleep(train_step.SLEEP_CYCLES)
        t0 = time.perf_counter()
        backward(loss)
        bwd.append(time.perf_counter() - t0)
    torch.cuda.synchronize(device)
    return fwd, bwd


def launch_costs(forward, backward, n: int, device) -> list[tuple[str, int, float, int]]:
    """Host time of each Triton kernel's launch call (Inductor's ``CachingAutotuner.run``: its Python, the
    launcher, the driver's launch), by kernel name over ``n`` steps whose halves are issued behind sleep kernels
    (:func:`phase_host_times`): (name, calls a step, mean microseconds a call, arguments a call)."""
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    original = CachingAutotuner.run
    stats = defaultdict(lambda: [0, 0, 0])

    def run(self, *args, **kwargs):
        t0 = time.perf_counter_ns()
        try:
            return original(self, *args, **kwargs)
        finally:
            entry = stats[self.inductor_meta.get("kernel_name") or self.fn.__name__]
            entry[0] += 1
            entry[1] += time.perf_counter_ns() - t0
            entry[2] = len(args)

    CachingAutotuner.run = run
    try:
        phase_host_times(forward, backward, n, device)
    finally:
        CachingAutotuner.run = original
    rows = [(name, calls // n, ns / calls / 1e3, nargs) for name, (calls, ns, nargs) in stats.items()]
    return sorted(rows, key=lambda r: -r[1] * r[2])


def variant_specs(text: str, default_recipe: str) -> list[tuple[str, str, str | None]]:
    """(label, kind, recipe) of each comma-separated ``KIND[:RECIPE]`` in ``text`` (train_step.py's kinds; the
    bf16 ``inductor`` kinds take no recipe, the others ``default_recipe`` unless they name one)."""
    out = []
    for spec in [k.strip() for k in text.split(",") if k.strip()]:
        kind, _, recipe = spec.partition(":")
        recipe = None if kind.startswith("inductor") else (recipe or default_recipe)
        out.append((f"bf16-{kind}" if recipe is None else f"{kind}:{recipe}", kind, recipe))
    return out


def profile_variant(label: str, kind: str, recipe: str | None, config, args, device) -> dict:
    model, optimizer, fn = train_step.build(kind, recipe, config, device)
    forward, backward = train_step.make_phases(fn, optimizer, config, args.batch_size, device)

    def step():
        backward(forward())

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize(device)
    host, sleep_s = train_step.host_times(step, args.steps, device)
    host_fwd, host_bwd = phase_host_times(forward, backward, args.steps, device)
    launches = launch_costs(forward, backward, args.steps, device)
    with _GcClock() as clock:
        timed_gc_on = train_step.timed_steps(step, args.steps, device)
    gc.disable()
    try:
        timed_gc_off = train_step.timed_steps(step, args.steps, device)
    finally:
        gc.enable()
    prof = cProfile.Profile()
    for _ in range(args.steps):
        torch.cuda.synchronize(device)
        if args.sleep:
            torch.cuda._sleep(train_step.SLEEP_CYCLES)
        prof.enable()
        step()
        prof.disable()
        torch.cuda.synchronize(device)
    tables = {}
    for key in ("tottime", "cumtime"):
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats(key).print_stats(args.top)
        tables[key] = buf.getvalue()
    total = sum(v[2] for v in pstats.Stats(prof).stats.values())  # own time summed: the profiled step's host
    return {"variant": label, "host_ms": _median_ms(host), "host_ms_all": [1e3 * h for h in host],
            "queue_full": max(host) >= 0.9 * sleep_s, "profiled_ms_per_step": 1e3 * total / args.steps,
            "host_ms_forward": _median_ms(host_fwd), "host_ms_backward": _median_ms(host_bwd), "launches": launches,
            "step_ms_gc_on": _median_ms(timed_gc_on), "step_ms_gc_off": _median_ms(timed_gc_off),
            "gc_ms_per_step": 1e3 * clock.seconds / args.steps, "gc_collections": clock.collections,
            "threads": sorted(t.name for t in threading.enumerate()), **tables}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="inductor,ufp4",
                   help="train_step.py kinds (inductor, ufp4, ufp4-cg, ...), each optionally KIND:RECIPE")
    p.add_argument("--recipe", default="ufp4")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=45)
    p.add_argument("--sleep", action=argparse.BooleanOptionalAction, default=True,
                   help="issue the profiled steps behind a sleep kernel (default); --no-sleep for steps that "
                        "fill the launch queue")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the host's cost is measured against a busy GPU)")
    device = torch.device("cuda")
    config = get_config("bench")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Host profile of one training step: {torch.cuda.get_device_name(device)}", "",
             f"torch {torch.__version__}, git {git_sha()}; cProfile over {args.steps} steps"
             + (" issued behind a sleep kernel (no call waits on the GPU)" if args.sleep else
                " issued as they run (no sleep kernel: calls that wait on the GPU count)")
             + ". `host ms`: the step issued behind a sleep kernel without the profiler (median; `queue full` where "
             "the step filled the launch queue and waited for the sleep). `step ms`: CUDA events, median, with "
             "Python's garbage collector on and off; `gc ms`: the collector's time per step.", ""]
    for label, kind, recipe in variant_specs(args.variants, args.recipe):
        print(f"{label} ...", flush=True)
        row = profile_variant(label, kind, recipe, config, args, device)
        host = "queue full" if row["queue_full"] else f"{row['host_ms']:.1f} ms"
        lines += [f"## {label}: host {host} ({', '.join(f'{h:.1f}' for h in row['host_ms_all'])}), "
                  f"profiled {row['profiled_ms_per_step']:.1f} ms",
                  "", f"step ms {row['step_ms_gc_on']:.2f} (gc on), {row['step_ms_gc_off']:.2f} (gc off); "
                  f"gc {row['gc_ms_per_step']:.2f} ms/step, collections by generation {row['gc_collections']} "
                  f"in {args.steps} steps; threads: {', '.join(row['threads'])}",
                  "", f"host ms of the forward {row['host_ms_forward']:.1f}, of the backward and optimizer "
                  f"{row['host_ms_backward']:.1f} (each behind its own sleep kernel)", "",
                  "| kernel launched | calls/step | µs/call | args | ms/step |", "|---|---|---|---|---|",
                  *[f"| `{name}` | {calls} | {us:.1f} | {nargs} | {calls * us / 1e3:.2f} |"
                    for name, calls, us, nargs in row["launches"][: args.top]],
                  "", "```", row["tottime"].strip(), "```", "", "```", row["cumtime"].strip(), "```", ""]
        torch._dynamo.reset()
    text = "\n".join(lines) + "\n"
    (out / f"host_profile_{device_slug(torch.cuda.get_device_name(device))}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
