"""Shared pieces of the kernel benchmarks: environment header, timing, and the result files.

Results go to ``benchmarks/results/<name>_<device>.{json,md,png}`` (``--out`` changes the folder), the
device name made file-safe (``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``).
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def git_sha() -> str:
    """The commit that ran (``UFP4_GIT_SHA`` first; ``-dirty`` for a tree that differs from it): the
    package's own record of it (``ufp4_compile.training.experiment.git_sha``)."""
    from ufp4_compile.training.experiment import git_sha as package_git_sha

    return package_git_sha() or "unknown"


def environment() -> dict:
    import triton

    props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    return {
        "device": props.name if props else "cpu",
        "sm_count": props.multi_processor_count if props else None,
        "capability": f"sm_{props.major}{props.minor}" if props else None,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "git_sha": git_sha(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def header(env: dict, title: str) -> str:
    return (f"# {title}\n\n"
            f"- device: {env['device']} ({env['capability']}, {env['sm_count']} SMs)\n"
            f"- torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}\n"
            f"- git {env['git_sha']}, {env['date']}\n")


def bench_ms(fn, warmup_ms: int = 10, rep_ms: int = 40) -> float:
    """Median milliseconds of ``fn`` (CUDA events, after warm-up; triton.testing.do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


# Bytes written between two calls of a timed function in bench_cold_cudagraph_ms: five times the H100's and
# H200's 50 MB L2, so nothing the previous call read or wrote is left there.
L2_FLUSH_BYTES = 256 << 20


def bench_cold_cudagraph_ms(fn, calls: int = 8, reps: int = 15) -> float:
    """Median milliseconds of ``fn`` from a cold L2, launch cost excluded: one CUDA graph replays ``calls``
    times (write :data:`L2_FLUSH_BYTES`, then ``fn``), another the writes alone, and the difference of their
    medians over ``reps`` replays is divided by ``calls``. A graph replaying ``fn`` alone
    (:func:`bench_cudagraph_ms`) finds its operands in L2 wherever they fit (16-45 MB tensors on the
    H200's 50 MB), which a training step's kernels, reading tensors another kernel wrote long before, do
    not. The writes leave dirty lines that the next kernel evicts in both graphs, so their cost cancels.
    ``bench_ms`` (with a note on stdout) where the graphs cannot be captured."""
    import statistics

    try:
        flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # compile and allocate outside the capture
            fn()
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graphs = []
        for with_fn in (True, False):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(calls):
                    flush.zero_()
                    if with_fn:
                        fn()
            graphs.append(graph)

        def median_ms(graph) -> float:
            graph.replay()
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            return statistics.median(times)

        both, flushes = median_ms(graphs[0]), median_ms(graphs[1])
        return max(both - flushes, 0.0) / calls
    except Exception as err:
        print("no cudagraph:", repr(err)[:200], flush=True)
        return bench_ms(fn)


def bench_cudagraph_ms(fn) -> float:
    """Median milliseconds of ``fn`` replayed in a CUDA graph (launch cost excluded); ``bench_ms`` (with a note
    on stdout) where it cannot be captured."""
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=30, return_mode="median"))
    except Exception as err:
        print("no cudagraph:", repr(err)[:200], flush=True)
        return bench_ms(fn)


# How the kernel benchmarks time a launch (``--timing``, parse_timed_args): (function, how the results say it).
TIMINGS = {
    "cold-graph": (bench_cold_cudagraph_ms, "Medians of CUDA-graph replays from a cold L2, launch cost excluded "
                                            "(common.bench_cold_cudagraph_ms)"),
    "warm-graph": (bench_cudagraph_ms, "Medians of CUDA-graph replays of the launch alone, its operands left in L2 "
                                       "where they fit (common.bench_cudagraph_ms)"),
    "do-bench": (bench_ms, "Median of triton.testing.do_bench (L2 flushed before each call; a host slower than the "
                           "flush leaves the GPU idle inside the timed window)"),
}
_timing = "cold-graph"


def parse_timed_args(parser, argv=None):
    """``parser``'s arguments with ``--timing`` added, which :func:`bench_launch` then follows."""
    global _timing
    parser.add_argument("--timing", choices=tuple(TIMINGS), default="cold-graph",
                        help="cold-graph (default): CUDA-graph replays from a cold L2, as a step finds its operands; "
                             "warm-graph: the launch replayed alone (the sweeps until 7491c39); do-bench: "
                             "triton.testing.do_bench (benchmarks/quantize.py until 7491c39)")
    args = parser.parse_args(argv)
    _timing = args.timing
    return args


def bench_launch(fn) -> float:
    """Milliseconds of ``fn`` by the timing ``--timing`` chose (cold-graph unless parse_timed_args said
    otherwise)."""
    return TIMINGS[_timing][0](fn)


def timing_note() -> str:
    """How the results say the launches were timed."""
    return TIMINGS[_timing][1]


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns``: (key, heading); floats printed with 3 significant decimals."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, env: dict, rows: list[dict], markdown: str, out_dir: Path | None = None,
                  plot=None) -> list[Path]:
    """``<name>_<device>.json`` and ``.md`` (and ``.png`` if ``plot(path)`` is given) in ``out_dir``."""
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{name}_{device_slug(env['device'])}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    paths[1].write_text(markdown)
    if plot is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            plot(stem.with_suffix(".png"))
            paths.append(stem.with_suffix(".png"))
        except Exception as exc:  # noqa: BLE001 (a plot must not lose the numbers)
            print(f"plot skipped: {type(exc).__name__}: {exc}")
    return paths
