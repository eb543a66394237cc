"""A graph served from Inductor's caches: the pass does not run again, and the report says so."""

import torch

from ufp4_compile.backend import make_backend
from ufp4_compile.testing.models import MLP


def _compile_once(model, x):
    torch._dynamo.reset()
    backend = make_backend({"recipe": "ufp4", "sr_seed_policy": "fixed"})
    torch.compile(model, backend=backend)(x).sum().backward()
    return backend


def test_cache_hit_is_counted_not_silently_empty(tmp_path, monkeypatch):
    from torch._inductor import config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = MLP(64, 128)
    x = torch.randn(4, 8, 64, requires_grad=True)
    with config.patch(force_disable_caches=False, fx_graph_cache=True, fx_graph_remote_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=True):
        first = _compile_once(model, x)
        second = _compile_once(model, x)
    assert len(first.report.rewritten) == 6 and first.report.cached_graphs == 0
    # AOTAutograd's cache served the second compile (the same graph, options and pass): no rows, but counted.
    assert second.report.rows == [] and second.report.cached_graphs == 1
    assert "served from Inductor's cache" in str(second.report)
