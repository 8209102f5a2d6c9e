"""Tokenizers, corpora, document-level train/val splits and deterministic batch sampling.

Corpora (``DataConfig.corpus``):

- ``"stdlib"``: the running Python's standard-library ``*.py`` source, present on every
  machine. Excluded: ``site-packages``/``dist-packages`` (third-party code, the
  "site-packages" eval set), test suites (``test``/``tests``/``idle_test``: Debian/Ubuntu
  ship them in a separate package, so leaving them out keeps the corpus the same across
  installs; they also hold deliberately malformed files) and ``pydoc_data`` (generated
  English prose, the "prose" eval set). Each file is one document.
- a text file, a directory (every non-hidden UTF-8 file below it) or a glob: one document
  per file; a single file is cut at line boundaries into pseudo-documents so it can be split.
- ``"tokens:PATH"``: a pre-tokenized ``.npy`` or raw ``.bin`` file of uint16/uint32 ids,
  memory-mapped; documents are the segments ending in the tokenizer's end-of-document id.
  ``max_bytes`` caps token files too (set it to null to use a whole file).
- ``"hf:NAME[:SPLIT[:FIELD]]"``: a Hugging Face dataset (hub name or a ``save_to_disk``
  directory), one row per document; needs the optional ``datasets`` package.

Files are taken in the order of sha256(relative path) until ``DataConfig.max_bytes`` is used
up, so a cap keeps a representative mix instead of the first packages alphabetically.
Each document is assigned to validation by a hash of (split_seed, its name), so no document
is in both splits. Tokenized arrays are cached under ``$JAXSCALE_CACHE`` (default
``~/.cache/jaxscale``) keyed by a fingerprint of exactly which bytes were used and how they
were tokenized, next to a ``manifest.json`` listing every document used.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import hashlib
import json
import math
import os
import queue
import sys
import sysconfig
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jaxscale.config import DataConfig
from jaxscale.core.cache import cache_dir

FORMAT_VERSION = 1
EOD_TEXT = "<|endoftext|>"
EVAL_CORPORA = ("stdlib", "site-packages", "prose")
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__"}
)
_CORPUS_FORMS = (
    "'stdlib', a text file, a directory of text files, a glob like 'data/*.txt', "
    "'tokens:PATH' (.npy/.bin of uint16/uint32 ids) or 'hf:NAME[:SPLIT[:FIELD]]'"
)


class RepeatedDataWarning(UserWarning):
    """A run will read its training split more than once (more than one epoch)."""


# --------------------------------------------------------------------------- tokenizers


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids, with a dedicated end-of-document id."""

    vocab_size: int
    eod_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Any) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 plus end-of-document 256."""

    vocab_size = 257
    eod_id = 256
    spec = "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Any) -> str:
        ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids_N.size and (ids_N.min() < 0 or ids_N.max() > self.eod_id):
            raise ValueError(
                f"byte tokenizer ids must be in [0, 256], got {ids_N.min()}..{ids_N.max()}"
            )
        pieces = np.split(ids_N, np.flatnonzero(ids_N == self.eod_id))
        texts = [bytes(p[p < 256].astype(np.uint8)).decode("utf-8", "replace") for p in pieces]
        return EOD_TEXT.join(texts)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class BPETokenizer:
    """Byte-level BPE from the `tokenizers` library; ``<|endoftext|>`` is end-of-document."""

    def __init__(self, tok: Any, path: str | None = None) -> None:
        self._tok = tok
        eod = tok.token_to_id(EOD_TEXT)
        if eod is None:
            raise ValueError(f"BPE tokenizer {path or ''!s} has no {EOD_TEXT!r} token; retrain it")
        # Literal "<|endoftext|>" inside a document is text, not a document boundary.
        tok.encode_special_tokens = True
        self.eod_id = int(eod)
        self.vocab_size = int(tok.get_vocab_size())
        self.path = path
        self.spec = f"bpe:{path}" if path else "bpe:<in-memory>"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train byte-level BPE locally (no downloads)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(
                f"BPE vocab_size must be >= 257 (256 bytes + end-of-document), got {vocab_size}"
            )
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOD_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        p = Path(path)
        if not p.is_file():
            raise ValueError(
                f"BPE tokenizer file {str(p)!r} does not exist; expected a tokenizers JSON file"
            )
        try:
            tok = HFTokenizer.from_file(str(p))
        except Exception as e:  # the Rust side raises a bare Exception
            raise ValueError(
                f"BPE tokenizer file {str(p)!r} is not a valid tokenizers JSON: {e}"
            ) from None
        return cls(tok, str(p.resolve()))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer JSON atomically and remember the path."""
        p = Path(path).resolve()
        _atomic_write_bytes(p, self._tok.to_str().encode("utf-8"))
        self.path = str(p)
        self.spec = f"bpe:{p}"
        return p

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32) for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Any) -> str:
        return self._tok.decode(
            [int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False
        )

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, path={self.path!r})"


