"""The ufp4 backend: entry point, options, Inductor forwarding, cache keys, and the aot -> Inductor ladder."""

import dataclasses
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from ufp4_compile import backend as backend_mod
from ufp4_compile.backend import make_aot_backend, make_backend, register, resolve_options, ufp4_backend
from ufp4_compile.passes.joint_pass import Ufp4JointPass, hashed_files
from ufp4_compile.recipes import NVFP4, UFP4
from ufp4_compile.testing import GraphCapture, compile_and_run
from ufp4_compile.testing.models import MLP, SwiGLU

FIXED = {"sr_seed_policy": "fixed"}


def test_entry_point_works_without_import():
    """A fresh interpreter: backend="ufp4" resolves through the installed entry point, nothing imported."""
    script = textwrap.dedent("""
        import sys, torch
        assert "ufp4_compile" not in sys.modules
        model = torch.nn.Linear(32, 32)
        x = torch.randn(16, 32)
        y = torch.compile(model, backend="ufp4", options={"sr_seed_policy": "fixed"})(x)
        assert "ufp4_compile" in sys.modules
        from ufp4_compile.backend import ufp4_backend
        assert torch._dynamo.lookup_backend("ufp4") is ufp4_backend
        print("max_abs_diff", (y - model(x)).abs().max().item())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    diff = float(done.stdout.split("max_abs_diff")[1])
    assert diff > 0  # quantized: not the float32 result


def test_register_is_idempotent():
    register()
    register()
    assert torch._dynamo.lookup_backend("ufp4") is ufp4_backend


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown option.*'bogus'.*valid ufp4 options: recipe, .*keep_first"):
        make_backend({"bogus": 1})
    model = nn.Linear(32, 32)
    with pytest.raises(Exception, match="valid ufp4 options"):
        torch.compile(model, backend="ufp4", options={"bogus": 1})(torch.randn(16, 32))


def test_unknown_recipe_and_bad_values():
    with pytest.raises(ValueError, match="valid names: ufp4, ufp4-nv, ufp4-mean, e2m1-ref, nvfp4, mxfp4, bf16"):
        resolve_options({"recipe": "fp3"})
    with pytest.raises(ValueError, match="keep_first=-1 is not valid"):
        resolve_options({"keep_first": -1})
    with pytest.raises(ValueError, match="sr_seed_policy='daily' is not valid; valid values: 'per_step', 'fixed'"):
        resolve_options({"sr_seed_policy": "daily"})
    with pytest.raises(ValueError, match="options must be a dict"):
        resolve_options(["recipe"])


@pytest.mark.parametrize("options, field, valid", [
    ({"skip": None}, "skip=None", "a module-name pattern or a list of them"),
    ({"skip": [1]}, "skip=[1]", "a module-name pattern or a list of them"),
    ({"skip": 5}, "skip=5", "a module-name pattern or a list of them"),
    ({"sr_seed": "abc", **FIXED}, "sr_seed='abc'", r"an integer in \[0, 2\*\*63\)"),
    ({"sr_seed": None, **FIXED}, "sr_seed=None", r"an integer in \[0, 2\*\*63\)"),
    ({"sr_seed": 2**70, **FIXED}, "sr_seed=1180591620717411303424", r"an integer in \[0, 2\*\*63\)"),
    ({"sr_seed": 1.5, **FIXED}, "sr_seed=1.5", r"an integer in \[0, 2\*\*63\)"),
    ({"rht_seed": "x"}, "rht_seed='x'", r"an integer in \[0, 2\*\*63\)"),
    ({"rht_seed": 1.5}, "rht_seed=1.5", r"an integer in \[0, 2\*\*63\)"),
    ({"keep_output_head": "false"}, "keep_output_head='false'", "True, False"),
    ({"keep_attention": 0}, "keep_attention=0", "True, False"),
    ({"dump_dir": 5}, "dump_dir=5", "a directory path"),
    ({"dump_dir": ""}, "dump_dir=''", "a directory path"),
    ({"dense_gemms": "yes"}, "dense_gemms='yes'", "'auto', True, False"),
    ({"dense_gemms": 1}, "dense_gemms=1", "'auto', True, False"),
    ({"dense_gemms": None}, "dense_gemms=None", "'auto', True, False"),
    ({"pair_launches": "yes"}, "pair_launches='yes'", "None .the default., True, False, 'same-axis', 'all'"),
    ({"pair_launches": 1}, "pair_launches=1", "True, False, 'same-axis', 'all'"),
    ({"keep_routers": True}, "keep_routers=True", "an integer >= 0"),
    ({"keep_routers": -1}, "keep_routers=-1", "an integer >= 0"),
    ({"keep_routers": 8.0}, "keep_routers=8.0", "an integer >= 0"),
    ({"recipe": None}, "recipe=None", "valid names: ufp4"),
    ({"compute_dtype": "fp16"}, "compute_dtype='fp16'", "'bf16', 'fp32'"),
])
def test_bad_option_values_name_the_field(options, field, valid):
    """Issue 16 item 11: each was a TypeError without the field's name, or silently accepted."""
    match = rf"{re.escape(field)} is not (valid|a known recipe).*{valid}"
    with pytest.raises(ValueError, match=match):
        resolve_options(options)
    with pytest.raises(ValueError, match=match):
        make_backend(options)
    with pytest.raises(ValueError, match=match):
        make_aot_backend(options)


@pytest.mark.parametrize("options", ["ufp4", [("recipe", "nvfp4")], ["recipe"], 0, "", ("recipe", "ufp4")])
def test_options_must_be_a_dict(options):
    """A string or a list of pairs was turned into a dict (or a raw 'dictionary update sequence' error)."""
    match = r"options must be a dict of option names to values, e.g. \{'recipe': 'ufp4'\}; got "
    for build in (resolve_options, make_backend, make_aot_backend):
        with pytest.raises(ValueError, match=match):
            build(options)
    with pytest.raises(ValueError, match=match):
        backend_mod.explain(nn.Linear(16, 16), torch.randn(16, 16), options=options)


def test_options_may_be_any_mapping():
    from types import MappingProxyType

    assert resolve_options(MappingProxyType({"recipe": "nvfp4"})).recipe is NVFP4
    assert make_backend(None).resolved.recipe is UFP4


def test_option_keys_must_be_strings():
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'bogus', 1; valid ufp4 options"):
        resolve_options({1: 2, "bogus": 3})


def test_sr_seed_without_the_fixed_policy_is_an_error():
    """sr_seed is read only under sr_seed_policy='fixed'; given alone it was silently ignored (every step drew
    its own seed), which defeats the reason to pass it. It is an error that says what to add."""
    with pytest.raises(ValueError, match="sr_seed=5 is only used with sr_seed_policy='fixed'.*add "
                                         "'sr_seed_policy': 'fixed'"):
        resolve_options({"sr_seed": 5})
    with pytest.raises(ValueError, match="sr_seed=5 is only used with sr_seed_policy='fixed'"):
        resolve_options({"sr_seed": 5, "sr_seed_policy": "per_step"})
    fixed = dataclasses.replace(UFP4, sr_seed_policy="fixed")
    assert resolve_options({"recipe": fixed, "sr_seed": 5}).recipe.sr_seed == 5  # the recipe's policy counts
    assert resolve_options({"sr_seed": 0, **FIXED}).recipe.sr_seed == 0


def test_bad_mode_lists_the_modes():
    with pytest.raises(ValueError, match="mode='fastest' is not valid; valid values: .*'max-autotune'"):
        make_backend({}, mode="fastest")


def test_good_option_values():
    """Path objects for dump_dir, numpy integers for counts and seeds, a tuple of patterns."""
    import pathlib

    import numpy as np

    resolved = resolve_options({"dump_dir": pathlib.Path("/tmp/x"), "keep_first": np.int64(1), "skip": ("a", "b"),
                                "sr_seed": np.int64(9), "rht_seed": 2**63 - 1, **FIXED, "dense_gemms": "auto",
                                "keep_routers": 0})
    assert resolved.dump_dir == "/tmp/x" and resolved.recipe.layers.keep_first == 1
    assert resolved.recipe.layers.skip == ("a", "b") and resolved.recipe.sr_seed == 9
    assert resolved.dense_gemms == "auto" and resolved.recipe.layers.keep_routers == 0
    for dense in (True, False):
        assert resolve_options({"dense_gemms": dense}).dense_gemms is dense


def test_options_build_the_recipe():
    resolved = resolve_options({"recipe": "nvfp4", "skip": "*.mlp.*", "keep_last": 2, "sr_seed_policy": "fixed",
                                "sr_seed": 5, "max_autotune": True})
    assert resolved.recipe.fprop == NVFP4.fprop
    assert resolved.recipe.layers.skip == ("*.mlp.*",) and resolved.recipe.layers.keep_last == 2
    assert resolved.recipe.sr_seed == 5 and resolved.recipe.sr_seed_policy.value == "fixed"
    assert resolved.inductor == {"max_autotune": True}
    assert resolve_options({"recipe": UFP4}).recipe is UFP4


def test_mode_and_inductor_options_reach_compile_fx(monkeypatch):
    seen = {}

    def fake_compile_fx(gm, example_inputs, inner_compile=None, config_patches=None):
        seen.update(config_patches)
        return gm.forward

    monkeypatch.setattr("torch._inductor.compile_fx.compile_fx", fake_compile_fx)
    model, x = nn.Linear(32, 32), torch.randn(16, 32)
    torch._dynamo.reset()
    torch.compile(model, backend="ufp4", mode="max-autotune-no-cudagraphs")(x)
    assert seen["max_autotune"] is True and isinstance(seen["joint_custom_pre_pass"], Ufp4JointPass)
    seen.clear()
    torch._dynamo.reset()
    torch.compile(model, backend="ufp4", options={"epilogue_fusion": False})(x)
    assert seen["epilogue_fusion"] is False and "max_autotune" not in seen
    seen.clear()
    torch._dynamo.reset()
    # torch.compile takes mode or options, not both; a configured backend takes both.
    torch.compile(model, backend=make_backend({"epilogue_fusion": False}, mode="max-autotune-no-cudagraphs"))(x)
    assert seen["max_autotune"] is True and seen["epilogue_fusion"] is False
    torch._dynamo.reset()


def test_static_launch_of_our_kernels_is_the_default_the_user_can_turn_off(monkeypatch):
    """The backend asks Inductor to launch user-defined kernels (ours) through its static launcher unless the
    user says otherwise, in the options or in Inductor's config."""
    import torch._inductor.config as inductor_config

    from ufp4_compile.backend import STATIC_LAUNCH, inductor_patches

    if STATIC_LAUNCH not in inductor_config._config:
        assert STATIC_LAUNCH not in inductor_patches(resolve_options({}))
        return
    assert inductor_patches(resolve_options({}))[STATIC_LAUNCH] is True
    assert inductor_patches(resolve_options({STATIC_LAUNCH: False}))[STATIC_LAUNCH] is False
    assert inductor_patches(resolve_options({"epilogue_fusion": False})) == {"epilogue_fusion": False,
                                                                           STATIC_LAUNCH: True}
    default = inductor_config._config[STATIC_LAUNCH].default
    with inductor_config.patch({STATIC_LAUNCH: not default}):
        assert STATIC_LAUNCH not in inductor_patches(resolve_options({}))
    seen = {}

    def fake_compile_fx(gm, example_inputs, inner_compile=None, config_patches=None):
        seen.update(config_patches)
        return gm.forward

    monkeypatch.setattr("torch._inductor.compile_fx.compile_fx", fake_compile_fx)
    torch._dynamo.reset()
    torch.compile(nn.Linear(32, 32), backend="ufp4")(torch.randn(16, 32))
    assert seen[STATIC_LAUNCH] is True
    torch._dynamo.reset()


@pytest.mark.parametrize("option, state", [(None, "pairs1NoneF"), (True, "pairs1NoneF"), (False, "pairs0NoneF"),
                                           ("same-axis", "pairs1FalseF"), ("all", "pairs1TrueF"),
                                           ("no-dual", "pairs1None0"), ("dual-last", "pairs1NoneL"),
                                           ("single-duals", "pairs1NoneFS")])
def test_pair_launches_option_holds_while_forward_and_backward_lower(monkeypatch, option, state):
    """The pair_launches option is the lowering's setting while each graph compiles, the backward's (which
    AOTAutograd compiles at the first backward, after the backend returned) included, and it is part of
    the cache key the joint pass gives Inductor; outside, the lowering's setting is untouched."""
    import torch._inductor.compile_fx as compile_fx

    from ufp4_compile.lowering import kernel_calls

    seen, keys = [], []
    original, original_key = compile_fx.compile_fx_inner, backend_mod.lowering_cache_key

    def inner(gm, example_inputs, **kwargs):
        seen.append((bool(kwargs.get("is_backward")), kernel_calls.state_key()))
        return original(gm, example_inputs, **kwargs)

    def key():
        keys.append(original_key())
        return keys[-1]

    monkeypatch.setattr(compile_fx, "compile_fx_inner", inner)
    monkeypatch.setattr(backend_mod, "lowering_cache_key", key)
    torch._dynamo.reset()
    options = {} if option is None else {"pair_launches": option}
    backend = make_backend({**options, **FIXED})
    with torch._inductor.config.patch(force_disable_caches=True):
        torch.compile(nn.Linear(32, 32), backend=backend)(torch.randn(16, 32, requires_grad=True)).sum().backward()
    torch._dynamo.reset()
    assert seen == [(False, state), (True, state)]
    assert keys and all(k.endswith(state) for k in keys)
    assert kernel_calls.state_key() == "pairs1NoneF"


def test_user_joint_pass_runs_after_ours():
    calls = []

    class Mine:
        def __call__(self, graph):
            calls.append(sum(n.target is torch.ops.ufp4.scaled_mm.default for n in graph.nodes))

        def uuid(self):
            return "mine-1"

    compile_and_run(nn.Linear(32, 32), torch.randn(16, 32), options={"joint_custom_pre_pass": Mine(), **FIXED},
                    backward=False)
    assert calls == [2]  # the Fprop and the Wgrad (the input needs no gradient: no Dgrad)


def test_uuid_covers_sources_recipe_and_caching_switches():
    names = {str(p.relative_to(p.parents[1])) if p.parent.name != "ufp4_compile" else p.name
             for p in hashed_files()}
    assert {"ops.py", "backend.py", "recipes.py", "dispatch.py", "passes/rewrite_matmuls.py",
            "numerics/quantize.py"} <= names
    a, b = Ufp4JointPass(UFP4).uuid(), Ufp4JointPass(NVFP4).uuid()
    assert a and b and a != b and a == Ufp4JointPass(UFP4).uuid()
    assert Ufp4JointPass(UFP4, sinks=[GraphCapture()]).uuid() is None  # dumping: always run the pass
    assert Ufp4JointPass(UFP4, extra=lambda graph: None).uuid() is None  # a pass with no uuid of its own


def test_uuid_covers_the_lowerings_forced_choices():
    """``force_choices`` changes the code a graph lowers to: a graph compiled under it has its own key."""
    from ufp4_compile.backend import lowering_cache_key
    from ufp4_compile.lowering import scaled_mm

    plain = Ufp4JointPass(UFP4, key_extra=lowering_cache_key()).uuid()
    with scaled_mm.force_choices("template"):
        forced = Ufp4JointPass(UFP4, key_extra=lowering_cache_key()).uuid()
        with scaled_mm.force_choices("extern", allow_cpu=True):
            extern = Ufp4JointPass(UFP4, key_extra=lowering_cache_key()).uuid()
    assert len({plain, forced, extern}) == 3
    assert plain == Ufp4JointPass(UFP4, key_extra=lowering_cache_key()).uuid()


def test_cached_compile_keeps_the_recipe_apart():
    """With Inductor's caches on, recompiling gives the same quantized output, and another recipe does not
    hit the first recipe's cache entry."""
    torch.manual_seed(0)
    model, x = MLP(32, 64), torch.randn(2, 16, 32)

    def run(recipe):
        torch._dynamo.reset()
        with torch.no_grad():
            return torch.compile(model, backend=make_backend({"recipe": recipe, **FIXED}))(x)

    first, other, again = run("ufp4"), run("e2m1-ref"), run("ufp4")
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert (other - first).abs().max() > 0


def test_lowering_hook_not_used_on_cpu():
    assert backend_mod.register_lowering([torch.randn(2)]) is False


@pytest.mark.parametrize("model", [MLP(32, 64), SwiGLU(32, 64)], ids=["mlp", "swiglu"])
def test_ladder_eager_aot_inductor(model):
    """fullgraph=True on every rung; the AOT rung (eager execution of the rewritten graph) and Inductor agree
    exactly in fp32 with fixed seeds, and both differ from the unquantized model."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 32, requires_grad=True)
    eager = model(x)
    results = {}
    for rung in ("aot", "inductor"):
        model.zero_grad()
        xr = x.detach().clone().requires_grad_()
        run = compile_and_run(model, xr, options=FIXED, backend=rung)
        results[rung] = (run.out.detach(), xr.grad, [p.grad.clone() for p in model.parameters()])
        assert len(run.report.rewritten) == len(run.report.rows) > 0
    (out_a, dx_a, dw_a), (out_i, dx_i, dw_i) = results["aot"], results["inductor"]
    torch.testing.assert_close(out_i, out_a)
    torch.testing.assert_close(dx_i, dx_a)
    for gi, ga in zip(dw_i, dw_a):
        torch.testing.assert_close(gi, ga)
    assert (out_a - eager).abs().max() > 1e-3


def test_aot_backend_ignores_inductor_options():
    backend = make_aot_backend({"max_autotune": True, **FIXED})
    assert backend.report.recipe == "ufp4"
