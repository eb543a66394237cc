"""ufp4_compile: a torch.compile backend for 4-bit block-scaled LLM training.

``torch.compile(model, backend="ufp4", options={"recipe": "ufp4"})``. The import stays light: torch
internals (Dynamo, Inductor) and Triton are imported only when the backend or a kernel is used.
"""

from ufp4_compile.backend import explain  # imports no Dynamo/Inductor until called
from ufp4_compile.recipes import PRESETS, Recipe, get_recipe, recipe_names

__version__ = "0.1.0"

__all__ = ["PRESETS", "Recipe", "configure", "explain", "get_recipe", "recipe_names", "__version__"]


def configure(**options) -> dict:
    """Process-wide default ``options`` for every ufp4 compile, for code that names the backend without
    passing options (torchtitan's ``compile.backend = "ufp4"``): ``ufp4_compile.configure(recipe="nvfp4",
    skip=["output"])``. Validated now, with the ``UFP4_OPTIONS`` environment variable under it; replaces what an
    earlier call set (``configure()`` clears it); options given to ``torch.compile`` still win. Returns the
    previous configuration (:mod:`ufp4_compile.defaults`)."""
    from ufp4_compile import defaults
    from ufp4_compile.backend import resolve_options

    resolve_options({**defaults.environment_options(), **options})
    return defaults.set_configured(options)
