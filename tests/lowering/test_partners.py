"""Which quantizations of a training step's graphs share a launch (ufp4_compile/lowering/partners.py): the
partner finder walked over the graphs Inductor lowers for a one-block GPT (CPU, traced; the launches it
chooses are checked in test_kernel_calls_codegen.py and on the GPU in test_kernel_calls.py), and the
settings of pair_launches."""

import pytest
import torch


def _step_pairs(monkeypatch, autocast: bool, cudagraphs: bool, recipe: str = "ufp4") -> dict:
    """What the pairing would pair on the graphs Inductor lowers for a one-block GPT's training step (forward
    and backward, after the partitioner), walked as the lowering walks them: per graph, (quantizations,
    sorted pair kinds, dequantizations, dequantize pairs)."""
    import torch._inductor.compile_fx as compile_fx

    from ufp4_compile.backend import make_backend
    from ufp4_compile.lowering import partners
    from ufp4_compile.models.gpt import GPT, GPTConfig

    graphs = []
    original = compile_fx.compile_fx_inner

    def inner(gm, example_inputs, **kwargs):
        graphs.append((bool(kwargs.get("is_backward")), gm))
        return original(gm, example_inputs, **kwargs)

    monkeypatch.setattr(compile_fx, "compile_fx_inner", inner)
    torch._dynamo.reset()
    model = GPT(GPTConfig(n_layers=1))
    with (torch._inductor.config.patch(force_disable_caches=True),  # a cache hit would skip the lowering
          torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)):
        out = torch.compile(model, backend=make_backend({"dense_gemms": True, "recipe": recipe}))(
            torch.randint(0, 256, (2, 128)))
    (out[0] if isinstance(out, tuple) else out).float().mean().backward()
    torch._dynamo.reset()
    found = {}
    with torch._inductor.config.patch({"triton.cudagraphs": cudagraphs}):  # what the finder reads
        for backward, gm in graphs:
            order = {n: i for i, n in enumerate(gm.graph.nodes)}
            quantizations = [n for n in gm.graph.nodes if partners._quantize_call(n) is not None]
            kinds, taken = [], set()
            for node in quantizations:  # as the lowering walks them: a node paired ahead is not paired again
                if node in taken:
                    continue
                siblings = partners._siblings(node, order, taken)
                if not siblings:
                    continue
                taken |= {node, *siblings}
                dequantized = [s for s in siblings if partners._dequantize_call(s) is not None]
                siblings = [s for s in siblings if s not in dequantized]
                sibling = siblings[0]
                a, b = node.args, sibling.args
                # the format (each job has its own RHT); NVFP4's W beside X's dual in its 16 x 16 blocks
                shared = len(siblings) == 3 and siblings[1].args[2] != a[2]
                assert all(s.args[2] == a[2] for s in (siblings[:1] if shared else siblings))
                assert not shared or siblings[1].args[2] == siblings[2].args[2] == a[2].replace("/16/", "/16x16/")
                same_axis = partners._rowwise(a) == partners._rowwise(b)
                one_read = partners._can_dual(partners._quantize_call(node), partners._quantize_call(sibling))
                assert not dequantized or (len(dequantized) == 2 and one_read and len(siblings) == 1)
                kinds.append("dual + shared values" if shared else "two duals" if len(siblings) == 3 else
                             "same axis" if same_axis else
                             "one read + 2 dequantize" if dequantized else "one read" if one_read else
                             "one tensor" if a[0] is b[0] else "other axis")
            dequantizations = [n for n in gm.graph.nodes if partners._dequantize_call(n) is not None]
            dequantize_pairs = 0  # taken: the dequantizations a dual launch took
            for node in dequantizations:
                sibling = None if node in taken else partners._dequantize_sibling(node, order, taken)
                if sibling is not None:
                    dequantize_pairs += 1
                    taken |= {node, sibling}
            found["backward" if backward else "forward"] = (len(quantizations), sorted(kinds), len(dequantizations),
                                                            dequantize_pairs)
    return found