def load_tokenizer(
    spec: str, corpus_texts: Iterable[str] | None = None, *, cache_key: str | None = None
) -> Tokenizer:
    """'byte', 'bpe:PATH.json' or 'bpe:VOCAB' (trained on corpus_texts, JSON cached by key)."""
    if spec == "byte":
        return ByteTokenizer()
    kind, sep, arg = spec.partition(":")
    if kind != "bpe" or not sep or not arg:
        raise ValueError(
            f"unknown tokenizer {spec!r}; use 'byte', 'bpe:PATH.json' or 'bpe:VOCAB_SIZE'"
        )
    if not arg.isdigit():
        return BPETokenizer.load(arg)
    vocab = int(arg)
    if corpus_texts is None:
        raise ValueError(f"tokenizer {spec!r} trains a new BPE vocabulary and needs corpus_texts")
    texts: list[str] | None = None
    if cache_key is None:
        texts = list(corpus_texts)
        h = hashlib.sha256()
        for t in texts:
            h.update(hashlib.sha256(t.encode("utf-8")).digest())
        cache_key = h.hexdigest()
    path = cache_dir() / "tokenizers" / f"bpe{vocab}-{cache_key[:24]}.json"
    if path.is_file():
        return BPETokenizer.load(path)
    texts = list(corpus_texts) if texts is None else texts
    if not any(texts):
        raise ValueError(f"tokenizer {spec!r}: cannot train BPE on an empty corpus")
    tok = BPETokenizer.train(texts, vocab)
    tok.save(path)
    return tok


def _tokenizer_id(tok: Tokenizer) -> str:
    """What the cache key needs to know about a tokenizer: its exact vocabulary."""
    if isinstance(tok, ByteTokenizer):
        return "byte"
    if isinstance(tok, BPETokenizer):
        return "bpe-sha256:" + hashlib.sha256(tok._tok.to_str().encode("utf-8")).hexdigest()
    return f"{type(tok).__qualname__}:{tok.vocab_size}:{getattr(tok, 'spec', '')}"


# --------------------------------------------------------------------------- corpus types


@dataclass(frozen=True, eq=False)
class Corpus:
    """Tokenized train/val splits; each document is followed by the end-of-document id."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    fingerprint: str
    n_docs_train: int
    n_docs_val: int
    source: str
    tokenizer: str = "byte"
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.train.shape[0] + self.val.shape[0])

    def describe(self) -> str:
        """One line for logs: source, sizes, vocabulary and fingerprint."""
        used, avail = self.meta.get("n_bytes"), self.meta.get("stats", {}).get("bytes_available")
        cap = (
            f" (capped by data.max_bytes: {used:,} of {avail:,} bytes)"
            if used and avail and avail > used
            else ""
        )
        return (
            f"{self.source}: {self.train.shape[0]:,} train / {self.val.shape[0]:,} val tokens in "
            f"{self.n_docs_train:,} / {self.n_docs_val:,} documents, vocab {self.vocab_size}, "
            f"tokenizer {self.tokenizer}, fingerprint {self.fingerprint[:12]}{cap}"
        )


@dataclass(frozen=True, eq=False)
class EvalSet:
    """A named, fingerprinted evaluation token stream (documents joined with end-of-document)."""

    name: str
    tokens: np.ndarray
    vocab_size: int
    fingerprint: str
    n_docs: int
    source: str
    tokenizer: str = "byte"
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class _Docs:
    """Raw documents (name, UTF-8 bytes) plus what identifies where they came from."""

    names: list[str]
    datas: list[bytes]
    source: str
    ident: dict[str, Any]
    manifest: bool = True
    stats: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.ident, sort_keys=True).encode())
        for name, data in zip(self.names, self.datas):
            h.update(f"\0{name}\0{len(data)}\0".encode())
            h.update(hashlib.sha256(data).digest())
        return h.hexdigest()

    @property
    def n_bytes(self) -> int:
        return sum(len(d) for d in self.datas)


# --------------------------------------------------------------------------- cache


def _atomic_write_bytes(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _entry_dir(fingerprint: str) -> Path:
    return cache_dir() / "corpora" / fingerprint


def _read_meta(d: Path) -> dict[str, Any] | None:
    """meta.json is written last, so its presence means the entry is complete."""
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == FORMAT_VERSION else None


def _write_entry(
    d: Path, arrays: Mapping[str, np.ndarray], meta: dict[str, Any], manifest: Any
) -> None:
    for name, arr in arrays.items():
        _atomic_save_npy(d / f"{name}.npy", arr)
    if manifest is not None:
        _atomic_write_bytes(d / "manifest.json", json.dumps(manifest, indent=0).encode())
    _atomic_write_bytes(d / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())


def _mmap(d: Path, name: str) -> np.ndarray:
    return np.load(d / f"{name}.npy", mmap_mode="r")


# --------------------------------------------------------------------------- reading sources


def _hash_order(names: Iterable[str]) -> list[str]:
    """A deterministic order unrelated to the alphabet, so a byte cap takes a mixed sample."""
    return sorted(names, key=lambda n: hashlib.sha256(n.encode("utf-8")).digest())


def _is_text(data: bytes) -> bool:
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _drop_partial_char(data: bytes) -> bytes:
    """Drop an incomplete UTF-8 sequence at the end of a truncated read."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            return data[: e.start]
    return data


