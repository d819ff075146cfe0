"""Describing and comparing what a submission returned, without trusting it.

Everything here must work on any object a student's function can return: arrays, numbers, tuples, strings,
complex values, torch tensors, and objects whose ``__str__``, ``__repr__`` or ``__array__`` raise. The
description (:func:`summarize`) and the comparison (:func:`compare_values`) never raise; text taken from a
submission goes through :func:`safe_text`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Described:
    """A value that was not plain data (an object, a generator...), as the process that ran the submission saw it."""

    def __init__(self, type_name: str, text: str) -> None:
        self.type_name, self.text = type_name, text

    def __repr__(self) -> str:
        return f"<{self.type_name}: {self.text}>"


def kind_of(x: Any) -> str:
    """The type name to report for ``x`` (the original type's name for a :class:`Described` value)."""
    return x.type_name if isinstance(x, Described) else safe_text(type(x).__name__, 80)


def safe_text(x: Any, limit: int = 200, how: str = "str") -> str:
    """``str(x)`` (or ``repr`` with ``how="repr"``), cut to ``limit`` characters; a placeholder if that raises."""
    try:
        text = repr(x) if how == "repr" else str(x)
        if not isinstance(text, str):
            raise TypeError
    except BaseException:  # noqa: BLE001 - a hostile __str__/__repr__ must not crash the grader
        try:
            name = type(x).__name__
        except BaseException:  # noqa: BLE001
            name = "object"
        return f"<a {name} whose {how}() raised>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summarize(x: Any, max_items: int = 24) -> str:
    """A short, readable description of a value: shape, dtype and (if small) the values themselves.

    Never raises: whatever a submission returns (strings, complex numbers, odd objects) can be described.
    """
    try:
        return _summarize(x, max_items)
    except BaseException:  # noqa: BLE001 - a description must not crash the report
        return f"{type(x).__name__}: {safe_text(x, how='repr')}"


def _summarize(x: Any, max_items: int) -> str:
    if isinstance(x, tuple):
        return "(" + ",\n ".join(_summarize(v, max_items) for v in x) + ")"
    if isinstance(x, (bool, np.bool_)):
        return repr(bool(x))
    if isinstance(x, (int, np.integer)):
        return f"{int(x)} (int)"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g} (float)"
    if x is None:
        return "None"
    if isinstance(x, (str, bytes)):
        return f"{type(x).__name__} {safe_text(x, how='repr')}"
    arr = _as_array(x)
    if arr is None:
        return f"{kind_of(x)}: {x.text if isinstance(x, Described) else safe_text(x, how='repr')}"
    head = f"array shape {tuple(arr.shape)} {arr.dtype}"
    if arr.size == 0:
        return head + " (empty)"
    with np.printoptions(precision=4, suppress=True, threshold=max_items, edgeitems=3, linewidth=100):
        if arr.size <= max_items:
            return f"{head} {np.array2string(arr, separator=', ')}"
        first = arr.reshape(-1, arr.shape[-1])[0, :8] if arr.ndim >= 2 else arr[:8]
        where = "first row" if arr.ndim >= 2 else "values"
        start = f", {where} starts {np.array2string(first, separator=', ')[:-1]}, ...]"
        if arr.dtype.kind == "f":
            finite = arr[np.isfinite(arr)]
            rng = f"min {finite.min():.4g}, max {finite.max():.4g}" if finite.size else "no finite values"
            return f"{head}, {rng}{start}"
        if arr.dtype.kind in "biu":
            return f"{head}, min {arr.min()}, max {arr.max()}{start}"
        return f"{head}{start}"


def _as_array(x: Any) -> np.ndarray | None:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except BaseException:  # noqa: BLE001 - a hostile __array__ / __len__ is just "not an array"
        return None
    return None if arr.dtype == object else arr


