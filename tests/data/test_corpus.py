import numpy as np
import pytest
import torch

from ufp4_compile.data import corpus
from ufp4_compile.data.corpus import TokenStream, default_corpus, load_corpus, stdlib_files, train_batch, val_batches


@pytest.fixture
def fake_stdlib(tmp_path):
    """20 modules 'm00'..'m19' in nested folders, plus files that must be ignored."""
    root = tmp_path / "lib"
    for i in range(20):
        folder = root / ("pkg" if i % 3 else "") / ("sub" if i % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"m{i:02d}.py").write_bytes(f"# module {i:02d}\n".encode() * (i + 1))
    for ignored in ("site-packages/third.py", "dist-packages/other.py", "__pycache__/m.py", "notes.txt"):
        (root / ignored).parent.mkdir(parents=True, exist_ok=True)
        (root / ignored).write_text("ignored")
    return root


def test_stdlib_files_sorted_and_filtered(fake_stdlib):
    files = stdlib_files(fake_stdlib)
    rel = [p.relative_to(fake_stdlib).as_posix() for p in files]
    assert len(rel) == 20
    assert rel == sorted(rel)
    assert not any(part in r for r in rel for part in ("site-packages", "dist-packages", "__pycache__"))


def test_split_every_tenth_document_to_validation(fake_stdlib):
    c = default_corpus.__wrapped__(str(fake_stdlib))
    files = stdlib_files(fake_stdlib)
    expected_val = b"".join(files[i].read_bytes() + b"\0" for i in (9, 19))
    expected_train = b"".join(files[i].read_bytes() + b"\0" for i in range(20) if i not in (9, 19))
    assert c.val.segments[0].tobytes() == expected_val
    assert c.train.segments[0].tobytes() == expected_train
    assert c.vocab_size == 256 and c.info["documents"] == 20


def test_real_stdlib_corpus_is_deterministic():
    a = default_corpus.__wrapped__(None)
    b = default_corpus.__wrapped__(None)
    assert a.info == b.info
    assert np.array_equal(a.train.segments[0], b.train.segments[0])
    assert a.info["documents"] >= 100 and a.info["val_tokens"] > 100_000
    assert 0.05 < a.info["val_tokens"] / (a.info["train_tokens"] + a.info["val_tokens"]) < 0.2


def test_train_batches_depend_on_data_seed_and_step_only():
    stream = TokenStream([np.arange(5000, dtype=np.uint16)])
    x, y = train_batch(stream, 4, 16, data_seed=3, step=7)
    x2, y2 = train_batch(stream, 4, 16, data_seed=3, step=7)
    assert x.dtype == torch.int64 and x.shape == (4, 16)
    torch.testing.assert_close(x, x2)
    torch.testing.assert_close(y, x + 1)  # next-token targets on the arange stream
    assert not torch.equal(x, train_batch(stream, 4, 16, data_seed=3, step=8)[0])
    assert not torch.equal(x, train_batch(stream, 4, 16, data_seed=4, step=7)[0])


def test_windows_never_cross_segments():
    stream = TokenStream([np.arange(0, 10), np.arange(100, 104), np.arange(200, 230)])
    flat = np.arange(stream.num_windows(3))
    x, y = stream.windows(flat, 3)
    assert stream.num_windows(3) == 7 + 1 + 27
    torch.testing.assert_close(torch.diff(torch.cat([x, y[:, -1:]], dim=1)), torch.ones(len(flat), 3,
                                                                                        dtype=torch.int64))


def test_val_batches_are_fixed_and_cover_the_stream():
    stream = TokenStream([np.arange(10_000, dtype=np.uint16)])
    batches = val_batches(stream, 3, 4, 8)
    assert len(batches) == 3 and batches[0][0].shape == (4, 8)
    assert batches[0][0][0, 0] == 0 and batches[-1][0][-1, 0] == 10_000 - 9
    again = val_batches(stream, 3, 4, 8)
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), torch.cat([b[0] for b in again]))


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_bin_file_is_memory_mapped(tmp_path, dtype, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_TOKENS", 100)
    tokens = (np.arange(2000) * 7 % 251).astype(dtype)
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    c = load_corpus(str(path), dtype)
    assert isinstance(c.train.segments[0], np.memmap)
    assert c.vocab_size == 251
    assert len(c.train.segments) == 18 and len(c.val.segments) == 2
    np.testing.assert_array_equal(np.asarray(c.val.segments[0]), tokens[900:1000])
    np.testing.assert_array_equal(np.concatenate(c.train.segments[:9]), tokens[:900])
    assert c.info["train_tokens"] + c.info["val_tokens"] == 2000


def test_text_file_is_byte_level(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("héllo wörld\n" * 50, encoding="utf-8")
    c = load_corpus(str(path))
    assert c.vocab_size == 256 and c.info["tokenizer"] == "bytes"
    joined = b"".join(bytes(s) for s in (c.train.segments[:9] + c.val.segments[:1]))
    assert path.read_bytes().startswith(joined[: len(bytes(c.train.segments[0]))])


def test_bad_data_arguments(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_corpus(str(tmp_path / "missing.txt"))
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="not a whole number of uint16 tokens"):
        load_corpus(str(odd), "uint16")
    with pytest.raises(ValueError, match="valid values: uint8, uint16"):
        load_corpus(str(odd), "int32")
    short = TokenStream([np.arange(5)])
    with pytest.raises(ValueError, match="seq_len"):
        train_batch(short, 2, 8, 0, 0)