def _read_files(
    files: Mapping[str, str], max_bytes: int | None, stats: dict[str, Any]
) -> tuple[list[str], list[bytes]]:
    """Read rel->abs files in hash order until max_bytes; skip empty and non-UTF-8 files."""
    budget = math.inf if max_bytes is None else max_bytes
    names: list[str] = []
    datas: list[bytes] = []
    skipped_binary: list[str] = []
    n_empty = 0
    available = 0
    for rel in _hash_order(files):
        size = os.path.getsize(files[rel])
        available += size
        if budget <= 0:
            continue
        with open(files[rel], "rb") as f:
            data = f.read() if size <= budget else f.read(int(budget))
        truncated = len(data) < size
        if truncated:  # the cap ends this read: cut at a line end, else a character boundary
            cut = data.rfind(b"\n")
            data = data[: cut + 1] if cut >= 0 else _drop_partial_char(data)
        if not data:
            n_empty += 1
            continue
        if not _is_text(data):
            skipped_binary.append(rel)
            continue
        names.append(rel)
        datas.append(data)
        budget = 0 if truncated else budget - len(data)
    stats.update(
        n_files_seen=len(files),
        n_files_used=len(names),
        n_empty=n_empty,
        skipped_not_utf8=skipped_binary[:50],
        n_skipped_not_utf8=len(skipped_binary),
        bytes_available=available,
    )
    return names, datas


