"""``--data python-sources``: every Python source file of the running interpreter, as one byte corpus.

No download. The ``*.py`` files under the standard library and every installed-package directory of the
running interpreter (``sysconfig``'s stdlib, platstdlib, purelib and platlib paths, ``site``'s global and
user site-packages; ``__pycache__`` skipped, linked directories not entered), read as bytes:

- **deduplicated** by content (SHA-256): a file vendored by two packages, or reached through two roots,
  counts once;
- **shuffled**: ordered by content hash, then permuted with a fixed seed, so neighbouring documents come
  from unrelated packages; each document is followed by the end-of-document byte;
- **split by content hash**: a document is held out when the first 8 bytes of its SHA-256, as a
  little-endian integer, are ``val_every - 1`` modulo ``val_every``. The side of a file depends on its bytes
  alone, never on where it is installed or what else is, so the split is the same on every machine.

How many bytes there are depends on the Python version and on the installed packages (torch alone brings
tens of megabytes); the count is in the corpus info and in every ``results.json``.

The corpus is built once and cached as two flat uint8 files (read back with ``np.memmap``, so memory stays
bounded whatever its size) plus a JSON record, under :func:`default_cache_dir`. The cache key is the
interpreter version, the roots, the split and the modification times of each root's top-level entries:
installing, upgrading or removing a package changes it (pip replaces the package's directory), so the
corpus is rebuilt; a file edited in place is not noticed. A second run reads the cache without scanning.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import site
import sys
import sysconfig

import numpy as np

NAME = "python-sources"
SHUFFLE_SEED = 0
FORMAT = 1  # bump when the build changes what a cache holds


def default_cache_dir() -> pathlib.Path:
    """``$UFP4_CACHE_DIR``, else ``$XDG_CACHE_HOME/ufp4_compile``, else ``~/.cache/ufp4_compile``."""
    if os.environ.get("UFP4_CACHE_DIR"):
        return pathlib.Path(os.environ["UFP4_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "ufp4_compile"


def source_roots() -> list[pathlib.Path]:
    """The standard library and installed-package directories of this interpreter that exist (resolved)."""
    paths = sysconfig.get_paths()
    candidates = [paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    try:
        candidates += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some virtualenv versions ship a site module without these
        pass
    roots = {pathlib.Path(c).resolve() for c in candidates if c and os.path.isdir(c)}
    return sorted(roots)


def python_files(roots: list[pathlib.Path]):
    """Every regular ``*.py`` file under ``roots`` (resolved paths, each once), in a deterministic order."""
    seen = set()
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.realpath(os.path.join(folder, name))
                if path not in seen and os.path.isfile(path):
                    seen.add(path)
                    yield path


def cache_key(roots: list[pathlib.Path], val_every: int, end_of_document: int) -> str:
    """Interpreter version, roots, split and the modification times of each root's top-level entries."""
    digest = hashlib.sha256(json.dumps([FORMAT, sys.version, SHUFFLE_SEED, val_every, end_of_document]).encode())
    for root in roots:
        digest.update(str(root).encode())
        with os.scandir(root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                try:
                    digest.update(f"{entry.name}:{entry.stat(follow_symlinks=False).st_mtime_ns}".encode())
                except OSError:
                    digest.update(entry.name.encode())
    return digest.hexdigest()[:16]


def held_out(content_sha: bytes, val_every: int) -> bool:
    return int.from_bytes(content_sha[:8], "little") % val_every == val_every - 1


def _scan(roots: list[pathlib.Path]) -> tuple[dict[bytes, str], int, int]:
    """{content SHA-256: first path with it}, the number of files read and of duplicates dropped."""
    docs, files, duplicates = {}, 0, 0
    for path in python_files(roots):
        try:
            with open(path, "rb") as f:
                sha = hashlib.sha256(f.read()).digest()
        except OSError:
            continue
        files += 1
        if sha in docs:
            duplicates += 1
        else:
            docs[sha] = path
    return docs, files, duplicates


def build(roots: list[pathlib.Path], out: pathlib.Path, key: str, val_every: int, end_of_document: int) -> dict:
    """Scan ``roots`` and write ``<key>.train.u8``, ``<key>.val.u8`` and ``<key>.json`` under ``out``."""
    print(f"building the {NAME} corpus from {', '.join(map(str, roots))} (cached under {out})", file=sys.stderr)
    docs, files, duplicates = _scan(roots)
    order = sorted(docs)
    order = [order[i] for i in np.random.default_rng(SHUFFLE_SEED).permutation(len(order))]
    out.mkdir(parents=True, exist_ok=True)
    paths = {side: out / f"{key}.{side}.u8" for side in ("train", "val")}
    tmp = {side: p.with_name(f"{p.name}.{os.getpid()}.tmp") for side, p in paths.items()}  # concurrent builds
    counts = {"train": [0, 0], "val": [0, 0]}  # documents, bytes
    digest, skipped = hashlib.sha256(), 0
    with open(tmp["train"], "wb") as train, open(tmp["val"], "wb") as val:
        for sha in order:
            try:
                data = pathlib.Path(docs[sha]).read_bytes()
            except OSError:
                data = None
            if data is None or hashlib.sha256(data).digest() != sha:  # gone or changed since the scan
                skipped += 1
                continue
            side = "val" if held_out(sha, val_every) else "train"
            (val if side == "val" else train).write(data + bytes([end_of_document]))
            counts[side][0] += 1
            counts[side][1] += len(data) + 1
            digest.update(side.encode() + sha)
    for side in paths:
        os.replace(tmp[side], paths[side])
    info = {"source": NAME, "roots": [str(r) for r in roots], "files": files, "duplicates": duplicates,
            "skipped": skipped, "documents": counts["train"][0] + counts["val"][0],
            "train_documents": counts["train"][0], "val_documents": counts["val"][0],
            "train_tokens": counts["train"][1], "val_tokens": counts["val"][1], "sha256": digest.hexdigest(),
            "tokenizer": "bytes", "cache_key": key, "python": sys.version.split()[0]}
    record = out / f"{key}.json"
    staged = record.with_name(f"{record.name}.{os.getpid()}.tmp")
    staged.write_text(json.dumps(info, indent=1))
    os.replace(staged, record)  # written last: its presence marks a complete cache
    return info


def load(val_every: int, end_of_document: int, roots: list[pathlib.Path] | None = None,
         cache_dir: pathlib.Path | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train bytes, validation bytes, info) as read-only uint8 memmaps, built on the first call."""
    roots = source_roots() if roots is None else [pathlib.Path(r).resolve() for r in roots]
    out = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(roots, val_every, end_of_document)
    record = out / f"{key}.json"
    info = json.loads(record.read_text()) if record.is_file() else None
    if info is None or not all((out / f"{key}.{s}.u8").is_file() for s in ("train", "val")):
        info = build(roots, out, key, val_every, end_of_document)
    if info["train_documents"] == 0 or info["val_documents"] == 0:
        raise ValueError(f"--data {NAME}: {info['documents']} distinct *.py files under "
                         f"{', '.join(info['roots']) or '(no roots)'} leave no training or no validation document; "
                         f"pass --data PATH")
    info = {**info, "cache": str(out)}
    train = np.memmap(out / f"{key}.train.u8", dtype=np.uint8, mode="r")
    val = np.memmap(out / f"{key}.val.u8", dtype=np.uint8, mode="r")
    return train, val, info
