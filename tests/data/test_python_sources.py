"""``--data python-sources`` on a fake package tree: dedup, shuffle, content-hash split, cache, selection."""

import hashlib
import shutil

import numpy as np
import pytest

from ufp4_compile.data import corpus, python_sources
from ufp4_compile.data.corpus import END_OF_DOCUMENT, VAL_EVERY, load_corpus


def _tree(root, docs=60):
    """``docs`` distinct modules over a stdlib-like folder and two packages, plus files that must not count:
    a copy of one module vendored by another package, bytecode caches and non-Python files."""
    for i in range(docs):
        folder = root / ("lib" if i % 3 == 0 else f"site-packages/pkg{i % 2}/sub{i % 4}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"m{i:03d}.py").write_bytes(f"# module {i}\n".encode() + b"x = 1\n" * (i % 7))
    vendored = root / "site-packages/vendor/m000_copy.py"
    vendored.parent.mkdir(parents=True)
    vendored.write_bytes((root / "lib/m000.py").read_bytes())
    for ignored in ("lib/__pycache__/m000.py", "lib/notes.txt", "site-packages/pkg0/data.pyc"):
        (root / ignored).parent.mkdir(parents=True, exist_ok=True)
        (root / ignored).write_text("ignored")
    return root


def _documents(stream: np.ndarray) -> list[bytes]:
    raw = bytes(stream)
    assert raw.endswith(bytes([END_OF_DOCUMENT]))
    return raw[:-1].split(bytes([END_OF_DOCUMENT]))


def _load(root, cache):
    return python_sources.load(VAL_EVERY, END_OF_DOCUMENT, roots=[root], cache_dir=cache)


def test_deduplicated_and_split_by_content_hash(tmp_path):
    root = _tree(tmp_path / "py")
    train, val, info = _load(root, tmp_path / "cache")
    assert isinstance(train, np.memmap) and train.dtype == np.uint8
    expected = {p.read_bytes() for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    assert len(expected) == 60 and info["files"] == 61 and info["duplicates"] == 1 and info["documents"] == 60
    train_docs, val_docs = _documents(train), _documents(val)
    assert set(train_docs) | set(val_docs) == expected and len(train_docs) + len(val_docs) == 60
    for doc in val_docs:
        assert python_sources.held_out(hashlib.sha256(doc).digest(), VAL_EVERY)
    for doc in train_docs:
        assert not python_sources.held_out(hashlib.sha256(doc).digest(), VAL_EVERY)
    assert info["train_tokens"] == len(train) and info["val_tokens"] == len(val)
    assert info["val_documents"] == len(val_docs) >= 1


def test_same_bytes_wherever_the_tree_lives(tmp_path):
    """Order and split come from the content alone: a moved tree gives the same streams and hash."""
    a = _tree(tmp_path / "one")
    train_a, val_a, info_a = _load(a, tmp_path / "cache_a")
    b = shutil.copytree(a, tmp_path / "elsewhere" / "two")
    train_b, val_b, info_b = _load(b, tmp_path / "cache_b")
    assert np.array_equal(train_a, train_b) and np.array_equal(val_a, val_b)
    assert info_a["sha256"] == info_b["sha256"]
    sorted_docs = sorted(_documents(train_a), key=lambda d: hashlib.sha256(d).digest())
    assert _documents(train_a) != sorted_docs  # shuffled, not left in hash order


def test_second_load_reads_the_cache_and_a_new_package_rebuilds(tmp_path, monkeypatch):
    root = _tree(tmp_path / "py")
    cache = tmp_path / "cache"
    first = _load(root, cache)[2]

    def no_scan(*_):
        raise AssertionError("scanned again")

    with monkeypatch.context() as m:
        m.setattr(python_sources, "_scan", no_scan)
        again = _load(root, cache)[2]
    assert again["sha256"] == first["sha256"] and again["cache_key"] == first["cache_key"]
    (root / "newpkg").mkdir()  # installing a package adds a top-level entry: the key changes
    (root / "newpkg" / "fresh.py").write_bytes(b"y = 2\n")
    rebuilt = _load(root, cache)[2]
    assert rebuilt["cache_key"] != first["cache_key"] and rebuilt["documents"] == 61


def test_too_few_documents_is_a_clear_error(tmp_path):
    (tmp_path / "py").mkdir()
    (tmp_path / "py" / "only.py").write_bytes(b"z = 3\n")
    with pytest.raises(ValueError, match="leave no training or no validation document; pass --data PATH"):
        _load(tmp_path / "py", tmp_path / "cache")


def test_selected_by_name_and_default_of_the_evidence_preset(tmp_path, monkeypatch):
    from ufp4_compile.cli import train
    from ufp4_compile.cli.main import build_parser

    root = _tree(tmp_path / "py")
    monkeypatch.setattr(python_sources, "source_roots", lambda: [root])
    monkeypatch.setenv("UFP4_CACHE_DIR", str(tmp_path / "cache"))
    c = load_corpus("python-sources")
    assert c.vocab_size == 256 and c.info["source"] == "python-sources" and c.info["documents"] == 60
    assert c.train.num_tokens == c.info["train_tokens"]
    x, y = corpus.train_batch(c.train, 2, 8, data_seed=0, step=0)
    assert x.shape == (2, 8)
    argv = ["train", "--preset", "evidence", "--device", "cpu", "--out", str(tmp_path / "out")]
    experiment = train.build_experiment(build_parser(argv).parse_args(argv))
    assert experiment.corpus.info["sha256"] == c.info["sha256"]
    assert (experiment.train.steps, experiment.train.batch_size, experiment.model_config.n_layers) == (3200, 32, 12)
