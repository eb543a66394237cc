"""Data parallelism for ``ufp4 train``: DDP or FSDP2 over the processes torchrun starts.

- ``launch_from_env`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without it a
  data-parallel run is one process with a store of its own (world size 1).
- ``process_group`` initializes the group (NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on the CPU)
  and destroys it at the end.
- ``shard`` and ``prepare`` wrap the model: DDP around the whole model, compiled as in one process; FSDP2
  torchtitan's way, each block compiled on its own, then ``fully_shard`` on every block and on the root.
- ``Ranks`` is what a run needs of the group: its rows of the global batch, the mean of a figure over the
  ranks, gathering a value from every rank, and whether the ranks' parameters are identical.

``--batch-size`` stays the global batch: rank r trains rows [r·B/W, (r+1)·B/W) of the batch that one process
draws at that step, so a data-parallel run sees the same data as a one-process run (docs/train.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ufp4_compile.recipes import Recipe
from ufp4_compile.training import compile as compile_step

MODES = ("none", "ddp", "fsdp2")


@dataclass(frozen=True)
class Launch:
    """Where this process sits, read from torchrun's environment before any group exists."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    from_env: bool = False  # False: no WORLD_SIZE in the environment (not started by torchrun)


def _env_int(env, name: str, minimum: int, default: int | None = None) -> int:
    text = env.get(name)
    if text is None:
        if default is not None:
            return default
        raise ValueError(f"{name} is not set; start data-parallel runs with torchrun, which sets RANK, "
                         f"WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} is not valid; it must be an integer >= {minimum}")
    return value


def launch_from_env(mode: str, env=None) -> Launch:
    """This process's place for ``--parallel mode``; ValueError naming the variable or flag that is wrong.

    Without ``WORLD_SIZE`` the process is alone (world size 1, with ``--parallel ddp``/``fsdp2`` too).
    ``--parallel none`` under ``WORLD_SIZE`` > 1 would train the same model W times, each on the whole
    batch, with no gradient exchange, so it is refused.
    """
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ValueError(f"--parallel={mode!r} is not valid; valid values: {', '.join(MODES)}")
    if "WORLD_SIZE" not in env:
        return Launch()
    world = _env_int(env, "WORLD_SIZE", 1)
    if mode == "none" and world > 1:
        raise ValueError(f"--parallel=none under WORLD_SIZE={world} would train {world} independent copies; "
                         f"use --parallel ddp or fsdp2")
    rank = _env_int(env, "RANK", 0)
    if rank >= world:
        raise ValueError(f"RANK={rank} is not valid; it must be below WORLD_SIZE={world}")
    if mode != "none":
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(name):
                raise ValueError(f"{name} is not set; start data-parallel runs with torchrun")
    return Launch(rank, world, _env_int(env, "LOCAL_RANK", 0, default=rank), from_env=True)


def check_arguments(mode: str, launch: Launch, batch_size: int, unsupported: dict[str, object]) -> None:
    """ValueError naming the flag: a global batch the ranks cannot split evenly, or a flag (given as
    ``{"--flag": value}``) that data-parallel runs do not support (any value other than 0/False)."""
    if mode == "none":
        return
    if batch_size % launch.world_size:
        raise ValueError(f"--batch-size={batch_size} is not valid with {launch.world_size} ranks; the global "
                         f"batch must be a multiple of WORLD_SIZE={launch.world_size}")
    for flag, value in unsupported.items():
        if value:
            given = flag if value is True else f"{flag}={value}"
            raise ValueError(f"{given} is not supported with --parallel {mode}; leave it out (docs/train.md, "
                             f"\"Data parallel\")")


