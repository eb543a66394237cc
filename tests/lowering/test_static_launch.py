"""The parent-side choice of the static launcher for user-defined kernels compiled in Inductor's worker pool
(ufp4_compile/lowering/static_launch.py), on stand-ins for Inductor's autotuner: which kernels are compiled
again in the parent, and that everything else keeps the worker's results. The launches themselves are
checked on the GPU (tests/lowering/test_kernel_calls.py, benchmarks/host_profile.py)."""

import types

import pytest

heuristics = pytest.importorskip("torch._inductor.runtime.triton_heuristics")


@pytest.fixture
def patched():
    from ufp4_compile.lowering import static_launch

    assert static_launch.install() and static_launch.install()  # idempotent
    method = heuristics.CachingAutotuner._precompile_worker
    assert method._ufp4_static
    return method


class _Stand:
    """What ``_precompile_worker`` touches of a ``CachingAutotuner``."""

    def __init__(self, results, heuristic_type, fn_lost=False):
        self.compile_results, self.heuristic_type = list(results), heuristic_type
        self.configs, self.launchers, self.triton_meta, self.inductor_meta = None, [], {"device": 0}, {}
        self.fn = types.SimpleNamespace(fn=None if fn_lost else object())
        self.compiled = []

    def _precompile_config(self, config):
        self.compiled.append(config)
        return ("parent", config)


def _result(config):
    return types.SimpleNamespace(config=config, compile_meta={}, kernel=types.SimpleNamespace(hash="h"))


@pytest.mark.parametrize("static_option", [True, False])
def test_user_kernels_from_workers_compile_again_where_static_launch_is_asked(patched, monkeypatch, static_option):
    """Without reuse_worker_binaries (on by default; the other test covers it), the parent compiles a user
    kernel's worker results again where the static launcher is asked for, and keeps them otherwise."""
    from torch._inductor import config

    from ufp4_compile.lowering import static_launch

    monkeypatch.setattr(heuristics.TritonBundler, "put", lambda *a, **k: None)
    monkeypatch.setattr(config, "static_launch_user_defined_triton_kernels", static_option)
    monkeypatch.setattr(config, "use_static_triton_launcher", True)
    user, generated = heuristics.HeuristicType.USER_AUTOTUNE, heuristics.HeuristicType.POINTWISE
    reloaded = types.SimpleNamespace(fn=types.SimpleNamespace(fn=object()))
    kernel = _Stand([_result("c0"), _result("c1")], user, fn_lost=True)
    kernel._reload_kernel = lambda: reloaded
    from torch._dynamo.utils import compilation_time_metrics

    from ufp4_compile.lowering.static_launch import TIMER

    timed = len(compilation_time_metrics.get(TIMER, []))
    monkeypatch.setattr(static_launch, "_reuse", False)
    patched(kernel)
    if static_option:  # recompiled in the parent, with the reloaded function, under its own compile timer
        assert kernel.compiled == ["c0", "c1"] and kernel.compile_results == [("parent", "c0"), ("parent", "c1")]
        assert kernel.fn is reloaded.fn and kernel.configs is None
        assert len(compilation_time_metrics[TIMER]) == timed + 1
    else:
        assert kernel.compiled == [] and [r.config for r in kernel.compile_results] == ["c0", "c1"]
        assert len(compilation_time_metrics.get(TIMER, [])) == timed
    other = _Stand([_result("c0")], generated)  # Inductor's own kernels keep the worker's choice
    patched(other)
    assert other.compiled == [] and len(other.compile_results) == 1
    lost = _Stand([_result("c0")], user, fn_lost=True)  # nothing to reload the function with: unchanged
    patched(lost)
    assert lost.compiled == [] and len(lost.compile_results) == 1


def test_a_static_result_is_kept(patched, monkeypatch):
    from torch._inductor import config

    monkeypatch.setattr(heuristics.TritonBundler, "put", lambda *a, **k: None)
    monkeypatch.setattr(config, "static_launch_user_defined_triton_kernels", True)
    monkeypatch.setattr(config, "use_static_triton_launcher", True)
    static = heuristics.StaticTritonCompileResult.__new__(heuristics.StaticTritonCompileResult)
    static.config, static.kernel = "c0", types.SimpleNamespace(hash="h")
    kernel = _Stand([static], heuristics.HeuristicType.USER_AUTOTUNE)
    patched(kernel)
    assert kernel.compiled == [] and kernel.compile_results == [static]


@pytest.mark.parametrize("outcome", ["static", "refused", "error"])
def test_reused_worker_binaries_or_a_second_compile(patched, monkeypatch, outcome):
    """With reuse_worker_binaries, the parent builds each static launcher from the worker's binary (its lost
    ``src.fn`` set to the reloaded function) and compiles nothing; where the static launcher refuses one
    result or anything fails, it compiles them all again, as without reuse."""
    from torch._inductor import config

    from ufp4_compile.lowering import static_launch

    monkeypatch.setattr(heuristics.TritonBundler, "put", lambda *a, **k: None)
    monkeypatch.setattr(config, "static_launch_user_defined_triton_kernels", True)
    monkeypatch.setattr(config, "use_static_triton_launcher", True)
    seen = []

    def can_statically_launch(kernel, inductor_meta, triton_meta, heuristic_type):
        seen.append(kernel.src.fn)
        if outcome == "error":
            raise RuntimeError("no cubin")
        return None if outcome == "refused" and len(seen) == 2 else types.SimpleNamespace(hash=kernel.hash)

    monkeypatch.setattr(heuristics.StaticTritonCompileResult, "can_statically_launch",
                        staticmethod(can_statically_launch))
    results = [_result("c0"), _result("c1")]
    for r in results:
        r.kernel.src = types.SimpleNamespace(fn=None)
    kernel = _Stand(results, heuristics.HeuristicType.USER_AUTOTUNE, fn_lost=True)
    reloaded = types.SimpleNamespace(fn=types.SimpleNamespace(fn=object()))
    kernel._reload_kernel = lambda: reloaded
    with static_launch.reuse_worker_binaries():
        patched(kernel)
    assert seen and all(fn is reloaded.fn for fn in seen)
    if outcome == "static":
        assert kernel.compiled == []
        assert [type(r) for r in kernel.compile_results] == [heuristics.StaticTritonCompileResult] * 2
        assert [(r.kernel.hash, r.config) for r in kernel.compile_results] == [("h", "c0"), ("h", "c1")]
    else:
        assert kernel.compiled == ["c0", "c1"] and kernel.compile_results == [("parent", "c0"), ("parent", "c1")]
    seen.clear()
    again = _Stand([_result("c0")], heuristics.HeuristicType.USER_AUTOTUNE)  # off: compiled again
    with static_launch.reuse_worker_binaries(False):
        patched(again)
    assert again.compiled == ["c0"] and not seen
    with pytest.raises(ValueError, match="enabled"):
        with static_launch.reuse_worker_binaries("yes"):
            pass
