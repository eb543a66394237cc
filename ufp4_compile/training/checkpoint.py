"""Checkpoints: model, optimizer, RNG states, step and the curve so far; resuming reproduces the curve.

The data position is the step number (batches are drawn from (data_seed, step) alone), so the step and
the RNG states (torch CPU and CUDA: stochastic-rounding seeds are drawn from them) are all a resumed run
needs besides the model and optimizer. Files load with ``weights_only=True``: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import pathlib

import torch

FORMAT_VERSION = 1


class ResumeError(ValueError):
    """A checkpoint or finished run in the output directory belongs to other arguments."""


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: pathlib.Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, identity: dict,
         progress: dict) -> None:
    """Write atomically (a temporary file, then rename) so an interrupted save leaves the old checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "identity": json.dumps(identity, sort_keys=True),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "progress": json.dumps(progress),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: pathlib.Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, identity: dict) -> dict:
    """Restore model, optimizer and RNG states from ``path``; return the saved progress.

    ResumeError (a ValueError) when the checkpoint belongs to a different run (names the fields that differ).
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ResumeError(f"{path}: checkpoint format {payload.get('format_version')!r}, expected {FORMAT_VERSION}")
    saved = json.loads(payload["identity"])
    wanted = json.loads(json.dumps(identity, sort_keys=True))
    if saved != wanted:
        differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise ResumeError(f"{path} was written by a different run (fields differ: {', '.join(differ)}); "
                         f"use a fresh --out directory or the original arguments")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    set_rng_state(payload["rng"])
    return json.loads(payload["progress"])
