"""How a model is prepared for one recipe: the ``ufp4`` backend, plain Inductor, or eager.

- ``ufp4`` (default): ``torch.compile(model, backend="ufp4", options={"recipe": name})``, every recipe
  (``bf16`` included: the baseline goes through the same backend).
- ``inductor``: plain ``torch.compile(model)``; only for recipes that quantize nothing (``bf16``).
- ``eager``: no compilation; recipes that quantize run through the eager emulation
  (``ufp4_compile.emulate``) when it is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import torch
from torch import nn

from ufp4_compile.recipes import Recipe

BACKENDS = ("ufp4", "inductor", "eager")


def ufp4_backend_available() -> bool:
    """True when ``torch.compile(..., backend="ufp4")`` can resolve the backend."""
    if importlib.util.find_spec("ufp4_compile.backend") is None:
        return False
    names = {ep.name for ep in importlib.metadata.entry_points(group="torch_dynamo_backends")}
    if "ufp4" in names:
        return True
    import torch._dynamo  # noqa: F401  (an un-installed checkout registers the backend itself)

    return "ufp4" in torch._dynamo.list_backends(exclude_tags=())


def _emulate_model(model: nn.Module, recipe: Recipe) -> nn.Module:
    from ufp4_compile.emulate import emulate

    return emulate(model, recipe)  # swaps the nn.Linear classes in place; parameters unchanged


def check_backend(backend: str, recipe: Recipe) -> None:
    """ValueError for a backend name that does not exist or cannot run ``recipe``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not valid; valid values: {', '.join(BACKENDS)}")
    if backend == "inductor" and recipe.quantized_roles:
        raise ValueError(f"backend='inductor' cannot run recipe {recipe.name!r} (it quantizes "
                         f"{', '.join(r.value for r in recipe.quantized_roles)}); use backend='ufp4'")
    if backend == "ufp4" and not ufp4_backend_available():
        raise ValueError("backend='ufp4' is not available (ufp4_compile.backend is missing or not registered "
                         "as a torch_dynamo_backends entry point; reinstall with `pip install -e .`); "
                         f"valid backends: {', '.join(BACKENDS)}")


def prepare(model: nn.Module, recipe: Recipe, backend: str) -> nn.Module:
    """The callable that trains ``model`` under ``recipe``; parameters stay shared with ``model``."""
    check_backend(backend, recipe)
    if backend == "ufp4":
        return torch.compile(model, backend="ufp4", options={"recipe": recipe.name})
    if backend == "inductor":
        return torch.compile(model)
    if recipe.quantized_roles:
        return _emulate_model(model, recipe)
    return model
