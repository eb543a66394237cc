"""Property-based tests (hypothesis) of the ops and the backend: settings profiles.

Every test here takes its settings from one of the tiers below (``settings.get_profile("ufp4-fuzz-<tier>")``),
sized by what one example costs: ``reference`` (the pure-PyTorch numerics), ``kernel`` and ``preset`` (Triton
kernels, in the interpreter without a GPU; ``preset`` runs once per preset format), ``trace`` (Dynamo and
AOTAutograd with eager execution) and ``compile`` (Inductor on CPU).

``UFP4_FUZZ_PROFILE`` picks the size:

- ``ci`` (default): 8 to 200 examples per test, derandomized (the same examples on every run, no example
  database), no deadline; ``python -m pytest -q tests/fuzz`` takes about two minutes on 2 CPU cores.
- ``long``: 30x the examples, a fresh random seed on each run, failures saved in the ``.hypothesis/``
  example database and replayed first on the next run; about an hour on 2 CPU cores:
  ``UFP4_FUZZ_PROFILE=long python -m pytest -q tests/fuzz -x``. A run is repeated with the seed hypothesis
  prints (``--hypothesis-seed=N``), and one failure with the ``@reproduce_failure`` blob it prints.

``--hypothesis-show-statistics`` shows how the examples spread over formats, dtypes, layouts, partial
blocks, non-finite inputs and recipes (the ``event`` calls in the tests).

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1``).

The profiles are only registered here, never loaded, so hypothesis tests elsewhere keep their own settings.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# tier -> (examples under "ci", examples under "long")
TIERS = {"reference": (200, 6000), "kernel": (40, 1200), "preset": (8, 240), "trace": (60, 1800), "compile": (40, 1200)}
PROFILES = ("ci", "long")

profile = os.environ.get("UFP4_FUZZ_PROFILE", "ci")
if profile not in PROFILES:
    raise ValueError(f"UFP4_FUZZ_PROFILE={profile!r} is not valid; valid values: {', '.join(PROFILES)}")
long_run = profile == "long"
common = dict(deadline=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
if not long_run:
    common.update(derandomize=True, database=None)
for tier, (ci_examples, long_examples) in TIERS.items():
    settings.register_profile(f"ufp4-fuzz-{tier}", max_examples=long_examples if long_run else ci_examples, **common)
