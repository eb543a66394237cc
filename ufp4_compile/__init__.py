"""ufp4_compile: a torch.compile backend for 4-bit block-scaled LLM training.

``torch.compile(model, backend="ufp4", options={"recipe": "ufp4"})``. The import stays light: torch
internals (Dynamo, Inductor) and Triton are imported only when the backend or a kernel is used.
"""

from ufp4_compile.backend import explain  # imports no Dynamo/Inductor until called
from ufp4_compile.recipes import PRESETS, Recipe, get_recipe, recipe_names

__version__ = "0.1.0"

__all__ = ["PRESETS", "Recipe", "explain", "get_recipe", "recipe_names", "__version__"]
