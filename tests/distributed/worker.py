"""One process of the distributed tests: trains a tiny tied-embedding LM a few steps per scenario.

Run by tests/distributed/test_data_parallel.py as ``python worker.py OUT.json SCENARIO...``: in each of two
ranks (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` in the environment; gloo on CPU) for the
data-parallel scenarios, and in one process (``WORLD_SIZE=1``) for the references. Every run sees the same
global batch; rank r takes rows ``[r*B/W, (r+1)*B/W)`` of it. Per scenario it writes the global loss of every
step (the mean of the ranks' losses), a digest of the full parameters after training, the rewrite decisions
of the report and the number of graphs compiled, or the error the scenario raised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
import warnings

import torch
import torch.distributed as dist
from torch import nn

from ufp4_compile.backend import make_aot_backend, make_backend
from ufp4_compile.numerics.formats import Rounding
from ufp4_compile.recipes import UFP4
from ufp4_compile.testing.models import TinyLM

STEPS, BATCH, TOKENS, VOCAB = 3, 4, 16, 64


def _nearest(gemm):
    return dataclasses.replace(gemm, a=dataclasses.replace(gemm.a, rounding=Rounding.NEAREST),
                               b=dataclasses.replace(gemm.b, rounding=Rounding.NEAREST))


# ufp4 with dY rounded to nearest: deterministic, so data parallelism must reproduce one process up to FP32
# summation order. The ufp4 recipe itself (stochastic dY) only up to the noise of its random draws.
UFP4_NEAREST = dataclasses.replace(UFP4, name="ufp4-nearest", dgrad=_nearest(UFP4.dgrad), wgrad=_nearest(UFP4.wgrad))


@dataclasses.dataclass(frozen=True)
class Scenario:
    parallel: str | None  # "ddp", "ddp_split" (DDPOptimizer graph splits), "fsdp2", None: one process
    style: str = "model"  # "model": torch.compile(model); "blocks": each block compiled on its own
    ac: bool = False  # non-reentrant activation checkpointing of every block (checkpoint_wrapper)
    backend: str = "aot"  # "aot": the pass with eager kernels; "inductor": the real backend
    recipe: object = UFP4_NEAREST
    options: tuple = ()  # extra ufp4 options, as (key, value) pairs
    same_data: bool = False  # every rank trains on the whole global batch, no gradient averaging
    steps: int = STEPS


KEEP_LAST = (("keep_last", 1),)
SCENARIOS = {
    # Two ranks. ddp_split: the real backend on graphs DDPOptimizer splits at bucket bounds, so the tied
    # head and the embedding land in different graphs and no graph sees every block.
    "ddp_split": Scenario("ddp_split", backend="inductor", options=KEEP_LAST),
    "ddp": Scenario("ddp"),
    "ddp_ac": Scenario("ddp", ac=True),
    "ddp_sr": Scenario("ddp", recipe=UFP4),
    "fsdp2_model": Scenario("fsdp2"),  # whole-model compile: FSDP2's hooks break the graph at every block
    "fsdp2_blocks_ac": Scenario("fsdp2", style="blocks", ac=True),  # torchtitan: AC, per-block compile, shard
    "fsdp2_model_keep_first": Scenario("fsdp2", options=(("keep_first", 1),), steps=1),
    "sr_ranks": Scenario(None, recipe=UFP4, same_data=True, steps=1),
    # One process, the same global batch.
    "one_model": Scenario(None),
    "one_model_keep_last": Scenario(None, options=KEEP_LAST),
    "one_model_ac": Scenario(None, ac=True),
    "one_blocks_ac": Scenario(None, style="blocks", ac=True),
    "one_model_sr": Scenario(None, recipe=UFP4),
}


def make_model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(vocab=VOCAB, d=32, layers=2, heads=2, hidden=64, tied=True)


def global_batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, TOKENS + 1), generator=torch.Generator().manual_seed(1234))


def _checkpoint_blocks(model: TinyLM) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def _digest(tensors) -> str:
    digest = hashlib.sha256()
    for name, tensor in tensors:
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        digest.update(name.encode() + full.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _wrap(model: nn.Module, scenario: Scenario, backend) -> nn.Module:
    if scenario.style == "blocks":
        for i, block in enumerate(model.layers):
            model.layers[i] = torch.compile(block, backend=backend)
    if scenario.parallel in ("ddp", "ddp_split"):
        # A small bucket cap (and first bucket, set in main) splits this tiny model into several graphs.
        model = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.02 if scenario.parallel == "ddp_split"
                                                    else 25)
    elif scenario.parallel == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
    return model


def run(name: str, rank: int, world: int) -> dict:
    scenario = SCENARIOS[name]
    torch._dynamo.reset()
    torch._dynamo.config.optimize_ddp = scenario.parallel == "ddp_split"
    model = make_model()
    if scenario.ac:
        _checkpoint_blocks(model)
    options = {"recipe": scenario.recipe, **dict(scenario.options)}
    backend = make_backend(options) if scenario.backend == "inductor" else make_aot_backend(options)
    model = _wrap(model, scenario, backend)
    step = torch.compile(model, backend=backend) if scenario.style == "model" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = global_batch() if scenario.same_data else global_batch().chunk(world)[rank]
    torch.manual_seed(100)  # the stochastic-rounding draws: alike on every rank (the seeds get a rank salt)
    losses, start = [], time.time()
    try:
        for _ in range(scenario.steps):
            optimizer.zero_grad()
            loss = step(data[:, :-1], data[:, 1:])
            loss.backward()
            grads = _digest(sorted((n, p.grad) for n, p in model.named_parameters()))
            optimizer.step()
            total = loss.detach().clone()
            if world > 1 and not scenario.same_data:
                dist.all_reduce(total)
                total /= world
            losses.append(total.item())
    except Exception as error:  # reported, not raised: the other scenarios still run
        return {"error": f"{type(error).__name__}: {error}"}
    return {"losses": losses, "digest": _digest(sorted(model.named_parameters())), "grads": grads,
            "graphs": backend.report.graphs, "seconds": time.time() - start,
            "rows": sorted({(r.module, r.role, r.action, r.reason or "") for r in backend.report.rows})}


def main(out: str, names: list[str]) -> None:
    warnings.filterwarnings("ignore")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        # DDP's first bucket is 1 MiB, more than this whole model: make it small enough to split.
        dist._DEFAULT_FIRST_BUCKET_BYTES = 8 * 1024
    try:
        results = {name: run(name, rank, world) for name in names}
    finally:
        if world > 1:
            dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