def _walk(
    root: Path, keep: Callable[[str, str], bool], skip_dirs: frozenset[str]
) -> dict[str, str]:
    """rel posix path -> absolute path of regular files below root that `keep` accepts."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.startswith("."))
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            rel = Path(os.path.relpath(p, root)).as_posix()
            if keep(rel, fn) and os.path.isfile(p):
                out[rel] = p
    return out


def _python_ident() -> dict[str, Any]:
    return {"python": ".".join(map(str, sys.version_info[:3])), "impl": sys.implementation.name}


def _read_stdlib(max_bytes: int | None) -> _Docs:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _walk(root, lambda rel, fn: fn.endswith(".py"), _STDLIB_SKIP_DIRS)
    stats: dict[str, Any] = {"root": str(root)}
    names, datas = _read_files(files, max_bytes, stats)
    if not names:
        raise ValueError(f"corpus 'stdlib': no *.py files found under {str(root)!r}")
    ident = {"kind": "stdlib", **_python_ident()}
    py = ident["python"]
    return _Docs(names, datas, f"stdlib (Python {py}, {len(names)} files)", ident, stats=stats)


def _read_local(spec: str, max_bytes: int | None) -> _Docs:
    is_glob = any(c in spec for c in "*?[")
    path = Path(spec).expanduser()
    if is_glob:
        matches = sorted(
            p for p in globlib.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p)
        )
        if not matches:
            raise ValueError(f"corpus glob {spec!r} matched no files; expected {_CORPUS_FORMS}")
        root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in matches])
        files = {Path(os.path.relpath(os.path.abspath(p), root)).as_posix(): p for p in matches}
    elif path.is_dir():
        files = _walk(path, lambda rel, fn: not fn.startswith("."), frozenset({"__pycache__"}))
        if not files:
            raise ValueError(f"corpus directory {spec!r} holds no files; expected text files in it")
    elif path.is_file():
        files = {path.name: str(path)}
    else:
        raise ValueError(f"corpus path {spec!r} does not exist; expected {_CORPUS_FORMS}")
    stats: dict[str, Any] = {"root": os.path.abspath(spec)}
    names, datas = _read_files(files, max_bytes, stats)
    if not names:
        raise ValueError(
            f"corpus {spec!r}: no non-empty UTF-8 text found ({stats['n_files_seen']} files "
            f"checked, {stats['n_empty']} empty, {stats['n_skipped_not_utf8']} binary or not "
            "UTF-8); expected text files"
        )
    return _Docs(names, datas, f"{spec} ({len(names)} files)", {"kind": "text"}, stats=stats)


def _parse_hf(spec: str) -> tuple[str, str, str]:
    parts = spec[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise ValueError(
            f"corpus {spec!r}: write 'hf:NAME[:SPLIT[:FIELD]]', "
            "e.g. 'hf:roneneldan/TinyStories:train:text'"
        )
    name = parts[0]
    split = parts[1] if len(parts) > 1 and parts[1] else "train"
    fld = parts[2] if len(parts) > 2 and parts[2] else "text"
    return name, split, fld


def _read_hf(spec: str, max_bytes: int | None) -> _Docs:
    name, split, fld = _parse_hf(spec)
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"corpus {spec!r} needs the optional 'datasets' package: pip install 'jaxscale[hf]'"
        ) from None
    local = os.path.isdir(os.path.expanduser(name))
    if local:
        ds = datasets.load_from_disk(os.path.expanduser(name))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(
                    f"corpus {spec!r}: split {split!r} not in the dataset; it has {sorted(ds)}"
                )
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name, split=split)
    if fld not in ds.column_names:
        raise ValueError(
            f"corpus {spec!r}: field {fld!r} not in the dataset; it has {ds.column_names}"
        )
    budget = math.inf if max_bytes is None else max_bytes
    names: list[str] = []
    datas: list[bytes] = []
    row = 0
    for chunk in ds.select_columns([fld]).iter(batch_size=1024):
        for text in chunk[fld]:
            row += 1
            if budget <= 0:
                break
            if not text:
                continue
            if not isinstance(text, str):
                raise ValueError(
                    f"corpus {spec!r}: field {fld!r} holds {type(text).__name__}, expected str"
                )
            data = text.encode("utf-8")
            if len(data) > budget:
                cut = data.rfind(b"\n", 0, int(budget))
                data = (
                    data[: cut + 1]
                    if cut >= 0
                    else data[: int(budget)].decode("utf-8", "ignore").encode()
                )
            names.append(f"row{row - 1}")
            datas.append(data)
            budget -= len(data)
        if budget <= 0:
            break
    if not names:
        raise ValueError(f"corpus {spec!r}: no non-empty text in field {fld!r} of split {split!r}")
    ident = {"kind": "hf", "split": split, "field": fld, "name": None if local else name}
    return _Docs(
        names, datas, f"hf:{name}:{split}:{fld} ({len(names)} rows)", ident, manifest=False
    )


def _read_documents(spec: str, max_bytes: int | None) -> _Docs:
    if spec == "stdlib":
        return _read_stdlib(max_bytes)
    if spec.startswith("hf:"):
        return _read_hf(spec, max_bytes)
    return _read_local(spec, max_bytes)


def _cut_point(data: bytes, lo: int, hi: int) -> int:
    """First line end in [lo, hi), else first space, else the next UTF-8 character start."""
    for sep in (b"\n", b" "):
        j = data.find(sep, lo, hi)
        if j >= 0:
            return j + 1
    while lo < len(data) and 0x80 <= data[lo] < 0xC0:
        lo += 1
    return lo


def _split_single(docs: _Docs, val_fraction: float) -> None:
    """Cut a lone document at line ends into pseudo-documents so a by-document split exists."""
    if len(docs.names) != 1:
        return
    data = docs.datas[0]
    n = max(math.ceil(2 / val_fraction), math.ceil(len(data) / 2**20))
    bounds = [0]
    for i in range(1, n):
        at = max(bounds[-1], len(data) * i // n)
        cut = _cut_point(data, at, at + len(data) // n)
        if cut >= len(data):
            break
        bounds.append(cut)
    bounds.append(len(data))
    pieces = [
        (f"{docs.names[0]}#{i:05d}", data[a:b])
        for i, (a, b) in enumerate(zip(bounds, bounds[1:]))
        if b > a
    ]
    docs.names = [p[0] for p in pieces]
    docs.datas = [p[1] for p in pieces]
    docs.stats["single_document_pieces"] = len(pieces)


# --------------------------------------------------------------------------- splitting


def _unit_hash(seed: int, name: str) -> float:
    d = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(d[:8], "little") / 2.0**64


def _ensure_both(u_D: np.ndarray, is_val_D: np.ndarray, what: str) -> np.ndarray:
    if u_D.shape[0] < 2:
        raise ValueError(
            f"{what} has {u_D.shape[0]} document(s); a train/val split by document needs at "
            "least 2: add text (or raise data.max_bytes)"
        )
    is_val_D = is_val_D.copy()
    if not is_val_D.any():
        is_val_D[np.argmin(u_D)] = True
    if is_val_D.all():
        is_val_D[np.argmax(u_D)] = False
    return is_val_D


def split_documents(
    names: Sequence[str], seed: int, val_fraction: float, what: str = "corpus"
) -> np.ndarray:
    """Boolean is-validation per document from hash(seed, name); both splits non-empty."""
    u_D = np.array([_unit_hash(seed, n) for n in names], dtype=np.float64)
    return _ensure_both(u_D, u_D < val_fraction, f"corpus {what!r}")


def _join(chunks: Sequence[np.ndarray], eod: int, dtype: np.dtype) -> np.ndarray:
    """Concatenate documents, each followed by eod."""
    out = np.empty(sum(c.shape[0] + 1 for c in chunks), dtype=dtype)
    pos = 0
    for c in chunks:
        out[pos : pos + c.shape[0]] = c
        pos += c.shape[0]
        out[pos] = eod
        pos += 1
    return out


def _encode_all(tok: Tokenizer, datas: Sequence[bytes]) -> list[np.ndarray]:
    if isinstance(tok, ByteTokenizer):  # bytes are ids: no decoding needed
        return [np.frombuffer(d, dtype=np.uint8) for d in datas]
    texts = [d.decode("utf-8") for d in datas]
    if isinstance(tok, BPETokenizer):
        return tok.encode_batch(texts)
    return [np.asarray(tok.encode(t)) for t in texts]


def _check_dtype(vocab_size: int, dtype: str) -> np.dtype:
    dt = np.dtype(dtype)
    if vocab_size - 1 > np.iinfo(dt).max:
        raise ValueError(
            f"vocab_size {vocab_size} does not fit token_dtype {dtype}; set data.token_dtype=uint32"
        )
    return dt


# --------------------------------------------------------------------------- load_corpus


def load_corpus(cfg: DataConfig) -> Corpus:
    """Read, split by document, tokenize and cache a corpus (cached arrays are memory-mapped)."""
    if cfg.corpus.startswith("tokens:"):
        return _load_token_corpus(cfg)
    docs = _read_documents(cfg.corpus, cfg.max_bytes)
    _split_single(docs, cfg.val_fraction)
    src_fp = docs.fingerprint()
    is_val_D = split_documents(docs.names, cfg.split_seed, cfg.val_fraction, cfg.corpus)
    train_idx = np.flatnonzero(~is_val_D)
    val_idx = np.flatnonzero(is_val_D)
    split_key = hashlib.sha256(f"{src_fp}:{cfg.split_seed}:{cfg.val_fraction}".encode()).hexdigest()
    tok = load_tokenizer(
        cfg.tokenizer,
        (docs.datas[i].decode("utf-8") for i in train_idx) if cfg.tokenizer != "byte" else None,
        cache_key=split_key,
    )
    dtype = _check_dtype(tok.vocab_size, cfg.token_dtype)
    fp = _fingerprint(
        {"source": src_fp, "split": split_key, "tok": _tokenizer_id(tok), "dtype": cfg.token_dtype}
    )
    d = _entry_dir(fp)
    meta = _read_meta(d)
    if meta is None:
        tokens = _encode_all(tok, docs.datas)
        train = _join([tokens[i] for i in train_idx], tok.eod_id, dtype)
        val = _join([tokens[i] for i in val_idx], tok.eod_id, dtype)
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": fp,
            "source_fingerprint": src_fp,
            "source": docs.source,
            "corpus": cfg.corpus,
            "vocab_size": tok.vocab_size,
            "tokenizer": getattr(tok, "spec", cfg.tokenizer),
            "n_docs_train": int(train_idx.size),
            "n_docs_val": int(val_idx.size),
            "n_bytes": docs.n_bytes,
            "ident": docs.ident,
            "stats": docs.stats,
            "config": dataclasses.asdict(cfg),
        }
        manifest = None
        if docs.manifest:
            manifest = [
                [n, len(b), hashlib.sha256(b).hexdigest(), "val" if v else "train"]
                for n, b, v in zip(docs.names, docs.datas, is_val_D)
            ]
        _write_entry(d, {"train": train, "val": val}, meta, manifest)
    return _corpus_from_entry(d, meta, docs.stats)


def _fingerprint(parts: Mapping[str, Any]) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _corpus_from_entry(
    d: Path, meta: Mapping[str, Any], stats: Mapping[str, Any] | None = None
) -> Corpus:
    train, val = _mmap(d, "train"), _mmap(d, "val")
    info = {k: meta[k] for k in ("source_fingerprint", "n_bytes", "stats", "corpus") if k in meta}
    if stats is not None:  # this read's own stats (a cache entry may be shared by equal reads)
        info["stats"] = dict(stats)
    info["cache_dir"] = str(d)
    return Corpus(
        train=train,
        val=val,
        vocab_size=int(meta["vocab_size"]),
        fingerprint=meta["fingerprint"],
        n_docs_train=int(meta["n_docs_train"]),
        n_docs_val=int(meta["n_docs_val"]),
        source=meta["source"],
        tokenizer=meta["tokenizer"],
        meta=info,
    )


# --------------------------------------------------------------------------- token files


def open_token_file(path: str | os.PathLike, dtype: str = "uint16") -> np.ndarray:
    """Memory-map a .npy (dtype from its header) or raw .bin token file, validating its layout."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(
            f"token file {str(p)!r} does not exist; "
            "expected a .npy or raw .bin of uint16/uint32 ids"
        )
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"token file {str(p)!r} is empty; expected uint16/uint32 token ids")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"token file {str(p)!r} is not a readable .npy array: {e}") from None
        if arr.dtype not in (np.uint16, np.uint32) or arr.ndim != 1:
            raise ValueError(
                f"token file {str(p)!r} holds a {arr.ndim}-D {arr.dtype} array; "
                "expected 1-D uint16 or uint32"
            )
        if arr.shape[0] == 0:
            raise ValueError(f"token file {str(p)!r} holds no tokens")
        return arr
    dt = np.dtype(dtype)
    if size % dt.itemsize:
        raise ValueError(
            f"token file {str(p)!r} has {size} bytes, not a multiple of {dt.itemsize} ({dtype}); "
            "is data.token_dtype right, or is the file truncated?"
        )
    arr = np.memmap(p, dtype=dt, mode="r")
    head = np.asarray(arr[: 1 << 20])
    # uint32 ids below 65536 read as uint16 come out as (id, 0, id, 0, ...): a silent corruption.
    if dt == np.uint16 and head.size >= 64 and not head[1::2].any() and head[0::2].any():
        raise ValueError(
            f"token file {str(p)!r} read as uint16 has a zero in every odd position, the pattern "
            "of uint32 ids read as uint16; set data.token_dtype=uint32"
        )
    return arr


