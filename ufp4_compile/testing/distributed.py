"""Starting a command as the ranks of a process group on one machine, with the environment torchrun gives
each process (for tests: gloo on the CPU, no launcher needed)."""

from __future__ import annotations

import os
import socket
import subprocess


def free_port() -> int:
    """A TCP port that is free on this machine now (for ``MASTER_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int, base: dict | None = None, **extra: str) -> dict:
    """``base`` (default: this process's environment) plus what torchrun sets for ``rank`` of ``world_size``
    processes on one node."""
    env = dict(os.environ if base is None else base)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **extra)
    return env


def wait_all(procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, subprocess.CompletedProcess]:
    """Wait for every process in turn and collect its output; when one does not finish within ``timeout``
    seconds of its turn, kill them all and raise TimeoutError naming it. (Output that a process has not
    been read from yet waits in its pipe: fine for the few lines a test's processes print.)"""
    done = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs.values():
                other.kill()
            raise TimeoutError(f"{name} did not finish in {timeout} s") from None
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return done
