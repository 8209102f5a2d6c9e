"""Run-store primitives: atomic JSON writes, append-only JSONL metrics, robust reads."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON via a temp file + fsync + rename so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> dict | None:
    """Parsed JSON, or None (with a warning naming the file) if missing or corrupt."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        warnings.warn(f"{path}: unreadable JSON ({e}); ignoring it", stacklevel=2)
        return None


def append_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Append rows as JSON lines and fsync (one write per call keeps lines whole)."""
    if not rows:
        return
    blob = "".join(json.dumps(r, default=_default, allow_nan=True) + "\n" for r in rows)
    with open(path, "a") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a corrupt or truncated line is skipped with a warning naming it."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, errors="replace") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{i}: corrupt or truncated line skipped", stacklevel=2)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                warnings.warn(f"{path}:{i}: not a JSON object, skipped", stacklevel=2)
    return rows


def truncate_jsonl_after(path: str | Path, step: int) -> None:
    """Drop metric rows past `step` (used on resume so the curve has no duplicates)."""
    path = Path(path)
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if r.get("step", -1) <= step]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write("".join(json.dumps(r, default=_default) + "\n" for r in keep))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
