"""Argument types and output-path checks shared by the ``ufp4`` subcommands.

Each check runs before any work: a bad value is an argparse-style error (exit status 2) that names the
flag and what it accepts, never a traceback after minutes of training or compiling.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib


def int_at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum``; the error names the valid range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not valid; it must be an integer >= {minimum}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not valid; it must be a finite number > 0")
    return value


def _writable_ancestor(path: pathlib.Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a directory this process can create files in."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create files in {parent} (permission denied or read-only)")


def check_output_dir(path: pathlib.Path, flag: str) -> None:
    """ValueError unless ``path`` is, or can be created as, a writable directory (nothing is created)."""
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {path}: exists and is not a directory; give a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: cannot write in it (permission denied or read-only)")
        return
    _writable_ancestor(path, flag)


def check_output_file(path: pathlib.Path, flag: str) -> None:
    """ValueError unless ``path`` can be written as a file: not a directory, its directory exists and is
    writable (so a typo in a directory name fails now, not after the work)."""
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a directory; give a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ValueError(f"{flag} {path}: cannot overwrite it (permission denied or read-only)")
        return
    parent = path.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create files in {parent} (permission denied or read-only)")


def plot_suffixes() -> tuple[str, ...]:
    """The file extensions matplotlib can save a figure as (``.png``, ``.pdf``, ``.svg``...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(f".{name}" for name in FigureCanvasBase.get_supported_filetypes())


def output_file(flag: str, suffixes=None):
    """An argparse ``type``: a writable file path (``check_output_file``); with ``suffixes`` (a function
    returning the valid extensions, asked only when the flag is given) its extension must be one of them."""
    def parse(text: str) -> pathlib.Path:
        path = pathlib.Path(text)
        valid = suffixes() if suffixes is not None else None
        if valid is not None and path.suffix.lower() not in valid:
            raise argparse.ArgumentTypeError(f"{text}: unknown extension {path.suffix!r}; valid values: "
                                             f"{', '.join(valid)}")
        try:
            check_output_file(path, flag)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag} ")) from None
        return path

    parse.__name__ = "output file"
    return parse
