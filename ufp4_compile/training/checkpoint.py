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
    """A checkpoint or finished run in the output directory belongs to other arguments, or a checkpoint
    cannot be read."""


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


def differing_fields(saved: dict, wanted: dict) -> list[str]:
    """The identity fields whose values differ between a stored run and the one that wants to reuse it."""
    return sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _unreadable(path: pathlib.Path, why: str) -> ResumeError:
    return ResumeError(f"{path} is not a readable checkpoint ({why}); it is truncated or not a checkpoint of "
                       f"ufp4 train. Delete it to train this run from step 0, or put the original file back")


def read(path: pathlib.Path, identity: dict) -> dict:
    """The checkpoint payload at ``path``, checked: ResumeError naming the file when it cannot be read (a
    truncated or foreign file; nothing is unpickled) or belongs to a different run (naming the fields)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (zip, EOF and unpickling errors all mean the same here)
        raise _unreadable(path, _reason(exc)) from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        version = payload.get("format_version") if isinstance(payload, dict) else None
        raise _unreadable(path, f"format {version!r}, expected {FORMAT_VERSION}")
    try:
        saved, progress = json.loads(payload["identity"]), json.loads(payload["progress"])
        if not all(isinstance(payload[key], dict) for key in ("model", "optimizer", "rng")):
            raise TypeError("model, optimizer and rng must be dicts")
        if not (isinstance(saved, dict) and isinstance(progress, dict) and isinstance(progress.get("step"), int)
                and len(progress.get("losses", ())) == progress["step"]):
            raise ValueError("its identity or progress record is damaged")
    except (KeyError, TypeError, ValueError) as exc:
        raise _unreadable(path, _reason(exc)) from None
    wanted = json.loads(json.dumps(identity, sort_keys=True))
    if saved != wanted:
        raise ResumeError(f"{path} was written by a different run (fields differ: "
                          f"{', '.join(differing_fields(saved, wanted))}); use a fresh --out directory or the "
                          f"original arguments")
    payload["progress"] = progress
    return payload


def load(path: pathlib.Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, identity: dict) -> dict:
    """Restore model, optimizer and RNG states from ``path``; return the saved progress.

    ResumeError (a ValueError) naming the file when it cannot be read or belongs to a different run.
    """
    payload = read(path, identity)
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise _unreadable(path, _reason(exc)) from None
    return payload["progress"]