def device_for(mode: str, device: str, launch: Launch) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``cuda`` (a ``--device cuda:N`` is refused: torchrun
    decides which GPU a rank uses), the CPU for ``cpu``."""
    if mode == "none" or device == "cpu":
        return device
    if device != "cuda":
        raise ValueError(f"--device={device!r} is not valid with --parallel {mode}: each rank uses "
                         f"cuda:LOCAL_RANK; give --device cuda, auto or cpu")
    if launch.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={launch.local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                         f"visible; start at most that many processes per node")
    return f"cuda:{launch.local_rank}"


@contextlib.contextmanager
def process_group(mode: str, device: str, launch: Launch):
    """The process group of a data-parallel run, destroyed on the way out (nothing for ``none``)."""
    if mode == "none":
        yield
        return
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    if launch.from_env:
        dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size)
    else:  # one process without torchrun: a store of its own, no address or port needed
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(model: nn.Module, recipe: Recipe, mode: str, backend: str) -> nn.Module:
    """FSDP2 (torchtitan's order): each block compiled on its own, then ``fully_shard`` on every block and
    on the root, which stays uncompiled (embedding and head run in their original precision). Under the
    eager backend a quantized recipe is emulated on the whole model, as in one process. Other modes: the
    model unchanged. Call before building the optimizer: the parameters become sharded DTensors."""
    if mode != "fsdp2":
        return model
    from torch.distributed.fsdp import fully_shard

    if backend == "eager":
        compile_step.prepare(model, recipe, backend)  # the emulation swaps the Linear classes in place
    else:
        for i, block in enumerate(model.layers):
            model.layers[i] = compile_step.prepare(block, recipe, backend)
    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def prepare(model: nn.Module, recipe: Recipe, backend: str, mode: str, device: torch.device) -> nn.Module:
    """The callable that trains ``model`` (already through ``shard``) under ``recipe`` and the backend:
    one process and DDP compile the whole model (DDP's module: DDPOptimizer splits the graph at the
    gradient buckets); FSDP2's blocks are compiled already."""
    if mode == "fsdp2":
        return model
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        if backend == "eager":  # emulate the model itself: its layer names, not DDP's module.*
            return nn.parallel.DistributedDataParallel(compile_step.prepare(model, recipe, backend), device_ids=ids)
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return compile_step.prepare(model, recipe, backend)


@dataclass(frozen=True)
class Ranks:
    """The ranks of a run: one process (``none``) or the initialized process group."""

    mode: str = "none"
    rank: int = 0
    world_size: int = 1

    @classmethod
    def of(cls, mode: str) -> Ranks:
        if mode not in MODES:
            raise ValueError(f"parallel={mode!r} is not valid; valid values: {', '.join(MODES)}")
        if mode == "none":
            return cls()
        if not dist.is_initialized():
            raise RuntimeError(f"parallel={mode!r} needs an initialized process group; run inside "
                               f"ufp4_compile.training.parallel.process_group(...)")
        return cls(mode, dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows [r·B/W, (r+1)·B/W) of a global batch of B rows."""
        if self.world_size == 1:
            return batch
        size = batch.shape[0]
        if size % self.world_size:
            raise ValueError(f"batch_size={size} is not valid with {self.world_size} ranks; it must be a "
                             f"multiple of the world size")
        share = size // self.world_size
        return batch[self.rank * share:(self.rank + 1) * share]

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of ``tensor`` (each rank's figure over its equal share of the rows)."""
        if self.world_size == 1:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)  # a sum: gloo has no average
        return total / self.world_size

    def gather(self, value) -> list:
        """``value`` of every rank, in rank order (a picklable object)."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def identical(self, model: nn.Module) -> bool:
        """True iff every rank holds the same full parameters (a digest per rank, compared on all)."""
        if self.world_size == 1:
            return True
        return len(set(self.gather(parameters_digest(model)))) == 1


def parameters_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's name and bytes, sharded ones gathered whole first (a collective:
    the names are sorted so that every rank gathers in the same order)."""
    from torch.distributed.tensor import DTensor

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        full = param.full_tensor() if isinstance(param, DTensor) else param
        digest.update(name.encode())
        digest.update(full.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
