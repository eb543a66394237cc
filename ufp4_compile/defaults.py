"""Process-wide default options, for code that names the backend but cannot pass it options.

torchtitan takes a backend name in its job config (``[compile] backend = "ufp4"``) and calls
``torch.compile(block, backend=name)`` itself; a launcher's command line likewise. Two ways to set the options
those compiles get, each a dict of the ``options`` keys (docs/backend.md):

- ``UFP4_OPTIONS``, an environment variable holding a JSON object:
  ``UFP4_OPTIONS='{"recipe": "nvfp4", "skip": ["attention.wo"]}'``. Read at every compile, so each process
  of a launcher sees it. Lists stand for tuples.
- ``ufp4_compile.configure(**options)`` in the training script: validated at once; replaces what an
  earlier call set; ``configure()`` clears it.

Later wins: the recipe's defaults, then ``UFP4_OPTIONS``, then ``configure(...)``, then the ``options`` given
to ``torch.compile``, ``make_backend``, ``explain`` or ``emulate``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

ENV = "UFP4_OPTIONS"
_configured: dict = {}


def environment_options() -> dict:
    """The options in ``UFP4_OPTIONS`` ({} when unset or blank); ValueError for anything but a JSON object."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return {}
    example = f"""{ENV}='{{"recipe": "nvfp4", "keep_first": 1}}'"""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{ENV}={text!r} is not valid JSON ({error}); it must be a JSON object of ufp4 "
                         f"options, e.g. {example}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{ENV}={text!r} is not valid; it must be a JSON object of ufp4 options, e.g. {example}")
    return value


def configured() -> dict:
    """What ``ufp4_compile.configure`` set (a copy)."""
    return dict(_configured)


def set_configured(options: Mapping) -> dict:
    """Replace the configured options (already validated by the caller); returns the previous ones."""
    global _configured
    previous, _configured = _configured, dict(options)
    return previous


def process_options() -> dict:
    """``UFP4_OPTIONS`` overlaid with ``configure(...)``: what every compile starts from."""
    return {**environment_options(), **_configured}


def with_defaults(options):
    """``options`` over the process defaults. Anything but a mapping or None is returned as it is, for the
    caller's validation to refuse."""
    if options is None:
        return process_options()
    if not isinstance(options, Mapping):
        return options
    return {**process_options(), **options}
