"""The resumable record store of an eval run's ``--out`` folder.

``<out>/samples.jsonl`` holds one JSON line per finished (sample, method) pair: reading it (the last line wins,
damaged lines are skipped with a warning) and repairing a torn last line before appending. ``<out>/refs/`` holds the
full-cache reference of each sample (greedy tokens, first decode logits, prompt digest), so a resumed run does not
redo it. :func:`check_writable` checks the folder before any model loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .tasks import Sample

SAMPLES_FILE = "samples.jsonl"


def check_writable(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and parents) and check that a file can be written there, before any model loads.

    Raises:
        OSError: with the directory named, when it cannot be created or written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write to the output directory {str(out)!r} ({exc.strerror or exc}); choose another --out") from exc
    return out


def prompt_digest(sample: Sample) -> str:
    """A short hash of what the model sees, to refuse resuming over a different prompt under the same id."""
    return hashlib.sha1(f"{sample.chat}\x00{sample.prompt}".encode()).hexdigest()[:12]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


#: Keys every record needs for the report; a line without them is skipped with a warning.
RECORD_KEYS = ("sample_id", "task", "method", "score", "token_agreement", "exact_match_full", "kv_kept", "mean_budget")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``samples.jsonl``, one per (sample, method): the last line wins when a pair appears twice.

    A torn last line (an interrupted run) is ignored silently; any other line that is not JSON, not a JSON object
    (``null``, ``[1, 2]``) or lacks a key in :data:`RECORD_KEYS` (``{}``) is skipped with a :class:`UserWarning`
    naming the file and line, so a damaged file never ends up in a table unnoticed.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                warnings.warn(f"{path}:{number}: not JSON, skipped: {line[:60]!r}", UserWarning, stacklevel=2)
            continue
        if not isinstance(row, dict) or any(k not in row for k in RECORD_KEYS):
            missing = "not a JSON object" if not isinstance(row, dict) else f"missing {[k for k in RECORD_KEYS if k not in row]}"
            warnings.warn(f"{path}:{number}: not an eval record ({missing}), skipped: {line[:60]!r}", UserWarning, stacklevel=2)
            continue
        rows.pop((str(row["sample_id"]), str(row["method"])), None)
        rows[(str(row["sample_id"]), str(row["method"]))] = row
    return list(rows.values())


def repair_torn_tail(path: str | Path) -> bool:
    """Make ``path`` end with a newline before appending, so a new record is never glued onto a torn last line.

    A last line without its newline that is valid JSON gets the newline; one that is not (an interrupted write)
    is cut off. Returns whether the file changed.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:].decode("utf-8"))
        with open(path, "ab") as f:
            f.write(b"\n")
    except (json.JSONDecodeError, UnicodeDecodeError):
        warnings.warn(f"{path}: dropped a torn last line from an interrupted run ({len(data) - start} bytes)", UserWarning, stacklevel=2)
        with open(path, "r+b") as f:
            f.truncate(start)
    return True


@dataclass
class _Reference:
    tokens: list[int]
    first_logits: np.ndarray | None