def _mix64(x_N: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele et al. 2014), vectorised on uint64 with wraparound."""
    x_N = x_N.astype(np.uint64, copy=True)
    x_N ^= x_N >> np.uint64(30)
    x_N *= np.uint64(0xBF58476D1CE4E5B9)
    x_N ^= x_N >> np.uint64(27)
    x_N *= np.uint64(0x94D049BB133111EB)
    x_N ^= x_N >> np.uint64(31)
    return x_N


def _hash_u64(*keys: int, idx_N: np.ndarray) -> np.ndarray:
    """Counter-based hash of (keys..., idx): stable across numpy versions and platforms."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    h = np.zeros(1, dtype=np.uint64)
    for k in keys:
        h = _mix64(h ^ (np.array([int(k) & (2**64 - 1)], dtype=np.uint64) * golden + golden))
    return _mix64(h ^ ((idx_N.astype(np.uint64) + np.uint64(1)) * golden))


def _max_id(arr: np.ndarray, chunk: int = 1 << 24) -> int:
    return max(int(arr[i : i + chunk].max()) for i in range(0, arr.shape[0], chunk))


def _hash_file_prefix(path: Path, n_bytes: int) -> str:
    """sha256 of the first n_bytes, memoised by (path, size, mtime, inode) for huge files."""
    st = path.stat()
    key = hashlib.sha256(
        f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{n_bytes}".encode()
    ).hexdigest()
    memo = cache_dir() / "filehash" / f"{key}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = n_bytes
        while left > 0:
            buf = f.read(min(left, 1 << 24))
            if not buf:
                break
            h.update(buf)
            left -= len(buf)
    digest = h.hexdigest()
    _atomic_write_bytes(memo, digest.encode())
    return digest


