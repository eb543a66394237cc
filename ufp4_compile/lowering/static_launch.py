"""Inductor's static launcher for user-defined Triton kernels compiled in its worker pool.

The backend asks Inductor to launch the kernels it did not generate (ours, through the lowerings in
``kernel_calls``) with its static launcher (``static_launch_user_defined_triton_kernels``; docs/kernels.md):
a C++ launch from the generated wrapper instead of Triton's Python launcher. Inductor compiles a graph's Triton
kernels in a pool of worker processes and hands the workers ``use_static_triton_launcher`` but not that
option, so a user-defined kernel compiled there comes back bound to Triton's launcher, and the parent keeps
what the worker chose (``CachingAutotuner._precompile_worker`` reuses the worker's compile results). Only a
kernel compiled in the parent itself (small graphs, one compile thread) got the static launcher.

:func:`install` makes the parent choose again for such a kernel where its own config asks for static launches:
it drops the worker's results of a user-defined kernel that are not static and precompiles the kernel's
configs in the parent, where Triton's on-disk cache (which the worker filled) serves the binary. Whatever the
static launcher refuses stays on Triton's launcher, as in Inductor's own path.

That second compile took 17.0-22.6 s of a 52-75 s training-step compile on the H200 (benchmarks/results,
``ufp4.static_launch_precompile``), far more than loading cached binaries takes. By default
(:func:`reuse_worker_binaries`; on since the H200 measured it: the phase gone, ufp4's compile 1.51x bf16's
instead of 2.04x, the steps equal bit for bit) the parent builds the static launchers from the binaries the
worker already compiled instead (``StaticTritonCompileResult.can_statically_launch`` on each worker result, which finds the
worker's cubin in Triton's cache, as it does for Inductor's own kernels in the workers), and compiles again
only where that fails.
"""

from __future__ import annotations

import contextlib

OPTION = "static_launch_user_defined_triton_kernels"
# The name under which torch's compile timings (torch._dynamo.utils.compile_times()) list the parent's second
# precompile of our kernels: benchmarks/train_step.py reports it among the compile phases.
TIMER = "ufp4.static_launch_precompile"


_reuse = True  # reuse_worker_binaries


@contextlib.contextmanager
def reuse_worker_binaries(enabled: bool = True):
    """Within the block, the parent builds the static launchers of our kernels from the binaries its worker
    pool compiled (``enabled``, the default outside any block) instead of compiling them again (``False``: the
    second compile, as before); where it cannot (no cubin in Triton's cache, a result the static launcher
    refuses, any error) it compiles them again."""
    global _reuse
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled={enabled!r} is not valid; valid values: True, False")
    before, _reuse = _reuse, enabled
    try:
        yield
    finally:
        _reuse = before


def _static_results(autotuner, heuristics) -> list | None:
    """``autotuner``'s worker results as static ones, each from the binary the worker compiled, or None where
    one cannot be (then nothing of the autotuner is changed but a lost ``src.fn``, set to its function)."""
    static = heuristics.StaticTritonCompileResult
    results = []
    try:
        for result in autotuner.compile_results:
            if isinstance(result, static):
                results.append(result)
                continue
            src = getattr(result.kernel, "src", None)
            if src is not None and getattr(src, "fn", None) is None:  # lost in the pickle: the reloaded one
                src.fn = autotuner.fn
            launcher = static.can_statically_launch(result.kernel, autotuner.inductor_meta, autotuner.triton_meta,
                                                    autotuner.heuristic_type)
            if launcher is None:
                return None
            results.append(static(launcher, result.config, result.compile_meta, autotuner.inductor_meta))
    except Exception:  # any failure: the parent compiles them again, as without reuse
        return None
    return results


def _timed(name: str):
    """torch's compile timer for ``name`` (``dynamo_timed``), or a no-op where this torch has none."""
    try:
        from torch._dynamo.utils import dynamo_timed
    except ImportError:
        return contextlib.nullcontext()
    return dynamo_timed(name)


def _relaunch_in_parent(autotuner, heuristics) -> bool:
    """Whether ``autotuner`` (a ``CachingAutotuner`` whose compile results came from a worker) is a user-defined
    kernel with a result on Triton's launcher that the parent's config wants launched statically."""
    from torch._inductor import config

    user = getattr(getattr(heuristics, "HeuristicType", None), "USER_AUTOTUNE", None)
    static = getattr(heuristics, "StaticTritonCompileResult", None)
    return (user is not None and static is not None and getattr(autotuner, "heuristic_type", None) == user
            and bool(getattr(config, OPTION, False)) and bool(getattr(config, "use_static_triton_launcher", False))
            and not getattr(config, "cpp_wrapper", False)
            and all(hasattr(r, "config") for r in autotuner.compile_results)
            and any(not isinstance(r, static) for r in autotuner.compile_results))


def install() -> bool:
    """Patch ``CachingAutotuner._precompile_worker`` once per process (see the module's docstring); False where
    this torch lacks the pieces (then nothing changes)."""
    try:
        from torch._inductor.runtime import triton_heuristics as heuristics
    except ImportError:
        return False
    autotuner = getattr(heuristics, "CachingAutotuner", None)
    original = getattr(autotuner, "_precompile_worker", None)
    if original is None:
        return False
    if getattr(original, "_ufp4_static", False):
        return True

    def _precompile_worker(self):
        if getattr(self, "compile_results", None) and _relaunch_in_parent(self, heuristics):
            fn = getattr(self, "fn", None)
            reload = getattr(self, "_reload_kernel", None)
            if getattr(fn, "fn", True) is None:  # the worker's JIT function lost its Python function in the pickle
                if not callable(reload):
                    return original(self)
                self.fn = reload().fn  # as Inductor's own parent-side compiles do (_ensure_kernel_loaded)
            reused = _static_results(self, heuristics) if _reuse else None
            if reused is not None:
                self.compile_results = reused
                return original(self)  # keeps them (and files the binaries with Triton's bundler)
            self.configs = [r.config for r in self.compile_results]
            self.compile_results = []
            with _timed(TIMER):
                return original(self)
        return original(self)

    _precompile_worker._ufp4_static = True
    _precompile_worker.original = original
    autotuner._precompile_worker = _precompile_worker
    return True
