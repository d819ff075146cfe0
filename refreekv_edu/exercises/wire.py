"""Plain data across a pipe: what the grading parent and the child running a submission send each other.

A message is a JSON header (the structure: tuples, ints, floats, text, and where each array is) followed by
the arrays in one ``.npz``, each part prefixed by its length. Reading never unpickles (``allow_pickle=False``)
and never trusts a length: a child that writes garbage, too much, or nothing before the deadline produces a
:class:`WireError`, never code run in the parent, a hang or an out-of-memory.

Values a submission returns are made plain in the child (:func:`plain`): numbers stay numbers, arrays stay
arrays (complex and text arrays too, so the parent can say what was wrong with them), anything else becomes a
short description (``{"object": type name, "text": repr}``), so what the parent compares is always data.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import time
from typing import Any

import numpy as np

from .values import Described, safe_text

#: Largest JSON header and array payload accepted from a child (a correct answer is a few kilobytes).
MAX_HEADER = 1 << 20
MAX_ARRAYS = 64 << 20
_LENGTH = struct.Struct(">Q")


class WireError(Exception):
    """The other side sent something that is not a message, or nothing before the deadline."""


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain data: arrays, Python numbers, text, ``None``, tuples of those, or :class:`Described`."""
    if depth > 4:
        return Described(type(value).__name__, "nested too deeply")
    if isinstance(value, (tuple, list)) and not isinstance(value, np.ndarray):
        items = tuple(plain(v, depth + 1) for v in value)
        return items if isinstance(value, tuple) else list(items)
    if value is None or type(value) in (bool, int, float, complex, str):
        return value
    if isinstance(value, (np.generic,)) and value.dtype.kind in "biufc":
        return value.item() if value.dtype.kind != "c" else complex(value)
    try:
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        arr = np.asarray(value)
        if arr.dtype.kind in "biufcUS" and arr.nbytes <= MAX_ARRAYS // 2:
            return np.array(arr, copy=True)
    except BaseException:  # noqa: BLE001 - not convertible: describe it below
        pass
    return Described(safe_text(type(value).__name__, 80), safe_text(value, how="repr"))


def encode(value: Any) -> bytes:
    """One message holding ``value`` (plain data, see :func:`plain`)."""
    arrays: dict[str, np.ndarray] = {}

    def structure(v: Any) -> Any:
        if isinstance(v, np.generic) and v.dtype.kind in "biufc":
            # A numpy scalar (a case's scale) as the Python number, as plain() does for answers: numpy 2's repr of
            # float64 is "np.float64(0.5)", which the other side cannot read back.
            v = v.item()
        if isinstance(v, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = v
            return {"array": key}
        if isinstance(v, tuple):
            return {"tuple": [structure(x) for x in v]}
        if isinstance(v, list):
            return {"list": [structure(x) for x in v]}
        if isinstance(v, dict):
            return {"dict": {str(k): structure(x) for k, x in v.items()}}
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return {"value": v}
        if isinstance(v, int):
            return {"int": str(v)}  # any size, exactly
        if isinstance(v, float):
            return {"float": repr(v)}  # nan and inf too
        if isinstance(v, complex):
            return {"complex": [repr(v.real), repr(v.imag)]}
        if isinstance(v, Described):
            return {"object": v.type_name, "text": v.text}
        raise TypeError(f"not plain data: {type(v).__name__}")

    header = json.dumps(structure(value)).encode()
    buffer = io.BytesIO()
    if arrays:
        np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    return _LENGTH.pack(len(header)) + header + _LENGTH.pack(len(payload)) + payload


def decode(header: bytes, payload: bytes) -> Any:
    """The value of a message (the inverse of :func:`encode`); :class:`WireError` on anything malformed."""
    try:
        tree = json.loads(header)
        arrays = np.load(io.BytesIO(payload), allow_pickle=False) if payload else {}
        return _build(tree, arrays)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it is not a message
        raise WireError(f"malformed message ({type(exc).__name__})") from None


def _build(node: Any, arrays: Any) -> Any:
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise WireError("malformed message structure")
    if "array" in node:
        return np.asarray(arrays[node["array"]])
    if "tuple" in node:
        return tuple(_build(x, arrays) for x in node["tuple"])
    if "list" in node:
        return [_build(x, arrays) for x in node["list"]]
    if "dict" in node:
        return {k: _build(x, arrays) for k, x in node["dict"].items()}
    if "value" in node:
        return node["value"]
    if "int" in node:
        return int(node["int"])
    if "float" in node:
        return float(node["float"])
    if "complex" in node:
        return complex(float(node["complex"][0]), float(node["complex"][1]))
    if "object" in node:
        return Described(str(node["object"]), str(node.get("text", "")))
    raise WireError("malformed message structure")


def send(fd: int, value: Any, deadline: float | None = None) -> None:
    """Write one message to ``fd``; :class:`WireError` if the reader takes none of it by ``deadline`` (monotonic)."""
    data = memoryview(encode(value))
    while data:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise WireError("the other side stopped reading")
        written = os.write(fd, data[: 1 << 16])  # at most a pipe's buffer, so a ready pipe never blocks
        data = data[written:]


def receive(fd: int, deadline: float | None = None) -> Any:
    """Read one message from ``fd``; :class:`WireError` at end of file, on garbage or at ``deadline`` (monotonic)."""
    header = _read(fd, _read_length(fd, deadline, MAX_HEADER), deadline)
    payload = _read(fd, _read_length(fd, deadline, MAX_ARRAYS), deadline)
    return decode(header, payload)


def _read_length(fd: int, deadline: float | None, limit: int) -> int:
    (length,) = _LENGTH.unpack(_read(fd, _LENGTH.size, deadline))
    if length > limit:
        raise WireError(f"message part of {length} bytes (at most {limit})")
    return length


def _read(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WireError("no answer before the deadline")
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            raise WireError("the other side closed the pipe")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
