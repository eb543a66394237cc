"""Process-wide default options (``UFP4_OPTIONS``, ``ufp4_compile.configure``) for code that names the
backend without passing options, as torchtitan's ``compile.backend = "ufp4"`` does."""

import json
import logging

import pytest
import torch

import ufp4_compile
from ufp4_compile import defaults
from ufp4_compile.backend import make_backend, register
from ufp4_compile.emulate import emulate
from ufp4_compile.testing.models import MLP, TinyLM


@pytest.fixture(autouse=True)
def clean_defaults(monkeypatch):
    monkeypatch.delenv(defaults.ENV, raising=False)
    previous = defaults.set_configured({})
    yield
    defaults.set_configured(previous)


def recipe_of(options=None):
    return make_backend(options).resolved.recipe


def test_nothing_set_changes_nothing():
    assert defaults.process_options() == {} and recipe_of().name == "ufp4"


def test_precedence_environment_configure_options(monkeypatch):
    monkeypatch.setenv(defaults.ENV, json.dumps({"recipe": "nvfp4", "keep_first": 1, "skip": ["*.fc2"]}))
    assert recipe_of().name == "nvfp4" and recipe_of().layers.skip == ("*.fc2",)
    previous = ufp4_compile.configure(keep_first=2)
    assert previous == {} and recipe_of().layers.keep_first == 2 and recipe_of().name == "nvfp4"
    assert recipe_of({"keep_first": 3}).layers.keep_first == 3
    assert ufp4_compile.configure() == {"keep_first": 2}  # clears, returns what was set
    assert recipe_of().layers.keep_first == 1


@pytest.mark.parametrize("text, message", [
    ("{recipe: nvfp4}", "is not valid JSON"),
    ('["nvfp4"]', "must be a JSON object of ufp4 options"),
])
def test_bad_environment_is_an_error_naming_the_variable(monkeypatch, text, message):
    monkeypatch.setenv(defaults.ENV, text)
    with pytest.raises(ValueError, match=f"UFP4_OPTIONS=.*{message}"):
        make_backend()


def test_configure_validates_at_once():
    with pytest.raises(ValueError, match="unknown option"):
        ufp4_compile.configure(keep_frist=1)
    with pytest.raises(ValueError, match="recipe"):
        ufp4_compile.configure(recipe="nvfp")
    assert defaults.configured() == {}


def test_explain_and_emulate_start_from_the_defaults():
    ufp4_compile.configure(recipe="bf16")
    x = torch.randn(2, 16, 32)
    assert not ufp4_compile.explain(MLP(32, 64), x).rewritten
    assert emulate(MLP(32, 64)).fc1._ufp4_state.recipe.name == "bf16"
    assert emulate(MLP(32, 64), "nvfp4").fc1._ufp4_state.recipe.name == "nvfp4"


def test_torchtitan_style_compile_takes_the_environment(monkeypatch, caplog):
    """What torchtitan's ``apply_compile`` does with ``[compile] backend = "ufp4"``: every block compiled on
    its own by name, no options; UFP4_OPTIONS carries the recipe and a block-local skip pattern."""
    register()
    monkeypatch.setenv(defaults.ENV, json.dumps({"recipe": "nvfp4", "skip": ["mlp.down"]}))
    # Caches off: on an FX-graph cache hit (an earlier test compiled the same block) the pass logs nothing.
    monkeypatch.setattr(torch._inductor.config, "force_disable_caches", True)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyLM(layers=2)
    for layer_id, block in model.layers.named_children():
        model.layers.register_module(layer_id, torch.compile(block, backend="ufp4", fullgraph=True))
    caplog.set_level(logging.DEBUG, logger="ufp4_compile.passes.rewrite_matmuls")
    model(torch.randint(0, 64, (2, 16))).sum().backward()
    rows = [r.args for r in caplog.records if r.name == "ufp4_compile.passes.rewrite_matmuls"
            and isinstance(r.args, tuple) and len(r.args) == 6]
    done = {(module, role) for _, module, role, _, _, detail in rows if not detail.startswith("kept")}
    kept = {module: detail for _, module, _, _, _, detail in rows if detail.startswith("kept")}
    assert len(done) == 4 * 3 and set(kept) == {"mlp.down"} and "skip pattern 'mlp.down'" in kept["mlp.down"]
    assert all("e2m1" in detail for *_, detail in rows if not detail.startswith("kept"))  # nvfp4's grid
