"""Data layer: tokenizers, corpora, by-document splits, deterministic sampling, prefetching."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from jaxscale.config import DataConfig
from jaxscale.core import data

SMALL = 200_000  # bytes of stdlib: enough documents for a split, fast to read


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSCALE_CACHE", str(tmp_path / "cache"))


def _write_docs(root: Path, n: int, size: int = 400) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "ünïcode"]
    paths = []
    for i in range(n):
        ws = rng.choice(words, size // 6)
        lines = [" ".join(ws[j : j + 8]) for j in range(0, ws.size, 8)]
        text = f"document {i}\n" + "\n".join(lines) + "\n"
        p = root / f"doc{i:03d}.txt"
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    return paths


def _docs_of(tokens: np.ndarray, eod: int) -> list[bytes]:
    ends = np.flatnonzero(tokens == eod)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [np.asarray(tokens[a:b]).tobytes() for a, b in zip(starts, ends)]


# --------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trip_and_known_ids():
    tok = data.load_tokenizer("byte")
    assert (tok.vocab_size, tok.eod_id) == (257, 256)
    assert tok.encode("Aé").tolist() == [65, 0xC3, 0xA9]
    text = "def f(x):\n    return x ** 2  # ünïcödé ✓\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([104, 105, 256, 33]) == "hi" + data.EOD_TEXT + "!"
    with pytest.raises(ValueError, match="ids must be in"):
        tok.decode([300])


def test_bpe_train_round_trip_save_load(tmp_path):
    texts = [Path(data.__file__).read_text(), Path(json.__file__).read_text()]
    tok = data.BPETokenizer.train(texts, vocab_size=400)
    assert tok.vocab_size == 400 and 0 <= tok.eod_id < 400
    sample = "for key, value in sorted(items):\n    print(f'{key}={value!r}')  # ✓ <|endoftext|>\n"
    ids = tok.encode(sample)
    assert ids.max() < 400 and len(ids) < len(sample.encode())  # merges compress
    assert tok.decode(ids) == sample  # literal "<|endoftext|>" stays text
    assert tok.eod_id not in ids.tolist()
    path = tok.save(tmp_path / "bpe.json")
    back = data.load_tokenizer(f"bpe:{path}")
    assert back.vocab_size == 400 and back.encode(sample).tolist() == ids.tolist()


def test_bpe_vocab_spec_is_cached_by_corpus(tmp_path):
    texts = [Path(data.__file__).read_text()[:20000]]
    a = data.load_tokenizer("bpe:300", texts)
    files = list((tmp_path / "cache" / "tokenizers").glob("*.json"))
    assert len(files) == 1
    b = data.load_tokenizer("bpe:300", texts)
    assert b.path == a.path and b.vocab_size == 300
    with pytest.raises(ValueError, match="needs corpus_texts"):
        data.load_tokenizer("bpe:300")
    with pytest.raises(ValueError, match="does not exist"):
        data.load_tokenizer(f"bpe:{tmp_path / 'nope.json'}")
    with pytest.raises(ValueError, match=">= 257"):
        data.load_tokenizer("bpe:100", texts)


# --------------------------------------------------------------------------- corpora


def test_stdlib_corpus_split_is_by_document_and_cached():
    cfg = DataConfig(max_bytes=SMALL, val_fraction=0.2)
    c = data.load_corpus(cfg)
    assert c.vocab_size == 257 and c.n_docs_train > 0 and c.n_docs_val > 0
    assert c.train.dtype == np.uint16 and isinstance(c.train, np.memmap)
    assert c.n_tokens == c.train.shape[0] + c.val.shape[0]
    # Byte tokens of each document are its bytes; every document ends with eod.
    assert c.train[-1] == 256 and c.val[-1] == 256
    tr, va = _docs_of(c.train, 256), _docs_of(c.val, 256)
    assert len(tr) == c.n_docs_train and len(va) == c.n_docs_val
    tr_h = {
        hashlib.sha256(np.frombuffer(d, np.uint16).astype(np.uint8).tobytes()).hexdigest()
        for d in tr
    }
    manifest = json.loads((Path(c.meta["cache_dir"]) / "manifest.json").read_text())
    assert len(manifest) == c.n_docs_train + c.n_docs_val
    assert all(not rel.startswith(("test/", "site-packages/")) for rel, *_ in manifest)
    # The manifest's split labels match the arrays: no document is in both.
    assert {h for _, _, h, s in manifest if s == "train"} == tr_h
    assert not tr_h & {h for _, _, h, s in manifest if s == "val"}
    assert sum(n for _, n, _, _ in manifest) == c.meta["n_bytes"] <= SMALL
    # Second load comes from the cache with the same fingerprint.
    again = data.load_corpus(cfg)
    assert again.fingerprint == c.fingerprint and np.array_equal(again.val, c.val)
    # A different split seed moves documents but keeps the total.
    other = data.load_corpus(DataConfig(max_bytes=SMALL, val_fraction=0.2, split_seed=1))
    assert other.fingerprint != c.fingerprint and other.n_tokens == c.n_tokens


def test_byte_cap_takes_a_mixed_sample_not_the_first_package():
    c = data.load_corpus(DataConfig(max_bytes=SMALL))
    manifest = json.loads((Path(c.meta["cache_dir"]) / "manifest.json").read_text())
    top = {rel.split("/")[0] for rel, *_ in manifest}
    assert len(top) > 5
    assert [rel for rel, *_ in manifest] != sorted(rel for rel, *_ in manifest)


def test_glob_and_directory_of_text_files(tmp_path):
    paths = _write_docs(tmp_path / "txt", 30)
    (tmp_path / "txt" / "blob.bin").write_bytes(b"\x00\xff\x00binary")
    g = data.load_corpus(DataConfig(corpus=str(tmp_path / "txt" / "*.txt"), val_fraction=0.2))
    d = data.load_corpus(DataConfig(corpus=str(tmp_path / "txt"), val_fraction=0.2))
    total = sum(p.stat().st_size for p in paths) + len(paths)  # + one eod per document
    assert g.n_tokens == total and g.n_docs_train + g.n_docs_val == 30
    assert d.fingerprint == g.fingerprint  # binary file skipped; same documents, same names
    assert d.meta["stats"]["n_skipped_not_utf8"] == 1


def test_single_text_file_is_cut_into_pseudo_documents(tmp_path):
    p = _write_docs(tmp_path, 1, size=20000)[0]
    c = data.load_corpus(DataConfig(corpus=str(p), val_fraction=0.1))
    assert c.n_docs_val >= 1 and c.n_docs_train >= 10
    assert c.n_tokens == p.stat().st_size + c.n_docs_train + c.n_docs_val


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    paths = _write_docs(tmp_path / "d", 10)
    cfg = DataConfig(corpus=str(tmp_path / "d"), val_fraction=0.2)
    fp0 = data.load_corpus(cfg).fingerprint
    assert data.load_corpus(cfg).fingerprint == fp0
    text = paths[3].read_text()
    paths[3].write_text(text.replace("alpha", "ALPHA", 1))  # same size, new content
    c = data.load_corpus(cfg)
    assert c.fingerprint != fp0
    assert b"ALPHA" in np.asarray(np.concatenate([c.train, c.val]), np.uint8).tobytes()


def test_missing_and_empty_paths_raise_readable_errors(tmp_path):
    with pytest.raises(ValueError, match=r"corpus path .*nope.* does not exist; expected 'stdlib'"):
        data.load_corpus(DataConfig(corpus=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="matched no files"):
        data.load_corpus(DataConfig(corpus=str(tmp_path / "*.txt")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        data.load_corpus(DataConfig(corpus=str(tmp_path / "empty")))
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(ValueError, match=r"no non-empty UTF-8 text .*1 empty"):
        data.load_corpus(DataConfig(corpus=str(tmp_path / "empty")))


def test_corpus_too_small_for_one_sequence(tmp_path):
    _write_docs(tmp_path / "d", 3, size=30)
    c = data.load_corpus(DataConfig(corpus=str(tmp_path / "d"), val_fraction=0.3))
    with pytest.raises(ValueError, match="corpus too small"):
        data.sample_batch(c.val, seed=0, step=0, batch_size=2, seq_len=10_000)
    with pytest.raises(ValueError, match="corpus too small"):
        data.eval_batches(c.val, batch_size=2, seq_len=10_000, n_batches=1)


# --------------------------------------------------------------------------- token files


def _token_stream(n_docs: int, vocab: int, eod: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n_docs):
        parts.append(rng.integers(0, vocab - 1, rng.integers(5, 50)))
        parts.append([eod])
    return np.concatenate(parts)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_token_file_memmap_split_by_document(tmp_path, dtype):
    toks = _token_stream(200, 256, 256).astype(dtype)
    p = tmp_path / "toks.bin"
    toks.tofile(p)
    c = data.load_corpus(DataConfig(corpus=f"tokens:{p}", token_dtype=dtype, val_fraction=0.2))
    assert c.train.dtype == np.dtype(dtype) and isinstance(c.train, np.memmap)
    assert c.n_docs_train + c.n_docs_val == 200 and c.n_tokens == toks.size
    docs = {d for d in _docs_of(toks, 256)}
    tr, va = set(_docs_of(c.train, 256)), set(_docs_of(c.val, 256))
    assert tr | va == docs and not tr & va
    npy = tmp_path / "toks.npy"
    np.save(npy, toks)
    c2 = data.load_corpus(DataConfig(corpus=f"tokens:{npy}", val_fraction=0.2))
    assert c2.train.dtype == np.dtype(dtype) and np.array_equal(c2.val, c.val)


def test_bad_token_files(tmp_path):
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match="not a multiple of 2"):
        data.load_corpus(DataConfig(corpus=f"tokens:{odd}"))
    big = tmp_path / "big.bin"
    np.array([1, 2, 300, 256], dtype=np.uint16).tofile(big)
    with pytest.raises(ValueError, match="holds id 300 but tokenizer 'byte' has vocab_size 257"):
        data.load_corpus(DataConfig(corpus=f"tokens:{big}"))
    with pytest.raises(ValueError, match="does not exist"):
        data.load_corpus(DataConfig(corpus=f"tokens:{tmp_path / 'missing.bin'}"))
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        data.load_corpus(DataConfig(corpus=f"tokens:{tmp_path / 'empty.bin'}"))
    np.save(tmp_path / "f.npy", np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="expected 1-D uint16 or uint32"):
        data.load_corpus(DataConfig(corpus=f"tokens:{tmp_path / 'f.npy'}"))


# --------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def stream():
    return np.arange(10_000, dtype=np.uint16) % 257


def test_sample_batch_is_a_function_of_seed_and_step(stream):
    kw = dict(batch_size=8, seq_len=32)
    a = data.sample_batch(stream, seed=3, step=7, **kw)
    assert a.shape == (8, 33) and a.dtype == np.int32
    assert np.array_equal(a, data.sample_batch(stream, seed=3, step=7, **kw))
    assert not np.array_equal(a, data.sample_batch(stream, seed=3, step=8, **kw))
    assert not np.array_equal(a, data.sample_batch(stream, seed=4, step=7, **kw))
    # Rows are contiguous windows, with starts spread over the whole stream.
    ramp = np.arange(10_000)
    rows = np.concatenate([data.sample_batch(ramp, seed=0, step=s, **kw) for s in range(50)])
    assert np.array_equal(rows, rows[:, :1] + np.arange(33))
    assert rows[:, 0].min() < 1000 and rows[:, 0].max() > 9000 - 33
    assert len(np.unique(rows[:, 0])) > 390  # 400 draws from ~10k starts: few collisions


def test_shards_concatenate_to_the_global_batch(stream):
    kw = dict(seed=1, step=5, batch_size=12, seq_len=16)
    whole = data.sample_batch(stream, **kw)
    for n in (2, 3, 4, 6):
        parts = [data.sample_batch(stream, shard_index=i, num_shards=n, **kw) for i in range(n)]
        assert all(p.shape == (12 // n, 17) for p in parts)
        assert np.array_equal(np.concatenate(parts), whole)
    with pytest.raises(ValueError, match="multiple of num_shards"):
        data.sample_batch(stream, shard_index=0, num_shards=5, **kw)


def test_eval_batches_fixed_and_cover_the_stream():
    toks = np.arange(50_000, dtype=np.uint32)
    e = data.eval_batches(toks, batch_size=4, seq_len=64, n_batches=8)
    assert e.shape == (8, 4, 65) and e.dtype == np.int32
    assert np.array_equal(e, data.eval_batches(toks, batch_size=4, seq_len=64, n_batches=8))
    starts = np.sort(e[:, :, 0].reshape(-1))
    stratum = (50_000 - 64) / 32
    assert np.all(starts // stratum == np.arange(32))  # one window per stratum
    assert not np.array_equal(
        e, data.eval_batches(toks, batch_size=4, seq_len=64, n_batches=8, seed=1)
    )


def test_prefetcher_yields_exactly_the_direct_batches(stream):
    kw = dict(seed=9, batch_size=4, seq_len=20, shard_index=1, num_shards=2)
    with data.Prefetcher(stream, start=3, end=11, **kw) as pf:
        got = list(pf)
    assert len(got) == 8
    for step, b in zip(range(3, 11), got):
        assert np.array_equal(b, data.sample_batch(stream, step=step, **kw))
    # Early exit stops the thread; a failing transform surfaces in the consumer.
    pf = data.Prefetcher(stream, start=0, end=1000, **kw)
    next(pf)
    pf.close()
    assert not pf._thread.is_alive()

    def boom(_):
        raise RuntimeError("transform failed")

    with pytest.raises(RuntimeError, match="transform failed"):
        list(data.Prefetcher(stream, start=0, end=3, transform=boom, **kw))


def test_epochs_and_repeat_warning(tmp_path):
    _write_docs(tmp_path / "d", 10)
    c = data.load_corpus(DataConfig(corpus=str(tmp_path / "d"), val_fraction=0.2))
    n = c.train.shape[0]
    assert data.epochs(c, 3 * n) == 3.0
    assert data.epochs(c, n // 2) == pytest.approx(0.5, abs=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.warn_if_repeated(c, n) == pytest.approx(1.0)
    with pytest.warns(data.RepeatedDataWarning, match=r"2\.50 epochs"):
        assert data.warn_if_repeated(c, int(2.5 * n)) == pytest.approx(2.5, rel=1e-3)


# --------------------------------------------------------------------------- eval corpora & HF


def test_eval_corpora_are_deterministic_and_fingerprinted():
    cfg = DataConfig(max_bytes=SMALL, val_fraction=0.2)
    held = data.eval_corpus("stdlib", cfg)
    assert np.array_equal(held.tokens, data.load_corpus(cfg).val)
    for name in ("site-packages", "prose"):
        a = data.eval_corpus(name, cfg, max_bytes=50_000)
        b = data.eval_corpus(name, cfg, max_bytes=50_000)
        assert a.fingerprint == b.fingerprint and np.array_equal(a.tokens, b.tokens)
        assert 0 < a.n_tokens <= 50_000 + a.n_docs and a.tokens[-1] == 256
    text = np.asarray(data.eval_corpus("prose", cfg, max_bytes=50_000).tokens)
    assert b"the " in text[text < 256].astype(np.uint8).tobytes()
    with pytest.raises(ValueError, match="unknown eval corpus"):
        data.eval_corpus("wikipedia")


def test_hf_dataset_from_local_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [f"story {i}: " + "once upon a time " * (i % 7 + 1) for i in range(40)] + [""]
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": rows})})
    ds.save_to_disk(str(tmp_path / "ds"))
    c = data.load_corpus(DataConfig(corpus=f"hf:{tmp_path / 'ds'}:train:body", val_fraction=0.2))
    assert c.n_docs_train + c.n_docs_val == 40  # the empty row is dropped
    assert c.n_tokens == sum(len(r.encode()) + 1 for r in rows if r)
    with pytest.raises(ValueError, match="field 'text' not in the dataset"):
        data.load_corpus(DataConfig(corpus=f"hf:{tmp_path / 'ds'}"))


def test_hf_without_datasets_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "datasets":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ValueError, match=r"pip install 'jaxscale\[hf\]'"):
        data.load_corpus(DataConfig(corpus="hf:some/dataset"))


def test_cache_files_written_atomically_leave_no_temporaries(tmp_path):
    c = data.load_corpus(DataConfig(max_bytes=SMALL))
    d = Path(c.meta["cache_dir"])
    assert sorted(os.listdir(d)) == ["manifest.json", "meta.json", "train.npy", "val.npy"]


def test_single_line_file_still_splits(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("wörd " * 4000)
    c = data.load_corpus(DataConfig(corpus=str(p), val_fraction=0.1))
    assert c.n_docs_train >= 10 and c.n_docs_val >= 1
    assert c.n_tokens == p.stat().st_size + c.n_docs_train + c.n_docs_val


def test_bpe_corpus_and_eval_sets_share_the_trained_tokenizer():
    cfg = DataConfig(max_bytes=SMALL, tokenizer="bpe:320", val_fraction=0.2)
    c = data.load_corpus(cfg)
    tok = data.tokenizer_for(c)
    assert c.vocab_size == tok.vocab_size == 320 and c.tokenizer.startswith("bpe:/")
    assert c.n_tokens < c.meta["n_bytes"]  # merges compress the text
    first = np.asarray(c.val[: int(np.argmax(np.asarray(c.val) == tok.eod_id))])
    assert tok.encode(tok.decode(first)).tolist() == first.tolist()
    held = data.eval_corpus("stdlib", cfg)
    assert held.tokenizer == c.tokenizer and np.array_equal(held.tokens, c.val)
    prose = data.eval_corpus("prose", cfg, max_bytes=20_000)
    assert prose.tokenizer == c.tokenizer and prose.tokens.max() < 320
    assert "capped by data.max_bytes" in c.describe()


def test_byte_cap_cuts_a_long_line_at_a_character_boundary(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(4):
        (tmp_path / "d" / f"{i}.txt").write_text("€" * 1000)  # 3000 bytes, no newline
    c = data.load_corpus(DataConfig(corpus=str(tmp_path / "d"), max_bytes=7001))
    # Two whole files, then the third is cut to a whole number of characters; nothing after.
    assert c.meta["n_bytes"] == 6000 + 999 and c.n_docs_train + c.n_docs_val == 3
    text = np.asarray(np.concatenate([c.train, c.val]))
    assert text[text < 256].astype(np.uint8).tobytes().decode("utf-8") == "€" * 2333


def test_split_documents_fraction_and_non_empty_splits():
    names = [f"pkg/mod{i}.py" for i in range(2000)]
    is_val = data.split_documents(names, seed=0, val_fraction=0.1)
    assert abs(int(is_val.sum()) - 200) < 40  # binomial sd ~13.4
    assert np.array_equal(is_val, data.split_documents(names, seed=0, val_fraction=0.1))
    assert not np.array_equal(is_val, data.split_documents(names, seed=1, val_fraction=0.1))
    assert data.split_documents(["a", "b"], seed=0, val_fraction=0.01).tolist().count(True) == 1
    with pytest.raises(ValueError, match="needs at least 2"):
        data.split_documents(["only"], seed=0, val_fraction=0.1)
