"""Why the host's time to issue a step varies: variants built side by side in one process, their steps issued
in turn behind sleep kernels, each sample's wall time beside the CPU time of the issuing thread and its
context switches.

    python benchmarks/host_modes.py --variants inductor,ufp4 --samples 24 --out benchmarks/results   # GPU

Per sample and phase (the forward; the backward with the optimizer's step): wall ms (``perf_counter``), the
main thread's CPU ms (``time.thread_time``), the process's CPU ms (every thread), voluntary and involuntary
context switches of the main thread (``getrusage(RUSAGE_THREAD)``) and the load average. Wall well above the
thread's CPU time means the thread waited (preempted, or blocked in a call); the two together means the
thread itself did more work. The variants alternate sample by sample, so a change in the machine's state
shows in all of them at once, and a variant's own slow mode in that variant alone.

The model and variants are benchmarks/train_step.py's (the issue-6 GPT, bf16 autocast, fused AdamW).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_step  # noqa: E402
from common import device_slug, git_sha  # noqa: E402
from host_profile import variant_specs  # noqa: E402

from ufp4_compile.models.gpt import get_config  # noqa: E402


def _clocks():
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return time.perf_counter(), time.thread_time(), time.process_time(), usage.ru_nvcsw, usage.ru_nivcsw


def _phase(fn, *args):
    """Run ``fn(*args)`` behind a fresh sleep kernel; (its result, wall ms, thread CPU ms, process CPU ms,
    voluntary and involuntary context switches)."""
    torch.cuda.synchronize()
    torch.cuda._sleep(train_step.SLEEP_CYCLES)
    w0, t0, p0, v0, i0 = _clocks()
    out = fn(*args)
    w1, t1, p1, v1, i1 = _clocks()
    torch.cuda.synchronize()
    return out, dict(wall=1e3 * (w1 - w0), thread_cpu=1e3 * (t1 - t0), process_cpu=1e3 * (p1 - p0),
                     vcsw=v1 - v0, ivcsw=i1 - i0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="inductor,ufp4", help="train_step.py kinds, each optionally KIND:RECIPE")
    p.add_argument("--recipe", default="ufp4")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the host's cost is measured against a busy GPU)")
    device = torch.device("cuda")
    config = get_config("bench")
    phases = {}
    for label, kind, recipe in variant_specs(args.variants, args.recipe):
        print(f"building {label} ...", flush=True)
        # train_step.build resets Dynamo; the variants built earlier keep their compiled code
        model, optimizer, fn = train_step.build(kind, recipe, config, device)
        forward, backward = train_step.make_phases(fn, optimizer, config, args.batch_size, device)
        for _ in range(args.warmup):
            backward(forward())
        torch.cuda.synchronize()
        phases[label] = (forward, backward, model, optimizer)
    samples = {label: [] for label in phases}
    for i in range(args.samples):
        for label, (forward, backward, _, _) in phases.items():
            loss, fwd = _phase(forward)
            _, bwd = _phase(backward, loss)
            samples[label].append(dict(i=i, load=os.getloadavg()[0], forward=fwd, backward=bwd))
    lines = [f"# Host time modes: {torch.cuda.get_device_name(device)}", "",
             f"torch {torch.__version__}, git {git_sha()}; {len(phases)} variants in one process, {args.samples} "
             "samples each in turn (forward, then backward + optimizer, each behind its own sleep kernel). "
             "ms: wall / main thread's CPU / process CPU; cs: voluntary / involuntary context switches of the "
             f"main thread; {os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}.", ""]
    for label, rows in samples.items():
        lines += [f"## {label}", "",
                  "| sample | load | forward ms | forward cs | backward ms | backward cs |", "|---|---|---|---|---|---|"]
        for r in rows:
            f, b = r["forward"], r["backward"]
            lines.append(f"| {r['i']} | {r['load']:.1f} | {f['wall']:.1f} / {f['thread_cpu']:.1f} / "
                         f"{f['process_cpu']:.1f} | {f['vcsw']} / {f['ivcsw']} | {b['wall']:.1f} / "
                         f"{b['thread_cpu']:.1f} / {b['process_cpu']:.1f} | {b['vcsw']} / {b['ivcsw']} |")
        for phase in ("forward", "backward"):
            walls = [r[phase]["wall"] for r in rows]
            cpus = [r[phase]["thread_cpu"] for r in rows]
            lines.append(f"\n{phase}: wall median {statistics.median(walls):.1f} ms (min {min(walls):.1f}, max "
                         f"{max(walls):.1f}); thread CPU median {statistics.median(cpus):.1f} ms (min "
                         f"{min(cpus):.1f}, max {max(cpus):.1f})")
        lines.append("")
    text = "\n".join(lines) + "\n"
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = device_slug(torch.cuda.get_device_name(device))
    (out / f"host_modes_{slug}.md").write_text(text)
    (out / f"host_modes_{slug}.json").write_text(json.dumps(samples, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
