"""Recipes are validated at construction, also when derived with ``dataclasses.replace``: every bad value is a
ValueError that names the field and the valid values (a recipe is data a user edits; a wrong type must not
surface later as an AttributeError deep in the pass, or be silently accepted)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from ufp4_compile.recipes import PRESETS, UFP4, GemmRecipe, LayerPolicy, MeanSplit, OperandFormat, Recipe


def _raises(field, valid):
    return pytest.raises(ValueError, match=rf"{re.escape(field)}.*{valid}")


@pytest.mark.parametrize("recipe", list(PRESETS.values()), ids=list(PRESETS))
def test_presets_are_valid_and_survive_replace(recipe):
    assert dataclasses.replace(recipe) == recipe


@pytest.mark.parametrize("changes, field, valid", [
    ({"fprop": "int4"}, "fprop='int4'", "a GemmRecipe or None"),
    ({"wgrad": 16}, "wgrad=16", "a GemmRecipe or None"),
    ({"name": None}, "name=None", "a non-empty string"),
    ({"name": ""}, "name=''", "a non-empty string"),
    ({"layers": None}, "layers=None", "a LayerPolicy"),
    ({"layers": {"keep_first": 1}}, "layers={'keep_first': 1}", "a LayerPolicy"),
    ({"rht_seed": 1.5}, "rht_seed=1.5", r"an integer in \[0, 2\*\*63\)"),
    ({"rht_seed": "x"}, "rht_seed='x'", r"an integer in \[0, 2\*\*63\)"),
    ({"rht_seed": 2**70}, "rht_seed=", r"an integer in \[0, 2\*\*63\)"),
    ({"sr_seed": None}, "sr_seed=None", r"an integer in \[0, 2\*\*63\)"),
    ({"sr_seed": "abc"}, "sr_seed='abc'", r"an integer in \[0, 2\*\*63\)"),
    ({"sr_seed": 2**70}, "sr_seed=", r"an integer in \[0, 2\*\*63\)"),
    ({"sr_seed": -1}, "sr_seed=-1", r"an integer in \[0, 2\*\*63\)"),
    ({"sr_seed": True}, "sr_seed=True", r"an integer in \[0, 2\*\*63\)"),
])
def test_recipe_fields_are_checked(changes, field, valid):
    with _raises(field, valid):
        dataclasses.replace(UFP4, **changes)


@pytest.mark.parametrize("changes, field, valid", [
    ({"rht": 16.0}, "rht=16.0", r"\(0, 16, 32, 64, 128, 256\)"),
    ({"rht": "16"}, "rht='16'", r"\(0, 16, 32, 64, 128, 256\)"),
    ({"rht": True}, "rht=True", r"\(0, 16, 32, 64, 128, 256\)"),
    ({"a": "int4/16/fp32/nearest"}, "a='int4/16/fp32/nearest'", "an OperandFormat"),
    ({"b": None}, "b=None", "an OperandFormat"),
    ({"mean_split": None}, "mean_split=None", "'off', 'fp4', 'high'"),
])
def test_gemm_recipe_fields_are_checked(changes, field, valid):
    with _raises(field, valid):
        dataclasses.replace(UFP4.fprop, **changes)


@pytest.mark.parametrize("changes, field, valid", [
    ({"block": 16.0}, "block=16.0", r"\(16, 32\)"),
    ({"block": "16"}, "block='16'", r"\(16, 32\)"),
    ({"block_2d": "yes"}, "block_2d='yes'", "True, False"),
    ({"block_2d": 1}, "block_2d=1", "True, False"),
    ({"grid": None}, "grid=None", "'int4', 'e2m1'"),
])
def test_operand_format_fields_are_checked(changes, field, valid):
    with _raises(field, valid):
        dataclasses.replace(UFP4.fprop.b, **changes)


@pytest.mark.parametrize("changes, field, valid", [
    ({"keep_output_head": "false"}, "keep_output_head='false'", "True, False"),
    ({"keep_attention": 1}, "keep_attention=1", "True, False"),
    ({"keep_attention": None}, "keep_attention=None", "True, False"),
    ({"skip": None}, "skip=None", "a module-name pattern or a list of them"),
    ({"skip": 5}, "skip=5", "a module-name pattern or a list of them"),
    ({"skip": [1]}, "skip=[1]", "a module-name pattern or a list of them"),
    ({"skip": b"layers.*"}, "skip=b'layers.*'", "a module-name pattern or a list of them"),
    ({"skip": ["ok", None]}, "skip=['ok', None]", "a module-name pattern or a list of them"),
    ({"keep_first": 1.0}, "keep_first=1.0", "an integer >= 0"),
    ({"keep_last": -1}, "keep_last=-1", "an integer >= 0"),
    ({"min_features": "8"}, "min_features='8'", "an integer >= 0"),
    ({"keep_routers": True}, "keep_routers=True", "an integer >= 0"),
    ({"keep_routers": 2.5}, "keep_routers=2.5", "an integer >= 0"),
    ({"keep_routers": None}, "keep_routers=None", "an integer >= 0"),
])
def test_layer_policy_fields_are_checked(changes, field, valid):
    with _raises(field, valid):
        LayerPolicy(**changes)


def test_good_values_are_normalized():
    """Integers of other integer types (numpy) become ints; a single pattern becomes a one-element tuple."""
    policy = LayerPolicy(keep_first=np.int64(2), skip="*.mlp.*", keep_routers=np.int32(8))
    assert policy.keep_first == 2 and type(policy.keep_first) is int and type(policy.keep_routers) is int
    assert policy.skip == ("*.mlp.*",)
    assert LayerPolicy(skip=["a", "b"]).skip == ("a", "b") and LayerPolicy(skip=()).skip == ()
    recipe = dataclasses.replace(UFP4, sr_seed=np.int64(7), rht_seed=2**63 - 1)
    assert recipe.sr_seed == 7 and type(recipe.sr_seed) is int and recipe.rht_seed == 2**63 - 1
    gemm = GemmRecipe(a=OperandFormat("int4"), b=OperandFormat("int4"), rht=np.int64(32), mean_split="high")
    assert gemm.rht == 32 and type(gemm.rht) is int and gemm.mean_split is MeanSplit.HIGH
    assert OperandFormat("e2m1", np.int64(32)).block == 32
    assert Recipe(name="none", fprop=None, dgrad=None, wgrad=None).quantized_roles == ()