def _load_token_corpus(cfg: DataConfig) -> Corpus:
    path = Path(cfg.corpus[len("tokens:") :]).expanduser()
    if cfg.tokenizer != "byte" and cfg.tokenizer.partition(":")[2].isdigit():
        raise ValueError(
            f"corpus {cfg.corpus!r} is pre-tokenized, so tokenizer {cfg.tokenizer!r} cannot be "
            "trained on it; use data.tokenizer='byte' or 'bpe:PATH.json' "
            "(the tokenizer that made the file)"
        )
    tok = load_tokenizer(cfg.tokenizer)
    arr = open_token_file(path, cfg.token_dtype)
    n_file = int(arr.shape[0])
    if cfg.max_bytes is not None and arr.shape[0] * arr.dtype.itemsize > cfg.max_bytes:
        n = cfg.max_bytes // arr.dtype.itemsize
        eods = np.flatnonzero(arr[:n] == tok.eod_id)
        arr = arr[: eods[-1] + 1] if eods.size else arr[:n]
    n_tok = int(arr.shape[0])
    header = int(np.load(path, mmap_mode="r").offset) if path.suffix == ".npy" else 0
    src_fp = _fingerprint(
        {
            "kind": "tokens",
            "dtype": str(arr.dtype),
            "n": n_tok,
            "sha256": _hash_file_prefix(path, header + n_tok * arr.dtype.itemsize),
        }
    )
    split_key = hashlib.sha256(f"{src_fp}:{cfg.split_seed}:{cfg.val_fraction}".encode()).hexdigest()
    fp = _fingerprint(
        {"source": src_fp, "split": split_key, "tok": _tokenizer_id(tok), "dtype": str(arr.dtype)}
    )
    d = _entry_dir(fp)
    meta = _read_meta(d)
    if meta is None:
        mx = _max_id(arr)
        if mx >= tok.vocab_size:
            raise ValueError(
                f"token file {str(path)!r} holds id {mx} but tokenizer {cfg.tokenizer!r} has "
                f"vocab_size {tok.vocab_size}; pass the tokenizer that produced the file "
                "(data.tokenizer='bpe:PATH.json'), or check data.token_dtype (a uint16 file read "
                "as uint32 gives ids in the millions)"
            )
        ends = np.flatnonzero(arr == tok.eod_id) + 1
        if ends.size == 0 or ends[-1] != n_tok:
            ends = np.append(ends, n_tok)
        if ends.size < 2:  # no document boundaries: contiguous pseudo-documents
            k = max(math.ceil(2 / cfg.val_fraction), 2)
            ends = np.unique(np.linspace(0, n_tok, k + 1).astype(np.int64)[1:])
        starts = np.concatenate([[0], ends[:-1]])
        u_D = _hash_u64(cfg.split_seed, idx_N=np.arange(ends.size)).astype(np.float64) / 2.0**64
        is_val_D = _ensure_both(u_D, u_D < cfg.val_fraction, f"token file {str(path)!r}")
        arrays = {}
        for name, sel in (("train", ~is_val_D), ("val", is_val_D)):
            arrays[name] = _gather_runs(arr, starts[sel], ends[sel])
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": fp,
            "source_fingerprint": src_fp,
            "source": f"tokens:{path} ({n_tok:,} tokens, {arr.dtype})",
            "corpus": cfg.corpus,
            "vocab_size": tok.vocab_size,
            "tokenizer": getattr(tok, "spec", cfg.tokenizer),
            "n_docs_train": int((~is_val_D).sum()),
            "n_docs_val": int(is_val_D.sum()),
            "n_bytes": n_tok * arr.dtype.itemsize,
            "stats": {"bytes_available": n_file * arr.dtype.itemsize, "n_tokens_file": n_file},
            "config": dataclasses.asdict(cfg),
        }
        _write_entry(d, arrays, meta, None)
    return _corpus_from_entry(d, meta)


