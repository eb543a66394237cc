"""Seeing what the pass did: ufp4_compile.explain(), graph dumps (ufp4_compile.debug: UFP4_DUMP_DIR,
TORCH_COMPILE_DEBUG), decision logging and the structured trace."""

import json
import logging

import pytest
import torch

from ufp4_compile import explain
from ufp4_compile.debug import format_graph
from ufp4_compile.testing import compile_and_run
from ufp4_compile.testing.models import MLP, ManualAttention, TinyLM

FIXED = {"sr_seed_policy": "fixed"}


def test_explain_lists_every_matmul_with_its_role():
    torch._dynamo.reset()
    model = TinyLM(vocab=64, d=32, layers=2, tied=True)
    report = explain(model, torch.randint(0, 64, (2, 16)))
    # 2 blocks x (qkv, o, gate, up, down) + lm_head, each with Fprop, Dgrad and Wgrad.
    assert len(report.rows) == 33 and {r.role for r in report.rows} == {"fprop", "dgrad", "wgrad"}
    assert [r.module for r in report.kept] == ["lm_head"] * 3
    assert all(r.reason for r in report.kept) and all(r.a_fmt and r.b_fmt for r in report.rewritten)
    assert all(p.grad is None for p in model.parameters())  # nothing was run backward
    text = str(report)
    assert "33 matmul(s): 30 rewritten, 3 kept" in text
    assert "layers.1.mlp.down  wgrad" in text and "kept: output head: weight tied" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["counts"] == {"matmuls": 33, "rewritten": 30, "kept": 3}
    row = next(r for r in data["rows"] if r["module"] == "layers.0.attn.qkv" and r["role"] == "dgrad")
    assert row["shape"] == [32, 96, 32] and row["rht"] == 16 and row["sr"] == "a (seed per_step)"


def test_explain_reports_attention_and_options():
    torch._dynamo.reset()
    report = explain(ManualAttention(32, 2), torch.randn(2, 16, 32), recipe="nvfp4", options={"skip": ["o"]})
    bmm = [r for r in report.rows if r.kind == "bmm"]
    assert bmm and all("attention score/value" in r.reason for r in bmm)
    assert all("skip pattern 'o'" in r.reason for r in report.rows if r.module == "o")
    assert report.recipe == "nvfp4"
    with pytest.raises(ValueError, match="valid ufp4 options"):
        explain(ManualAttention(32, 2), torch.randn(2, 16, 32), options={"colour": "red"})
    with pytest.raises(ValueError, match="give one"):
        explain(ManualAttention(32, 2), torch.randn(2, 16, 32), recipe="nvfp4", options={"recipe": "ufp4"})


