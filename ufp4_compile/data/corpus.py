"""Training data: the embedded default corpus and ``--data PATH`` files, with deterministic batches.

Default corpus (no download): the ``*.py`` files of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``, without ``site-packages``/``dist-packages``, so installed packages
never leak in), sorted by relative path, read as bytes: byte-level tokens, vocabulary 256, each file
followed by a NUL byte as end-of-document. Every tenth file (sorted index ``i % 10 == 9``) goes to
validation, so validation follows the training distribution.

``--data PATH``: a ``.bin`` file is a flat array of uint8 or uint16 tokens, memory-mapped with
``np.memmap`` (never unpickled); any other file is text, read as bytes. Either is cut into interleaved
chunks (every tenth chunk to validation).

``--data python-sources``: every ``*.py`` file of the interpreter's standard library and installed packages,
deduplicated, shuffled and split by content hash, cached on first use (:mod:`ufp4_compile.data.python_sources`).
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import sysconfig
from dataclasses import dataclass, field

import numpy as np
import torch

from ufp4_compile.data import python_sources

VAL_EVERY = 10  # every tenth document (or chunk) goes to validation
CHUNK_TOKENS = 1 << 16  # chunk length for --data files
END_OF_DOCUMENT = 0  # NUL byte after each file of the default corpus
BIN_DTYPES = {"uint8": np.uint8, "uint16": np.uint16}
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class TokenStream:
    """Token segments (numpy arrays or memmaps); a training window never crosses a segment boundary."""

    segments: list[np.ndarray]

    @property
    def num_tokens(self) -> int:
        return int(sum(len(s) for s in self.segments))

    def _window_starts(self, seq_len: int) -> np.ndarray:
        counts = np.array([max(len(s) - seq_len, 0) for s in self.segments], dtype=np.int64)
        if counts.sum() == 0:
            raise ValueError(f"the data has no segment longer than seq_len + 1 = {seq_len + 1} tokens; "
                             f"use a larger data file or a smaller --seq-len")
        return np.concatenate(([0], np.cumsum(counts)))

    def windows(self, flat: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets (len(flat), seq_len) for window numbers ``flat``."""
        starts = self._window_starts(seq_len)
        seg_idx = np.searchsorted(starts, flat, side="right") - 1
        rows = [np.asarray(self.segments[s][o: o + seq_len + 1], dtype=np.int64)
                for s, o in zip(seg_idx, flat - starts[seg_idx])]
        block = torch.from_numpy(np.stack(rows))
        return block[:, :-1].contiguous(), block[:, 1:].contiguous()

    def num_windows(self, seq_len: int) -> int:
        return int(self._window_starts(seq_len)[-1])


@dataclass
class Corpus:
    train: TokenStream
    val: TokenStream
    vocab_size: int
    info: dict = field(default_factory=dict)


