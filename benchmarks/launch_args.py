"""Host time of one kernel launch through Inductor's static launcher, by how its pointer arguments come.

Inductor's generated code launches every Triton kernel (its own and ours) through
``StaticallyLaunchedCudaKernel.run``; for each pointer argument the launcher's C code calls the tensor's
``data_ptr`` and asks the driver for the device pointer (``cuPointerGetAttribute``), where an ``int`` argument
is taken as it is. This times launches of one small kernel with ``--pointers`` pointer arguments passed as
tensors, as ints, and as None (Triton specializes those away), so the cost a pointer argument adds to a
launch is measured apart from the rest. No GPU: says so and exits 2.

    python benchmarks/launch_args.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_slug, environment, header  # noqa: E402


def _kernel(n: int):
    """A kernel of ``n`` pointer arguments that adds one to the first pointer's first element for each pointer
    that is not None (the launch does next to nothing on the GPU)."""
    import triton
    import triton.language as tl

    names = [f"p{i}" for i in range(n)]
    body = "\n".join(f"    if {p} is not None:\n        acc += tl.load({p})" for p in names)
    src = (f"def k({', '.join(names)}):\n    acc = tl.zeros((), tl.float32)\n{body}\n"
           f"    tl.store(p0, acc)\n")
    path = Path(tempfile.mkdtemp()) / f"launch_args_{n}.py"  # triton.jit reads the function's source file
    path.write_text("import triton.language as tl\n\n" + src)
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"launch_args_{n}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return triton.jit(module.k)


def _static(compiled):
    from torch._inductor.runtime.static_triton_launcher import StaticallyLaunchedCudaKernel

    if not hasattr(compiled, "_cubin_path"):
        compiled._cubin_path = None
    launcher = StaticallyLaunchedCudaKernel(compiled)
    launcher.reload_cubin_from_raw(str(Path(tempfile.mkdtemp()) / f"{launcher.name}.cubin"))
    launcher.load_kernel(torch.cuda.current_device())
    return launcher


def time_launches(launcher, args, calls: int, reps: int) -> float:
    """Median host microseconds per launch over ``reps`` runs of ``calls`` launches (GPU kept busy by a sleep
    queued first, so no launch waits on it)."""
    stream = torch.cuda.current_stream().cuda_stream
    per = []
    for _ in range(reps):
        torch.cuda.synchronize()
        torch.cuda._sleep(200_000_000)
        t0 = time.perf_counter()
        for _ in range(calls):
            launcher.run(1, 1, 1, stream, *args)
        per.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(per)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pointers", default="1,4,8,16")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no GPU: nothing to time", file=sys.stderr)
        return 2
    rows = []
    for n in map(int, args.pointers.split(",")):
        kernel = _kernel(n)
        tensors = [torch.zeros(4, device="cuda") for _ in range(n)]
        row = {"pointers": n}
        pointers = _static(kernel[(1,)](*tensors))  # compiled for pointer arguments
        nones = [tensors[0]] + [None] * (n - 1)
        fewer = _static(kernel[(1,)](*nones))  # compiled with n - 1 of them None (constants)
        torch.cuda.synchronize()
        for how, launcher, call_args in (("tensors", pointers, tensors),
                                         ("ints", pointers, [t.data_ptr() for t in tensors]),
                                         ("None but the first", fewer, nones)):
            row[how] = time_launches(launcher, call_args, args.calls, args.reps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = environment()
    md = header(env, "Host time of a static launch by its pointer arguments") + (
        f"\nMicroseconds of host time per `StaticallyLaunchedCudaKernel.run` (median of {args.reps} runs of "
        f"{args.calls} launches issued behind a sleep kernel). Command: `python benchmarks/launch_args.py "
        f"{' '.join(argv or sys.argv[1:])}`\n\n| pointer arguments | as tensors | as ints | None but the first |\n"
        "|---|---|---|---|\n" + "".join(
            f"| {r['pointers']} | {r['tensors']:.2f} | {r['ints']:.2f} | {r['None but the first']:.2f} |\n"
            for r in rows))
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"launch_args_{device_slug(env['device'])}"
        stem.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
        stem.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
