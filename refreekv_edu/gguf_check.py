"""Check a GGUF file before a backend spends seconds loading it: header, metadata and tensor sizes.

A truncated or damaged GGUF otherwise fails deep inside a loader with an internal message, or (a flipped bit
in the weights) loads and writes garbage. This reads only the header (standard library, no ``gguf``
package): the magic, the metadata, every tensor's shape, type and offset, and checks that the file is long
enough to hold every tensor. Weights cannot be checked without a checksum: for the bundled model's file the
caller compares the sha256 (:func:`refreekv_edu.models.load_model`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: ggml tensor types: id -> (name, elements per block, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 30: ("BF16", 1, 2),
}  # fmt: skip
#: Metadata value types: id -> struct format of a scalar (8 = string, 9 = array are handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_MAX_COUNT = 1 << 32  # no real GGUF has this many tensors, keys or array items: a damaged header


class GGUFError(ValueError):
    """The file is not a readable GGUF (the message says what is wrong and where)."""


@dataclass(frozen=True)
class GGUFSummary:
    """What the header says: version, counts, where the tensor data starts and the bytes it needs."""

    version: int
    tensors: int
    metadata: int
    data_start: int
    required_bytes: int
    file_bytes: int
    architecture: str = ""  # general.architecture, e.g. "llama"
    context_length: int | None = None  # <architecture>.context_length: the longest sequence the model was built for


def _read(fh: BinaryIO, fmt: str, what: str) -> tuple:
    size = struct.calcsize("<" + fmt)
    raw = fh.read(size)
    if len(raw) != size:
        raise GGUFError(f"the file ends inside the header (while reading {what}): truncated download?")
    return struct.unpack("<" + fmt, raw)


def _count(fh: BinaryIO, what: str) -> int:
    (n,) = _read(fh, "Q", what)
    if n > _MAX_COUNT:
        raise GGUFError(f"implausible {what} ({n}): the header is damaged")
    return n


def _string(fh: BinaryIO, what: str) -> str:
    n = _count(fh, f"the length of {what}")
    raw = fh.read(n)
    if len(raw) != n:
        raise GGUFError(f"the file ends inside the header (in {what}): truncated download?")
    return raw.decode("utf-8", errors="replace")


def _skip_value(fh: BinaryIO, kind: int, key: str) -> int | str | None:
    """Read one metadata value of type ``kind``; return it when it is an integer or a string (``general.alignment``,
    ``general.architecture``, ``llama.context_length``), else ``None``."""
    if kind in _SCALARS:
        (value,) = _read(fh, _SCALARS[kind], key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind == 8:
        return _string(fh, key)
    if kind == 9:
        (item_kind,) = _read(fh, "I", key)
        for _ in range(_count(fh, f"the items of {key}")):
            _skip_value(fh, item_kind, key)
        return None
    raise GGUFError(f"unknown metadata type {kind} for key {key!r}: the header is damaged")


def check_gguf(path: str | Path) -> GGUFSummary:
    """Parse the header of ``path`` and check that every tensor fits in the file.

    Raises:
        GGUFError: not a GGUF, damaged header, unknown tensor type sizes aside, or a file too short for its tensors.
    """
    path = Path(path)
    file_bytes = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise GGUFError(f"{path.name} is not a GGUF file (no GGUF magic at the start)")
        (version,) = _read(fh, "I", "the version")
        if version not in (2, 3):
            raise GGUFError(f"{path.name}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_meta = _count(fh, "the tensor count"), _count(fh, "the metadata count")
        alignment, values = 32, {}
        for _ in range(n_meta):
            key = _string(fh, "a metadata key")
            (kind,) = _read(fh, "I", key)
            values[key] = _skip_value(fh, kind, key)
            if key == "general.alignment" and isinstance(values[key], int) and values[key]:
                alignment = values[key]
        architecture = values.get("general.architecture")
        architecture = architecture if isinstance(architecture, str) else ""
        context = values.get(f"{architecture}.context_length")
        context = context if isinstance(context, int) and context > 0 else None
        ends = []
        for _ in range(n_tensors):
            name = _string(fh, "a tensor name")
            (n_dims,) = _read(fh, "I", name)
            if n_dims > 8:
                raise GGUFError(f"tensor {name!r} claims {n_dims} dimensions: the header is damaged")
            dims = _read(fh, "Q" * n_dims, name)
            kind, offset = _read(fh, "IQ", name)
            elements = 1
            for d in dims:
                elements *= d
            if kind in GGML_TYPES:
                _, block, block_bytes = GGML_TYPES[kind]
                ends.append(offset + -(-elements // block) * block_bytes)
            else:  # a type this table does not know: at least its start must be in the file
                ends.append(offset)
        header_end = fh.tell()
    data_start = -(-header_end // alignment) * alignment
    required = data_start + max(ends, default=0)
    if required > file_bytes:
        raise GGUFError(
            f"{path.name} is {file_bytes:,} bytes but its tensors need {required:,}: the file is truncated "
            "(an interrupted download or copy); fetch it again"
        )
    return GGUFSummary(version, n_tensors, n_meta, data_start, required, file_bytes, architecture, context)
