"""Inductor's generated wrapper code for a graph on CUDA, without a GPU (tests of the lowerings on CPU).

The graph is traced with fake CUDA tensors and lowered by ``GraphLowering``; the few places where Inductor
asks the device (its properties, Triton's active driver, ``has_triton``) answer as an sm_90 GPU would. No
kernel is compiled or run: this checks what the lowering emits (which kernels, which buffers, in which
order), the part of the Hopper path a CPU can check. The kernels' bits are tested under the interpreter and
on the GPU.
"""

from __future__ import annotations

import contextlib
import types
from unittest import mock

import torch

_PROPS = dict(type="cuda", index=0, multi_processor_count=132, cc=90, major=9, regs_per_multiprocessor=65536,
              max_threads_per_multi_processor=2048, max_threads_per_block=1024, warp_size=32)


class _Driver:
    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, *args):
        return 0


@contextlib.contextmanager
def _as_sm90():
    from torch._inductor.runtime.hints import DeviceProperties

    props = types.SimpleNamespace(minor=0, name="sm_90 (fake)", total_memory=80 << 30, L2_cache_size=50 << 20,
                                  shared_memory_per_block_optin=232448, **_PROPS)
    with contextlib.ExitStack() as stack:
        for target, value in (("torch.cuda.get_device_properties", lambda *a, **k: props),
                              ("torch.cuda.is_available", lambda: True),
                              ("torch.cuda.current_device", lambda: 0),
                              ("torch.utils._triton.has_triton", lambda: True)):
            stack.enter_context(mock.patch(target, value))
        # the scheduler's own name for it, where it imported it (asks the device interface otherwise)
        stack.enter_context(mock.patch("torch._inductor.scheduler.has_triton", lambda: True, create=True))
        stack.enter_context(mock.patch("triton.runtime.driver.DriverConfig.active", property(lambda self: _Driver())))
        stack.enter_context(mock.patch.object(DeviceProperties, "create",
                                              classmethod(lambda cls, device: cls(**_PROPS))))
        yield


def wrapper_code(fn, *shapes_dtypes, decompose: bool = False, user_visible: list[int] | None = None) -> str:
    """The Python wrapper Inductor generates for ``fn`` on CUDA tensors of ``(shape, dtype)``; ``decompose``:
    traced with Inductor's decompositions (for ops, such as ``silu``, that Inductor only decomposes);
    ``user_visible``: the indices of ``fn``'s outputs that reach the user, as Inductor marks a training
    forward's (the rest are saved for the backward); unmarked, as here by default, every output is."""
    from torch._inductor.debug import DebugContext
    from torch._inductor.graph import GraphLowering
    from torch._inductor.virtualized import V
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    mode = FakeTensorMode()
    with mode:
        inputs = [torch.empty(shape, dtype=dtype, device="cuda") for shape, dtype in shapes_dtypes]
        if decompose:
            from torch._inductor.decomposition import select_decomp_table

            gm = make_fx(fn, decomposition_table=select_decomp_table())(*inputs)
        else:
            gm = make_fx(fn)(*inputs)
    if user_visible is not None:  # with the outputs' strides, which Inductor keeps for the user-visible ones
        output = next(n for n in gm.graph.nodes if n.op == "output")
        output.meta["user_visible_output_idxs"] = list(user_visible)
        output.meta["original_output_strides"] = [
            tuple(o.meta["val"].stride()) if isinstance(o, torch.fx.Node) else None for o in output.args[0]]

    def fake_constant(value, device):  # a graph constant the lowering makes: fake, as there is no GPU
        with mode:
            return torch.full((), value, dtype=torch.float32, device=device)

    with (_as_sm90(), V.set_debug_handler(DebugContext()), V.set_fake_mode(mode),
          mock.patch("ufp4_compile.lowering.kernel_calls.device_constant", fake_constant)):
        graph = GraphLowering(gm, example_inputs=inputs)
        with V.set_graph_handler(graph):
            graph.run(*inputs)
            code = graph.codegen()[0]
    return str(getattr(code, "value", code))


def json_from_script(path) -> object:
    """Run the Python file ``path`` as a script without Triton's interpreter (the lowerings need compiled-kernel
    objects; the CPU test suite runs kernels in the interpreter) and parse the JSON its last stdout line holds:
    how tests generate CUDA wrappers on CPU in one subprocess."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"{path} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])