def test_pairing_finds_the_training_step_pairs(monkeypatch):
    """fp32 (W is quantized column-wise in the backward), without CUDA graphs: the pairing leaves no
    quantization alone: same-axis partners where one's input exists, else the other axis; dY's two in the
    backward (row-wise and column-wise: no other quantization's input exists yet) and W's column-wise ones two
    by two; and the backward's dequantizations of saved codes (X's only: W is quantized in the backward) two at a
    time in the dual launches of dY that find two within reach."""
    found = _step_pairs(monkeypatch, autocast=False, cudagraphs=False)
    linears = 4  # qkv, attention output, SwiGLU gate-and-up, down
    # forward: X's row-wise and column-wise quantizations from one read (the dual kernel first), W's row-wise
    # ones two by two
    assert found == {"forward": (3 * linears, ["one read"] * linears + ["same axis"] * (linears // 2), 0, 0),
                     "backward": (3 * linears, sorted(["one read", "one read + 2 dequantize"] * (linears // 2)
                                                      + ["same axis"] * (linears // 2)), linears, 0)}


@pytest.mark.parametrize("cudagraphs", [False, True])
def test_pairing_of_a_bf16_step(monkeypatch, cudagraphs):
    """bf16 autocast, as a GPU step runs: the forward quantizes X and W both ways, the backward dY. With or
    without CUDA graphs each tensor's two quantizations share the one-read dual launch (X's, W's, dY's), and
    a linear layer's X and W duals share one launch (W's bf16 copy exists before X's quantizations), unless
    two_duals is off, and dY's dual launch takes the dequantizations of W's and X's saved codes, unless
    dual_dequantize is off (then they pair with each other); with the dual kernel last, the forward pairs every
    quantization with one along its own kind of axis (X's and W's row-wise ones, their column-wise ones), and
    dY's two share the dual launch only without CUDA graphs (docs/kernels.md, "Two launches in one")."""
    from ufp4_compile.lowering import partners

    found = _step_pairs(monkeypatch, autocast=True, cudagraphs=cudagraphs)
    linears = 4
    assert found["forward"][:2] == (4 * linears, ["two duals"] * linears)
    assert found["backward"] == (2 * linears, ["one read + 2 dequantize"] * linears, 2 * linears, 0)
    with partners.pair_launches(two_duals=False):
        found = _step_pairs(monkeypatch, autocast=True, cudagraphs=cudagraphs)
    assert found["forward"][:2] == (4 * linears, ["one read"] * (2 * linears))
    assert found["backward"] == (2 * linears, ["one read + 2 dequantize"] * linears, 2 * linears, 0)
    with partners.pair_launches(dual_dequantize=False):
        found = _step_pairs(monkeypatch, autocast=True, cudagraphs=cudagraphs)
    assert found["forward"][:2] == (4 * linears, ["two duals"] * linears)
    assert found["backward"] == (2 * linears, ["one read"] * linears, 2 * linears, linears)
    with partners.pair_launches(dual="last"):
        found = _step_pairs(monkeypatch, autocast=True, cudagraphs=cudagraphs)
    assert found["forward"][:2] == (4 * linears, ["same axis"] * (2 * linears))
    assert found["backward"][:2] == (2 * linears, [] if cudagraphs else ["one read"] * linears)


def test_pairing_of_nvfp4_weights_beside_the_dual(monkeypatch):
    """NVFP4 quantizes W in 16 x 16 blocks, so one launch writes W's row-wise values and column-wise codes: with
    two_duals on (the default) that launch joins X's dual launch (kernels.quantize_pair's dual-single kernel),
    one launch per linear layer's forward; with it off, X's dual and W's one launch stay two."""
    from ufp4_compile.lowering import partners

    found = _step_pairs(monkeypatch, autocast=True, cudagraphs=False, recipe="nvfp4")
    linears = 4
    assert found["forward"][:2] == (4 * linears, ["dual + shared values"] * linears)
    assert found["backward"][:2] == (2 * linears, ["one read + 2 dequantize"] * linears)
    with partners.pair_launches(two_duals=False):
        found = _step_pairs(monkeypatch, autocast=True, cudagraphs=False, recipe="nvfp4")
    assert found["forward"][:2] == (4 * linears, sorted(["one read", "one tensor"] * linears))


@pytest.mark.parametrize("recipe", ["e2m1-ref", "mxfp4"])
def test_pairing_of_recipes_that_rotate_wgrad_only(monkeypatch, recipe):
    """e2m1-ref and mxfp4 rotate Wgrad's operands only, so X is quantized for Fprop without RHT and for Wgrad
    with it, and so is dY for Dgrad and Wgrad: each job of a launch keeps its own RHT size, so without CUDA
    graphs X, W and dY each take the one-read dual launch (X's and W's in one launch, dY's with the two
    dequantizations), MXFP4's at its span of 32 (blocks of 32) as e2m1-ref's at 16."""
    found = _step_pairs(monkeypatch, autocast=True, cudagraphs=False, recipe=recipe)
    linears = 4
    assert found["forward"][:2] == (4 * linears, ["two duals"] * linears)
    assert found["backward"][:2] == (2 * linears, ["one read + 2 dequantize"] * linears)


def test_other_axis_pairing_follows_cuda_graphs():
    """One tensor's two axes share a launch by default only without CUDA graphs (where the step waits on the
    host); pair_launches(other_axis=...) decides it either way, and refuses what is not a bool or None."""
    from torch._inductor import config

    from ufp4_compile.lowering import partners

    with config.patch({"triton.cudagraphs": False}):
        assert partners._pair_other_axis()
        with partners.pair_launches(other_axis=False):
            assert not partners._pair_other_axis()
    with config.patch({"triton.cudagraphs": True}):
        assert not partners._pair_other_axis()
        with partners.pair_launches(other_axis=True):
            assert partners._pair_other_axis()
            assert partners.state_key() == "pairs1TrueF"
    assert partners.state_key() == "pairs1NoneF"
    with pytest.raises(ValueError, match="other_axis"):
        with partners.pair_launches(other_axis="no"):
            pass
