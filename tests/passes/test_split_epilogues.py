"""The split-epilogue pass (passes/split_epilogues.py): a dense GEMM's FP32 epilogue taken per piece where its
output is read only in pieces (SwiGLU's halves, attention's q, k, v), with the same bits, and Inductor then
fusing each piece's epilogue into its consumers' kernel."""

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ufp4_compile.passes import joint_pass
from ufp4_compile.passes.split_epilogues import split_epilogues
from ufp4_compile.testing import compile_and_run, count_calls
from ufp4_compile.testing.models import Attention

aten = torch.ops.aten
round_to_bf16 = torch.ops.ufp4.round_to_bf16.default


class Block(nn.Module):
    """Attention (q, k, v selected from one projection) and a SwiGLU whose gate and up are one projection
    chunked in two, as in the bench GPT."""

    def __init__(self, d: int = 32, hidden: int = 64):
        super().__init__()
        self.attention = Attention(d, heads=2)
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        x = x + self.attention(x)
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def _run(recipe, split: bool, monkeypatch, ctx=None, device="cpu", d=32, dynamic=False):
    monkeypatch.setattr(joint_pass, "split_epilogues", split_epilogues if split else (lambda graph: 0))
    torch.manual_seed(0)
    model = Block(d, 2 * d).to(device)
    x = torch.randn(2, 16 * d // 32, d, device=device, requires_grad=True)
    run = compile_and_run(model, x, options={"recipe": recipe, "sr_seed_policy": "fixed", "dense_gemms": True},
                          ctx=ctx, dynamic=dynamic)
    return run, [run.out.detach(), x.grad.clone(), *[p.grad.clone() for p in model.parameters()]]


@pytest.mark.parametrize("recipe", ["nvfp4", "ufp4-mean"])
def test_pieces_equal_the_whole_epilogue_bit_for_bit(recipe, monkeypatch):
    """bf16 autocast (the epilogues end in a bf16 rounding): output and every gradient equal the graph without
    the pass bit for bit; the forward graph has no split or select of a GEMM output left and one epilogue per
    piece (q, k, v; gate, up)."""
    ctx = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    whole, want = _run(recipe, False, monkeypatch, ctx())
    pieces, got = _run(recipe, True, monkeypatch, ctx())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert count_calls(whole.forward, aten.split.Tensor) == 1 and count_calls(pieces.forward, aten.split.Tensor) == 0
    # the bf16 conversions of the projections' FP32 products (round_to_bf16 after nvfp4's tensor scales, one per
    # projection; ufp4-mean: the conversion after the rank-one term, among other FP32 -> bf16 conversions, a
    # round_to_bf16 per piece): qkv's one becomes three, gate_up's two
    ends = lambda gm: sum(1 for n in gm.graph.nodes  # noqa: E731
                          if n.target in (round_to_bf16, torch.ops.prims.convert_element_type.default)
                          and n.args[0].meta["val"].dim() == 2 and n.meta["val"].dtype == torch.bfloat16
                          and n.args[0].meta["val"].dtype == torch.float32)
    assert ends(pieces.forward) - ends(whole.forward) == 3
    assert recipe != "nvfp4" or count_calls(whole.forward, round_to_bf16) == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("recipe", ["nvfp4", "ufp4-nv", "ufp4-mean"])
def test_pieces_equal_the_whole_on_cuda(recipe, monkeypatch):
    """On CUDA (dense GEMMs by default, Inductor fusing each piece's epilogue into its consumers): bf16
    autocast, output and every gradient equal the graph without the pass bit for bit."""
    options = dict(ctx=None, device="cuda", d=256)
    _, want = _run(recipe, False, monkeypatch, **{**options, "ctx": torch.autocast("cuda", dtype=torch.bfloat16)})
    _, got = _run(recipe, True, monkeypatch, **{**options, "ctx": torch.autocast("cuda", dtype=torch.bfloat16)})
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_fp32_model_pieces_equal_the_whole(monkeypatch):
    """Without autocast the epilogue is the tensor-scale multiply alone (FP32 output): split the same way."""
    whole, want = _run("ufp4-nv", False, monkeypatch)
    pieces, got = _run("ufp4-nv", True, monkeypatch)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert count_calls(pieces.forward, aten.split.Tensor) == 0 and count_calls(whole.forward, aten.split.Tensor) == 1


def test_symbolic_token_counts_are_left_alone(monkeypatch):
    """A dynamic token count: the pieces' views would need the graph's size nodes, so the pass leaves the
    epilogues whole (no guard added, no error) and the results are the graph's without it."""
    whole, want = _run("nvfp4", False, monkeypatch, dynamic=True)
    pieces, got = _run("nvfp4", True, monkeypatch, dynamic=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert count_calls(pieces.forward, aten.split.Tensor) == count_calls(whole.forward, aten.split.Tensor) == 1
    symbolic = [n for n in pieces.forward.graph.nodes if n.op == "placeholder"
                and isinstance(n.meta.get("val"), torch.SymInt)]
    assert symbolic, "the token count was not symbolic"


def _graph(fn, *shapes) -> fx.GraphModule:
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    with FakeTensorMode():
        args = [torch.empty(s) for s in shapes]
        return make_fx(fn, decomposition_table=select_decomp_table())(*args)


def _epilogue(a, b, ts):
    return round_to_bf16(torch.mm(a, b) * ts)


@pytest.mark.parametrize("case", ["split", "select", "select-permuted"])
def test_the_readers_it_takes_apart(case):
    def f(a, b, ts, row):
        y = (round_to_bf16(torch.mm(a, b) * ts + row)).view(2, 8, 96)
        if case == "split":
            return y.split([32, 64], -1)
        z = y.view(2, 8, 3, 4, 8)
        return z.unbind(2) if case == "select" else z.permute(2, 0, 3, 1, 4).unbind(0)

    gm = _graph(f, (16, 24), (24, 96), (), (1, 96))
    inputs = [torch.randn(16, 24), torch.randn(24, 96), torch.tensor(0.37), torch.randn(1, 96)]
    want = gm(*inputs)
    assert split_epilogues(gm.graph) == 1
    gm.recompile()
    got = gm(*inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    slices = [n for n in gm.graph.nodes if n.target is aten.slice.Tensor]
    # the product and the row operand sliced per piece; no whole-width epilogue left
    assert len(slices) == 2 * (2 if case == "split" else 3)
    assert all(n.meta["val"].shape[-1] != 96 for n in gm.graph.nodes if n.target is round_to_bf16)


def test_what_it_leaves_alone():
    """A whole-width reader beside the pieces, a split along another dimension, an epilogue that is not of a
    GEMM, a GEMM product read by another op too: left as they are."""
    cases = {
        "also read whole": lambda a, b, ts: (lambda y: (y.split(48, -1), y.sum()))(_epilogue(a, b, ts)),
        "other dimension": lambda a, b, ts: _epilogue(a, b, ts).split(8, 0),
        "no GEMM": lambda a, b, ts: round_to_bf16(a.repeat(1, 4) * ts).split(48, -1),
    }
    for name, fn in cases.items():
        gm = _graph(fn, (16, 24), (24, 96), ())
        assert split_epilogues(gm.graph) == 0, name
    # the product read by another op too: the epilogue's chain still splits (the product is only sliced)
    gm = _graph(lambda a, b, ts: ((lambda p: (round_to_bf16(p * ts).split(48, -1), p.sum()))(torch.mm(a, b))),
                (16, 24), (24, 96), ())
    assert split_epilogues(gm.graph) == 1


def test_inductor_fuses_each_piece_into_its_consumer():
    """Wrapper code on (fake) CUDA: the whole epilogue before a chunked SwiGLU takes a kernel of its own
    (the halves and the activation iterate over the pieces' shape); the pieces take one kernel for the saved
    halves and the activation."""
    from ufp4_compile.testing.fake_cuda import json_from_script

    assert json_from_script(__file__) == {"whole": 2, "pieces": 1}


def _swiglu_kernels() -> dict:
    """Triton launches in the wrapper of a chunked SwiGLU after the FP32 product, whole and per piece."""
    from ufp4_compile import lowering
    from ufp4_compile.testing.fake_cuda import wrapper_code

    lowering.register()

    def swiglu(p, ts, pieces):
        if pieces:
            gate, up = (round_to_bf16(aten.slice.Tensor(p, 1, i * 256, (i + 1) * 256) * ts).view(2, 128, 256)
                        for i in range(2))
        else:
            gate, up = round_to_bf16(p * ts).view(2, 128, 512).chunk(2, dim=-1)
        return F.silu(gate) * up, gate, up  # the halves are saved for the backward

    kernels = {}
    for name, pieces in (("whole", False), ("pieces", True)):
        code = wrapper_code(lambda p, ts: swiglu(p, ts, pieces), ((256, 512), torch.float32), ((), torch.float32),
                            decompose=True)
        kernels[name] = sum(1 for line in code.splitlines() if line.strip().startswith("triton_")
                            and ".run(" in line)
    return kernels


if __name__ == "__main__":
    import json

    print(json.dumps(_swiglu_kernels()))