def train_batch(stream: TokenStream, batch_size: int, seq_len: int, data_seed: int,
                step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of ``step``: uniform random windows drawn from (data_seed, step) alone.

    No sampler state: the data position is the step number, so a resumed run sees the same batches.
    """
    generator = torch.Generator().manual_seed((data_seed * 1_000_003 + step) % (1 << 63))
    flat = torch.randint(stream.num_windows(seq_len), (batch_size,), generator=generator).numpy()
    return stream.windows(flat, seq_len)


def val_batches(stream: TokenStream, num_batches: int, batch_size: int,
                seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation set: ``num_batches * batch_size`` windows evenly spaced over the stream."""
    count = num_batches * batch_size
    flat = np.linspace(0, stream.num_windows(seq_len) - 1, count).astype(np.int64)
    x, y = stream.windows(flat, seq_len)
    return list(zip(x.split(batch_size), y.split(batch_size)))


def stdlib_files(root: str | pathlib.Path | None = None) -> list[pathlib.Path]:
    """The standard library's ``*.py`` files, sorted by relative POSIX path; site/dist-packages excluded."""
    root = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if p.is_file() and not _EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_documents(docs: list[bytes], val_every: int = VAL_EVERY) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents (each followed by END_OF_DOCUMENT); index i % val_every == val_every-1 -> val."""
    train, val = [], []
    for i, doc in enumerate(docs):
        (val if i % val_every == val_every - 1 else train).append(doc + bytes([END_OF_DOCUMENT]))
    return np.frombuffer(b"".join(train), dtype=np.uint8), np.frombuffer(b"".join(val), dtype=np.uint8)


@functools.lru_cache(maxsize=2)
def default_corpus(root: str | None = None) -> Corpus:
    """The embedded default corpus (cached per process): byte-level standard-library source."""
    files = stdlib_files(root)
    if len(files) < VAL_EVERY:
        raise ValueError(f"only {len(files)} *.py files under {root or sysconfig.get_paths()['stdlib']}; "
                         f"the default corpus needs at least {VAL_EVERY}; pass --data PATH")
    docs = [p.read_bytes() for p in files]
    train, val = split_documents(docs)
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc)
    info = {"source": "stdlib", "root": str(root or sysconfig.get_paths()["stdlib"]), "documents": len(docs),
            "train_tokens": len(train), "val_tokens": len(val), "sha256": digest.hexdigest(),
            "tokenizer": "bytes"}
    return Corpus(TokenStream([train]), TokenStream([val]), 256, info)


def interleaved_chunks(tokens: np.ndarray, chunk: int | None = None,
                       val_every: int = VAL_EVERY) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cut into chunks of CHUNK_TOKENS (at least ``val_every`` chunks); chunk i % val_every == val_every-1
    goes to validation."""
    chunk = max(1, min(chunk or CHUNK_TOKENS, len(tokens) // val_every))
    pieces = [tokens[i: i + chunk] for i in range(0, len(tokens), chunk)]
    train = [p for i, p in enumerate(pieces) if i % val_every != val_every - 1]
    val = [p for i, p in enumerate(pieces) if i % val_every == val_every - 1]
    return train, val


def _sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_corpus(path: str | None = None, bin_dtype: str = "uint16") -> Corpus:
    """``None``: the default corpus. ``"python-sources"``: every installed Python source file (built and
    cached on first use). A ``.bin`` file: tokens of ``bin_dtype``. Anything else: text bytes."""
    if path is None:
        return default_corpus()
    if path == python_sources.NAME:
        train, val, info = python_sources.load(VAL_EVERY, END_OF_DOCUMENT)
        return Corpus(TokenStream([train]), TokenStream([val]), 256, info)
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"--data {path!r}: no such file (pass a text file or a uint8/uint16 token .bin)")
    if file.suffix == ".bin":
        if bin_dtype not in BIN_DTYPES:
            raise ValueError(f"bin_dtype={bin_dtype!r} is not valid; valid values: {', '.join(BIN_DTYPES)}")
        dtype = np.dtype(BIN_DTYPES[bin_dtype])
        size = file.stat().st_size
        if size == 0 or size % dtype.itemsize:
            raise ValueError(f"--data {path!r}: {size} bytes is not a whole number of {bin_dtype} tokens")
        tokens = np.memmap(file, dtype=dtype, mode="r")
        vocab = int(tokens.max()) + 1
        tokenizer = f"{bin_dtype} tokens"
    else:
        tokens = np.frombuffer(file.read_bytes(), dtype=np.uint8)
        vocab, tokenizer = 256, "bytes"
    if len(tokens) < VAL_EVERY:
        raise ValueError(f"--data {path!r} holds {len(tokens)} tokens; at least {VAL_EVERY} are needed")
    train, val = interleaved_chunks(tokens)
    info = {"source": str(file), "documents": len(train) + len(val), "train_tokens": sum(map(len, train)),
            "val_tokens": sum(map(len, val)), "sha256": _sha256_file(file), "tokenizer": tokenizer}
    return Corpus(TokenStream(train), TokenStream(val), vocab, info)