# ---------------------------------------------------------------------------------------------- comparing values
def compare_values(expected: Any, got: Any, rtol: float = 1e-4, atol: float = 1e-6) -> str | None:
    """``None`` when ``got`` matches ``expected``, else one sentence that says what differs and where.

    Tuples are compared element by element; integers exactly; floats with ``rtol``/``atol``. Complex values and
    non-numbers (strings, objects) never match, with a sentence that says so.
    """
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            what = f"a {kind_of(got)}" + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
            return f"expected a tuple of {len(expected)} arrays, got {what}"
        for i, (e, g) in enumerate(zip(expected, got)):
            problem = compare_values(e, g, rtol, atol)
            if problem:
                return f"output [{i}]: {problem}"
        return None
    if isinstance(expected, (int, np.integer)):
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            if isinstance(got, np.ndarray) and got.size == 1 and got.dtype.kind in "iu":
                got = int(got)
            else:
                return f"expected an int, got {kind_of(got)} {safe_text(got, how='repr')}"
        return (
            None
            if int(got) == int(expected)
            else f"expected {int(expected)}, got {int(got)} (off by {int(got) - int(expected):+d})"
        )
    exp = np.asarray(expected)
    arr = _as_array(got)
    if arr is None:
        return f"expected an array of shape {exp.shape}, got {kind_of(got)}"
    kind = bad_dtype(arr)
    if kind:
        return kind
    if arr.shape != exp.shape:
        return f"wrong shape: expected {exp.shape}, got {arr.shape}"
    if exp.dtype.kind in "iu":
        if arr.dtype.kind not in "iu":
            return f"expected integer indices, got dtype {arr.dtype}"
        bad = np.argwhere(arr != exp)
        if bad.size:
            idx = tuple(int(i) for i in bad[0])
            return f"{len(bad)} of {exp.size} entries differ; first at index {idx}: expected {exp[idx]}, got {arr[idx]}"
        return None
    arr = arr.astype(np.float64)
    if np.isnan(arr).any() and not np.isnan(exp).any():
        idx = tuple(int(i) for i in np.argwhere(np.isnan(arr))[0])
        return f"your output contains NaN ({int(np.isnan(arr).sum())} entries; first at index {idx})"
    if np.isinf(arr).any() and not np.isinf(exp).any():
        return "your output contains inf"
    close = np.isclose(arr, exp, rtol=rtol, atol=atol)
    if not close.all():
        idx = tuple(int(i) for i in np.argwhere(~close)[0])
        return (
            f"{int((~close).sum())} of {exp.size} entries differ; first at index {idx}: "
            f"expected {float(exp[idx]):.6g}, got {float(arr[idx]):.6g}"
        )
    return None


def bad_dtype(x: Any) -> str | None:
    """``None`` when ``x`` (an array, a number, or a tuple of them) holds real numbers, else what is wrong with it."""
    if isinstance(x, (tuple, list)) and any(isinstance(v, (tuple, list, np.ndarray)) for v in x):
        for i, v in enumerate(x):
            problem = bad_dtype(v)
            if problem:
                return f"output [{i}]: {problem}"
        return None
    if isinstance(x, (complex, np.complexfloating)):
        return f"your output is a complex number ({safe_text(x, how='repr')}); the algorithm is real-valued"
    if isinstance(x, (str, bytes)):
        return f"your output is text ({safe_text(x, how='repr')}), not a number or an array of numbers"
    arr = _as_array(x)
    if arr is None:
        return None  # not array-like at all: the comparison says what was expected instead
    if arr.dtype.kind == "c":
        return (
            f"your output is complex (dtype {arr.dtype}); the algorithm is real-valued, imaginary parts are never right"
        )
    if arr.dtype.kind not in "biuf":
        return f"your output holds {arr.dtype} values (dtype kind {arr.dtype.kind!r}), not numbers"
    return None


def same_values(a: Any, b: Any) -> bool:
    """Loose equality used to recognise a known mistake (NaNs equal, small float noise ignored)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (
            isinstance(a, (tuple, list))
            and isinstance(b, (tuple, list))
            and len(a) == len(b)
            and all(same_values(x, y) for x, y in zip(a, b))
        )
    x, y = _as_array(a), _as_array(b)
    if x is None or y is None or x.shape != y.shape:
        return False
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        return False  # complex or non-numbers never match a known (real-valued) mistake
    if x.dtype.kind in "iub" and y.dtype.kind in "iub":
        return bool(np.array_equal(x, y))
    try:
        return bool(np.allclose(x.astype(np.float64), y.astype(np.float64), rtol=1e-4, atol=1e-6, equal_nan=True))
    except (TypeError, ValueError):
        return False


def unchanged(before: Any, after: Any) -> bool:
    """Exact equality of an input before and after the submission ran (any in-place write shows)."""
    x, y = _as_array(before), _as_array(after)
    if x is None or y is None:
        return bool(before == after) if type(before) is type(after) else False
    return x.shape == y.shape and x.dtype == y.dtype and bool(np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))