def _gather_runs(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Copy [starts[i], ends[i]) slices in order, merging adjacent ones into long copies."""
    if starts.size == 0:
        return np.empty(0, dtype=arr.dtype)
    brk = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    run_a = starts[np.concatenate([[0], brk])]
    run_b = ends[np.concatenate([brk - 1, [ends.size - 1]])]
    out = np.empty(int((ends - starts).sum()), dtype=arr.dtype)
    pos = 0
    for a, b in zip(run_a.tolist(), run_b.tolist()):
        out[pos : pos + b - a] = arr[a:b]
        pos += b - a
    return out


# --------------------------------------------------------------------------- sampling


def _check_window(n: int, seq_len: int) -> int:
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n_starts = n - seq_len
    if n_starts < 1:
        raise ValueError(
            f"corpus too small: {n} tokens cannot hold one sequence of seq_len+1 = {seq_len + 1} "
            "tokens; use more data (raise data.max_bytes) or a shorter model.context_length"
        )
    return n_starts


def sample_batch(
    tokens: np.ndarray,
    *,
    seed: int,
    step: int,
    batch_size: int,
    seq_len: int,
    shard_index: int = 0,
    num_shards: int = 1,
) -> np.ndarray:
    """Random windows int32[batch_size//num_shards, seq_len+1], a pure function of (seed, step).

    Row r of the global batch starts at hash(seed, step, r) mod (n - seq_len), so shard i's
    rows i*b:(i+1)*b are the same whatever the number of shards, and a resumed run sees the
    batches an uninterrupted one would.
    """
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index} must be in [0, num_shards={num_shards})")
    if batch_size < 1 or batch_size % num_shards:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of num_shards={num_shards}"
        )
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    n_starts = _check_window(int(tokens.shape[0]), seq_len)
    b = batch_size // num_shards
    rows_B = np.arange(shard_index * b, (shard_index + 1) * b)
    starts_B = (_hash_u64(seed, step, idx_N=rows_B) % np.uint64(n_starts)).astype(np.int64)
    return _windows(tokens, starts_B, seq_len)


def _windows(tokens: np.ndarray, starts_B: np.ndarray, seq_len: int) -> np.ndarray:
    view_SxL = np.lib.stride_tricks.sliding_window_view(tokens, seq_len + 1)
    return np.asarray(view_SxL[starts_B], dtype=np.int32)


def eval_batches(
    tokens: np.ndarray, *, batch_size: int, seq_len: int, n_batches: int, seed: int = 1234
) -> np.ndarray:
    """Fixed int32[n_batches, batch_size, seq_len+1] windows, stratified over the whole array.

    One window per equal stratum (lower-variance than i.i.d. windows), then shuffled so every
    batch is a representative sample; deterministic in seed.
    """
    if n_batches < 1 or batch_size < 1:
        raise ValueError(f"n_batches and batch_size must be >= 1, got {n_batches}, {batch_size}")
    n_starts = _check_window(int(tokens.shape[0]), seq_len)
    k = n_batches * batch_size
    idx_K = np.arange(k)
    u_K = (_hash_u64(seed, 0, idx_N=idx_K) >> np.uint64(11)).astype(np.float64) / 2.0**53
    starts_K = np.minimum(((idx_K + u_K) * (n_starts / k)).astype(np.int64), n_starts - 1)
    order_K = np.argsort(_hash_u64(seed, 1, idx_N=idx_K), kind="stable")
    return _windows(tokens, starts_K[order_K], seq_len).reshape(n_batches, batch_size, seq_len + 1)


def epochs(corpus: Corpus, total_tokens: int) -> float:
    """How many passes over the training split total_tokens makes."""
    return total_tokens / max(int(corpus.train.shape[0]), 1)


def warn_if_repeated(corpus: Corpus, total_tokens: int, *, stacklevel: int = 2) -> float:
    """Return epochs(corpus, total_tokens), warning (RepeatedDataWarning) when it exceeds 1."""
    e = epochs(corpus, total_tokens)
    if e > 1.0:
        warnings.warn(
            f"the run reads {total_tokens:,} training tokens but {corpus.source} holds "
            f"{corpus.train.shape[0]:,}: {e:.2f} epochs, so data repeats (repeated data is worth "
            "less, Muennighoff et al. 2023); raise data.max_bytes or use a larger corpus",
            RepeatedDataWarning,
            stacklevel=stacklevel,
        )
    return e


_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher:
    """Yield sample_batch(...) for steps start..end-1, computed `depth` batches ahead on a thread.

    ``transform`` (e.g. a device_put) also runs on the thread. Use as an iterator, ideally in a
    ``with`` block so the thread is stopped if the loop exits early.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        seed: int,
        start: int,
        end: int,
        batch_size: int,
        seq_len: int,
        shard_index: int = 0,
        num_shards: int = 1,
        depth: int = 2,
        transform: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        if end < start:
            raise ValueError(f"Prefetcher: end={end} is before start={start}")
        # Validate eagerly so bad arguments fail here, not on the worker thread.
        _check_window(int(tokens.shape[0]), seq_len)
        self.start, self.end = start, end
        self._kw = dict(
            seed=seed,
            batch_size=batch_size,
            seq_len=seq_len,
            shard_index=shard_index,
            num_shards=num_shards,
        )
        self._tokens = tokens
        self._transform = transform
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="jaxscale-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for step in range(self.start, self.end):
                batch = sample_batch(self._tokens, step=step, **self._kw)
                if self._transform is not None:
                    batch = self._transform(batch)
                if not self._put(batch):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the consumer, not lost on the thread
            self._put(_Failed(e))

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        item = self._q.get()
        if item is _DONE:
            self._finished = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Failed):
            self._finished = True
            raise item.exc
        return item

    def __len__(self) -> int:
        return self.end - self.start

    def close(self) -> None:
        """Stop the worker thread and drop anything it queued."""
        self._finished = True
        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- eval corpora


def _read_site_packages(max_bytes: int | None) -> _Docs:
    paths = sysconfig.get_paths()
    stdlib = os.path.realpath(paths["stdlib"])
    roots = sorted({os.path.realpath(paths["purelib"]), os.path.realpath(paths["platlib"])})
    files: dict[str, str] = {}
    for root in roots:
        if not os.path.isdir(root) or root == stdlib:
            continue
        skip = frozenset({"__pycache__", "jaxscale", "tests", "test"})
        for rel, p in _walk(Path(root), lambda rel, fn: fn.endswith(".py"), skip).items():
            if not rel.startswith("__editable__") and not rel.startswith("jaxscale"):
                files.setdefault(rel, p)
    if not files:
        raise ValueError(f"eval corpus 'site-packages': no third-party *.py files under {roots}")
    stats: dict[str, Any] = {"roots": roots}
    names, datas = _read_files(files, max_bytes, stats)
    ident = {"kind": "site-packages", **_python_ident()}
    return _Docs(names, datas, f"site-packages ({len(names)} files)", ident, stats=stats)


def _license_files() -> dict[str, str]:
    """label -> path of license texts on this machine (package metadata, Python, the OS)."""
    paths = sysconfig.get_paths()
    out: dict[str, str] = {}
    prefixes = ("license", "licence", "copying", "notice")
    for root in sorted({paths["purelib"], paths["platlib"]}):
        for dist in sorted(globlib.glob(os.path.join(root, "*.dist-info"))):
            for p in sorted(globlib.glob(os.path.join(dist, "**", "*"), recursive=True)):
                if os.path.isfile(p) and os.path.basename(p).lower().startswith(prefixes):
                    out["site-packages/" + Path(os.path.relpath(p, root)).as_posix()] = p
    lic = os.path.join(paths["stdlib"], "LICENSE.txt")
    if os.path.isfile(lic):
        out["stdlib/LICENSE.txt"] = lic
    common = "/usr/share/common-licenses"
    if os.path.isdir(common):
        for fn in sorted(os.listdir(common)):
            p = os.path.join(common, fn)
            if os.path.isfile(p):
                out[f"common-licenses/{fn}"] = p
    return out


def _read_prose(max_bytes: int | None) -> _Docs:
    texts: dict[str, bytes] = {}
    try:
        from pydoc_data.topics import topics
    except ImportError:
        topics = {}
    for key in sorted(topics):
        texts[f"pydoc_data.topics/{key}"] = topics[key].encode("utf-8")
    for label, p in _license_files().items():
        texts[label] = Path(p).read_bytes()
    seen: set[bytes] = set()
    unique: dict[str, bytes] = {}
    for label in _hash_order(texts):  # many packages ship the same MIT/Apache text: keep one
        data = texts[label]
        digest = hashlib.sha256(data).digest()
        if data.strip() and digest not in seen and _is_text(data):
            seen.add(digest)
            unique[label] = data
    budget = math.inf if max_bytes is None else max_bytes
    names: list[str] = []
    datas: list[bytes] = []
    for label in _hash_order(unique):
        if budget <= 0:
            break
        data = unique[label]
        if len(data) > budget:
            cut = data.rfind(b"\n", 0, int(budget))
            if cut < 0:
                continue
            data = data[: cut + 1]
        names.append(label)
        datas.append(data)
        budget -= len(data)
    if not names:
        raise ValueError("eval corpus 'prose': found neither pydoc_data topics nor license texts")
    ident = {"kind": "prose", **_python_ident()}
    stats = {"n_candidates": len(texts), "n_unique": len(unique)}
    return _Docs(names, datas, f"prose ({len(names)} documents)", ident, stats=stats)


def eval_corpus(
    name: str, cfg: DataConfig | None = None, *, max_bytes: int | None = 2_000_000
) -> EvalSet:
    """A download-free eval set tokenized like cfg: 'stdlib' (val split), 'site-packages', 'prose'.

    'stdlib' is the validation split of load_corpus(cfg with corpus='stdlib'), so it ignores
    max_bytes; the others take up to max_bytes of text in a deterministic hash order.
    """
    cfg = cfg or DataConfig()
    if name not in EVAL_CORPORA:
        raise ValueError(f"unknown eval corpus {name!r}; choose one of {list(EVAL_CORPORA)}")
    tok_spec = cfg.tokenizer
    if tok_spec != "byte" and tok_spec.partition(":")[2].isdigit():
        tok_spec = load_corpus(cfg).tokenizer  # the BPE vocabulary trained for this config
    if name == "stdlib":
        c = load_corpus(dataclasses.replace(cfg, corpus="stdlib", tokenizer=tok_spec))
        return EvalSet(
            name,
            c.val,
            c.vocab_size,
            c.fingerprint + ":val",
            c.n_docs_val,
            c.source + " [val]",
            c.tokenizer,
            c.meta,
        )
    tok = load_tokenizer(tok_spec)
    dtype = _check_dtype(tok.vocab_size, cfg.token_dtype)
    docs = _read_site_packages(max_bytes) if name == "site-packages" else _read_prose(max_bytes)
    fp = _fingerprint(
        {
            "eval": name,
            "source": docs.fingerprint(),
            "tok": _tokenizer_id(tok),
            "dtype": cfg.token_dtype,
        }
    )
    d = _entry_dir(fp)
    meta = _read_meta(d)
    if meta is None:
        tokens = _join(_encode_all(tok, docs.datas), tok.eod_id, dtype)
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": fp,
            "source": docs.source,
            "vocab_size": tok.vocab_size,
            "tokenizer": getattr(tok, "spec", tok_spec),
            "n_docs": len(docs.names),
            "n_bytes": docs.n_bytes,
            "stats": docs.stats,
        }
        manifest = [
            [n, len(b), hashlib.sha256(b).hexdigest()] for n, b in zip(docs.names, docs.datas)
        ]
        _write_entry(d, {"tokens": tokens}, meta, manifest)
    return EvalSet(
        name,
        _mmap(d, "tokens"),
        int(meta["vocab_size"]),
        meta["fingerprint"],
        int(meta["n_docs"]),
        meta["source"],
        meta["tokenizer"],
        {"n_bytes": meta["n_bytes"], "stats": meta["stats"], "cache_dir": str(d)},
    )


def tokenizer_for(corpus: Corpus | EvalSet) -> Tokenizer:
    """The exact tokenizer a corpus was built with (for decoding samples)."""
    return load_tokenizer(corpus.tokenizer)
