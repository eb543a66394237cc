"""Where the host's time goes in one training step: Python's profiler (cProfile) over steps issued while the
GPU is held busy by a sleep kernel queued first, so no call waits on the GPU and the figures are the host's
own cost. Per variant: the functions with the most own time (tottime) and the most time including callees
(cumtime) per step, and the step's host time without the profiler (the median of ``--steps`` steps).

    python benchmarks/host_profile.py --variants inductor,ufp4 --out benchmarks/results   # GPU

The model and variants are benchmarks/train_step.py's (the issue-6 GPT, bf16 autocast, fused AdamW).
cProfile slows Python calls down (builtins and C functions less), so its figures rank the host's costs;
``host ms`` (no profiler) is the figure to compare with the step's kernel time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pathlib
import pstats
import statistics
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_step  # noqa: E402
from common import device_slug, git_sha  # noqa: E402

from ufp4_compile.models.gpt import get_config  # noqa: E402


def profile_variant(label: str, kind: str, recipe: str | None, config, args, device) -> dict:
    model, optimizer, fn = train_step.build(kind, recipe, config, device)
    step = train_step.make_step(fn, optimizer, config, args.batch_size, device)
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize(device)
    host, _ = train_step.host_times(step, args.steps, device)
    prof = cProfile.Profile()
    for _ in range(args.steps):
        torch.cuda.synchronize(device)
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
    return {"variant": label, "host_ms": 1e3 * statistics.median(host), "host_ms_all": [1e3 * h for h in host],
            "profiled_ms_per_step": 1e3 * total / args.steps, **tables}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="inductor,ufp4", help="train_step.py kinds (inductor, ufp4, ufp4-deqapart, ...)")
    p.add_argument("--recipe", default="ufp4")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=45)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the host's cost is measured against a busy GPU)")
    device = torch.device("cuda")
    config = get_config("bench")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Host profile of one training step: {torch.cuda.get_device_name(device)}", "",
             f"torch {torch.__version__}, git {git_sha()}; cProfile over {args.steps} steps issued behind a sleep "
             "kernel (no call waits on the GPU). `host ms`: the same without the profiler (median).", ""]
    for kind in [k.strip() for k in args.variants.split(",") if k.strip()]:
        recipe = None if kind.startswith("inductor") else args.recipe
        label = f"bf16-{kind}" if recipe is None else f"{kind}:{recipe}"
        print(f"{label} ...", flush=True)
        row = profile_variant(label, kind, recipe, config, args, device)
        lines += [f"## {label}: host {row['host_ms']:.1f} ms "
                  f"({', '.join(f'{h:.1f}' for h in row['host_ms_all'])}), profiled {row['profiled_ms_per_step']:.1f} ms",
                  "", "```", row["tottime"].strip(), "```", "", "```", row["cumtime"].strip(), "```", ""]
        torch._dynamo.reset()
    text = "\n".join(lines) + "\n"
    (out / f"host_profile_{device_slug(torch.cuda.get_device_name(device))}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
