"""A graph served from Inductor's caches: the pass does not run again, and the report says so.

Whether a cache serves a graph depends on process-wide state (configuration, registered passes, what earlier
compilations left), so the two compilations run in a fresh interpreter with a cache directory of their own."""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, torch
from torch._inductor import config
from ufp4_compile.backend import make_backend
from ufp4_compile.testing.models import MLP

torch.manual_seed(0)
model = MLP(64, 128)
x = torch.randn(4, 8, 64, requires_grad=True)
reports = []
with config.patch(force_disable_caches=False, fx_graph_cache=True, fx_graph_remote_cache=False), \
        torch._functorch.config.patch(enable_autograd_cache=True):
    for _ in range(2):
        torch._dynamo.reset()
        backend = make_backend({"recipe": "ufp4", "sr_seed_policy": "fixed"})
        torch.compile(model, backend=backend)(x).sum().backward()
        reports.append(dict(rewritten=len(backend.report.rewritten), rows=len(backend.report.rows),
                            cached=backend.report.cached_graphs, text=str(backend.report)))
print(json.dumps(reports))
"""


def test_cache_hit_is_counted_not_silently_empty(tmp_path):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    first, second = json.loads(done.stdout.splitlines()[-1])
    assert first["rewritten"] == 6 and first["cached"] == 0
    # AOTAutograd's cache served the second compile (the same graph, options and pass): no rows, but counted.
    assert second["rows"] == 0 and second["cached"] == 1, second
    assert "served from Inductor's cache" in second["text"]
