"""Compile a model with the ufp4 backend (Inductor or the AOT test backend) and capture what happened."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from ufp4_compile.testing.graphs import GraphCapture


@dataclasses.dataclass
class Compiled:
    out: torch.Tensor
    capture: GraphCapture
    report: object  # ufp4_compile.passes.Report

    @property
    def forward(self):
        return self.capture.forward[-1]

    @property
    def backward(self):
        return self.capture.backward[-1]


def compile_and_run(model, *inputs, options=None, backend: str = "inductor", backward: bool = True,
                    fullgraph: bool = True, ctx=None, dynamic=False) -> Compiled:
    """Reset Dynamo, compile ``model`` with caches off, run it once (and backward on ``out.sum()``)."""
    from ufp4_compile.backend import make_aot_backend, make_backend

    torch._dynamo.reset()
    capture = GraphCapture()
    options = dict(options or {})
    if backend == "inductor":
        # The capture sink makes the pass uuid None: FX/AOT caches are bypassed, the pass always runs.
        compiler = make_backend(options, sinks=[capture])
    elif backend == "aot":
        compiler = make_aot_backend(options, sinks=[capture])
    else:
        raise ValueError(f"backend={backend!r} is not valid; valid values: 'inductor', 'aot'")
    with ctx or contextlib.nullcontext():
        out = torch.compile(model, backend=compiler, fullgraph=fullgraph, dynamic=dynamic)(*inputs)
        if backward:
            out.float().sum().backward()
    return Compiled(out, capture, compiler.report)