class KeywordInputs(torch.nn.Module):
    """Called the way transformers models are: ``model(input_ids=..., attention_mask=..., **kwargs)``."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(64, 32)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(32, 32) for _ in range(2))

    def forward(self, input_ids=None, attention_mask=None, scale=1.0, **kwargs):
        x = self.embed(input_ids) * attention_mask[..., None] * scale
        for layer in self.layers:
            x = layer(x)
        return x


def test_explain_takes_model_inputs_as_the_model_does():
    ids, mask = torch.randint(0, 64, (2, 16)), torch.ones(2, 16)
    torch._dynamo.reset()
    report = explain(KeywordInputs(), input_ids=ids, attention_mask=mask, options={"keep_first": 1})
    assert {r.module for r in report.kept} == {"layers.0"} and {r.module for r in report.rewritten} == {"layers.1"}
    torch._dynamo.reset()
    report = explain(KeywordInputs(), ids, mask, scale=2.0, recipe="nvfp4")  # positional and keyword together
    assert report.recipe == "nvfp4" and {r.module for r in report.rewritten} == {"layers.0", "layers.1"}
    # A model taking **kwargs would swallow an option passed as a keyword: it is refused, with the fix.
    with pytest.raises(TypeError, match=r"keep_first is a ufp4 option: explain\(model, \.\.\., "
                                        r"options=\{'keep_first': 1\}\)"):
        explain(KeywordInputs(), input_ids=ids, attention_mask=mask, keep_first=1)


def test_format_graph_sections():
    run = compile_and_run(MLP(32, 64), torch.randn(2, 16, 32, requires_grad=True), options=FIXED, backend="aot")
    after = run.capture.joint_after[0]
    assert after.startswith("# forward\n") and "\n# backward\n" in after and "\n# outputs\n" in after
    assert "ufp4.scaled_mm.default(" in after and "aten.mm" not in after and "aten.addmm" not in after
    assert "aten.addmm.default(" in run.capture.joint_before[0]
    assert "# forward" in format_graph(run.forward.graph)


def _dump_files(path):
    return sorted(p.name.split("_", 2)[2] for p in path.glob("graph_*.txt"))


def test_dump_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("UFP4_DUMP_DIR", str(tmp_path))
    compile_and_run(MLP(32, 64), torch.randn(2, 16, 32, requires_grad=True), options=FIXED)
    assert _dump_files(tmp_path) == ["backward.txt", "forward.txt", "joint_after.txt", "joint_before.txt",
                                     "report.txt"]
    before = next(tmp_path.glob("*_joint_before.txt")).read_text()
    backward = next(tmp_path.glob("*_backward.txt")).read_text()
    report = next(tmp_path.glob("*_report.txt")).read_text()
    assert "ufp4" not in before and backward.count("ufp4.scaled_mm") == 4
    assert "6 matmul(s): 6 rewritten, 0 kept" in report


def test_torch_compile_debug_dumps_into_debug_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_COMPILE_DEBUG", "1")
    monkeypatch.delenv("UFP4_DUMP_DIR", raising=False)
    monkeypatch.setattr(torch._dynamo.config, "debug_dir_root", str(tmp_path))
    with torch.no_grad():
        compile_and_run(MLP(32, 64), torch.randn(2, 16, 32), options=FIXED, backend="aot", backward=False)
    dumps = list(tmp_path.rglob("ufp4/graph_*_joint_after.txt"))
    assert len(dumps) == 1 and "ufp4.scaled_mm" in dumps[0].read_text()


def test_decisions_are_logged(caplog):
    logger = logging.getLogger("ufp4_compile")  # torch's handler does not propagate to caplog's root handler
    saved = (logger.propagate, list(logger.handlers), logger.level)
    torch._logging.set_logs(modules={"ufp4_compile": logging.DEBUG})  # what TORCH_LOGS="+ufp4_compile" does
    logger.addHandler(caplog.handler)
    try:
        assert logger.getEffectiveLevel() == logging.DEBUG
        compile_and_run(torch.nn.Linear(40, 32), torch.randn(16, 40), options=FIXED, backend="aot",
                        backward=False)
    finally:
        logger.removeHandler(caplog.handler)
        torch._logging.set_logs()
        # set_logs leaves the logger not propagating, with torch's handler: later tests' caplog would see nothing.
        logger.propagate, logger.handlers, logger.level = saved[0], saved[1], saved[2]
    decisions = [r.getMessage() for r in caplog.records if r.name == "ufp4_compile.passes.rewrite_matmuls"]
    assert any("kept: K=40 (reduction of fprop) is not a multiple of 16" in m for m in decisions)
    assert any("wgrad" in m and "a=int4/16/fp32/stochastic" in m for m in decisions)


def test_report_is_a_structured_trace_artifact(monkeypatch):
    artifacts = []

    def fake_trace(name, metadata_fn=None, payload_fn=None, **kwargs):
        if name == "artifact":
            artifacts.append((name, metadata_fn(), payload_fn()))

    monkeypatch.setattr(torch._logging, "trace_structured", fake_trace)
    compile_and_run(MLP(32, 64), torch.randn(2, 16, 32), options=FIXED, backend="aot", backward=False)
    ours = [a for a in artifacts if a[1].get("name", "").startswith("ufp4_report")]
    assert len(ours) == 1 and ours[0][0] == "artifact" and ours[0][1]["encoding"] == "json"
    assert json.loads(ours[0][2])["counts"]["rewritten"] == 5  # fc1: Fprop, Wgrad (x needs no grad); fc2: all 3


def test_explain_covers_every_graph_of_a_model_with_graph_breaks():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)

        def forward(self, x):
            x = self.a(x)
            torch._dynamo.graph_break()
            return self.b(x)

    torch._dynamo.reset()
    report = explain(Broken(), torch.randn(16, 32))
    assert report.graphs == 2 and {r.module for r in report.rows} == {"a", "b"}
    assert len({r.graph for r in report.rows}) == 2
