"""Every public function and class on the API reference pages has a docstring, and states array shapes.

The API pages (``docs/api/*.md``) render modules with mkdocstrings (``::: module.path``). This test reads the
same directives, imports each module, and for every public object it documents checks:

- it has a docstring (a method overriding a base-class method without a docstring of its own is covered by
  the base class's entry, which is checked where that class is documented);
- when it takes or returns arrays (an annotation naming an array type, or a parameter with a well-known
  array name such as ``queries``/``keys``/``last_attn``), the docstring states a shape such as ``(Hq, w, D)``,
  ``(n,)``; shape-agnostic operations may say it in words ("same shape", "along ``axis``", "elementwise").

A module whose optional dependency is missing (torch, mlx) is skipped with the reason; its page still
builds, because mkdocstrings reads sources statically.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

API_DIR = Path(__file__).resolve().parents[2] / "docs" / "api"
DIRECTIVE = re.compile(r"^:::\s+(?P<path>[\w.]+)\s*$")

#: Annotations that mean "an array" (annotations are read as strings, unevaluated).
ARRAY_ANNOTATION = re.compile(r"\b(np\.ndarray|ndarray|NDArray|Array|Tensor|torch\.Tensor|mx\.array)\b")
#: Parameter names that hold arrays throughout the code base, whatever their annotation.
ARRAY_PARAMS = {"queries", "keys", "values", "last_attn", "a_sorted", "col_sum", "order", "scores", "kept"}
#: A shape: a parenthesised tuple of dims (names, numbers, ``...``, simple products), at least one comma.
_DIM = r"(?:\.\.\.|[A-Za-z_]\w*|\d+)(?:\s*[*+/-]\s*(?:[A-Za-z_]\w*|\d+))*"
SHAPE = re.compile(rf"\(\s*{_DIM}\s*,(?:\s*{_DIM}\s*,)*(?:\s*{_DIM})?\s*\)")
#: Shape-agnostic operations (elementwise math, conversions) may say so in words instead of a tuple.
SHAPE_WORDS = re.compile(r"\b(shapes?|axis|axes|elementwise|element-wise|scalar)\b", re.IGNORECASE)

#: Public objects known to lack a docstring or a shape, each with the owner asked to fix it.
#: They are strict xfails: when someone fixes one, the test fails until the entry is removed here.
KNOWN_GAPS: dict[str, str] = {}


def api_directives() -> list[tuple[str, bool]]:
    """``(module path, members shown)`` for every ``::: path`` directive of the API pages."""
    found = []
    for page in sorted(API_DIR.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            match = DIRECTIVE.match(line)
            if not match:
                continue
            options = []
            for following in lines[i + 1 :]:
                if following.strip() and not following.startswith((" ", "\t")):
                    break
                options.append(following.strip())
            found.append((match.group("path"), "members: false" not in options))
    return found


def _import(path: str):
    try:
        return importlib.import_module(path)
    except ImportError as exc:
        pytest.skip(f"{path} does not import here ({exc}); its API page is built from the sources")


def public_objects(module) -> Iterator[tuple[str, object]]:
    """The functions and classes a module documents, and the public methods/properties of those classes.

    With ``__all__`` the module documents exactly those names (mkdocstrings renders re-exports listed there);
    without it, the public names defined in the module itself (imports are documented on their own page).
    """
    exported = getattr(module, "__all__", None)
    names = list(exported) if exported is not None else [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name, None)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if exported is None and getattr(obj, "__module__", None) != module.__name__:
            continue
        qualname = f"{obj.__module__}.{obj.__qualname__}"
        yield qualname, obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if _inherits_documentation(obj, attr, member):
                    continue  # an override without its own docstring: the base class's entry is checked
                if inspect.isfunction(member):
                    yield f"{qualname}.{attr}", getattr(obj, attr)
                elif isinstance(member, property):
                    yield f"{qualname}.{attr}", member


def _inherits_documentation(cls: type, attr: str, member: object) -> bool:
    own = member.fget.__doc__ if isinstance(member, property) and member.fget else getattr(member, "__doc__", None)
    return not (own or "").strip() and any(attr in vars(base) for base in cls.__mro__[1:])


def takes_or_returns_arrays(obj: object) -> bool:
    """True when the signature names an array type or a well-known array parameter."""
    func = obj.fget if isinstance(obj, property) else obj
    if inspect.isclass(func):
        return False  # a class's shapes are documented on its methods and attributes
    try:
        signature = inspect.signature(func, eval_str=False)
    except (TypeError, ValueError):
        return False
    annotations = [
        str(p.annotation) for p in signature.parameters.values() if p.annotation is not inspect.Parameter.empty
    ]
    if signature.return_annotation is not inspect.Signature.empty:
        annotations.append(str(signature.return_annotation))
    if any(ARRAY_ANNOTATION.search(a) for a in annotations):
        return True
    return bool(ARRAY_PARAMS & set(signature.parameters))


def docstring_of(obj: object) -> str:
    """The docstring as ``help()`` shows it (inherited from a base class when an override has none)."""
    return inspect.getdoc(obj) or ""


def problems_of(obj: object) -> list[str]:
    """What is wrong with one object's documentation (empty when nothing is)."""
    doc = docstring_of(obj)
    if not doc.strip():
        return ["has no docstring"]
    if takes_or_returns_arrays(obj) and not (SHAPE.search(doc) or SHAPE_WORDS.search(doc)):
        return ["takes or returns arrays but its docstring states no shape, like (H, n), 'same shape' or 'along axis'"]
    return []


def _cases() -> list:
    cases = []
    for path, with_members in api_directives():
        cases.append(pytest.param(path, with_members, id=path))
    return cases


@pytest.mark.parametrize("path, with_members", _cases())
def test_api_page_objects_are_documented(path: str, with_members: bool) -> None:
    module = _import(path)
    assert (inspect.getdoc(module) or "").strip(), f"module {path} has no docstring"
    if not with_members:
        return
    bad = {}
    for qualname, obj in public_objects(module):
        issues = problems_of(obj)
        if issues and qualname not in KNOWN_GAPS:
            bad[qualname] = issues[0]
    assert not bad, "undocumented API objects (fix the docstrings):\n" + "\n".join(
        f"  {k}: {v}" for k, v in sorted(bad.items())
    )


@pytest.mark.parametrize("qualname", sorted(KNOWN_GAPS))
def test_known_gaps_are_still_gaps(qualname: str) -> None:
    """Each listed gap must still exist; once fixed, delete it from KNOWN_GAPS so it stays fixed."""
    module_path, _, attr_path = qualname.rpartition(".")
    obj = None
    while module_path:
        try:
            obj = importlib.import_module(module_path)
            break
        except ImportError:
            module_path, _, head = module_path.rpartition(".")
            attr_path = f"{head}.{attr_path}"
    for part in attr_path.split("."):
        obj = inspect.getattr_static(obj, part)
    obj = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    assert problems_of(obj), f"{qualname} is documented now: remove it from KNOWN_GAPS ({KNOWN_GAPS[qualname]})"


def test_api_pages_cover_the_package() -> None:
    """The API reference has a page directive for each module the documentation promises."""
    documented = {path for path, _ in api_directives()}
    expected = {
        "refreekv_edu",
        "refreekv_edu.policies",
        "refreekv_edu.halting",
        "refreekv_edu.ranking",
        "refreekv_edu.decision",
        "refreekv_edu.backend",
        "refreekv_edu.reference",
        "refreekv_edu.models",
        "refreekv_edu.generate",
        "refreekv_torch",
        "refreekv_mlx",
    }
    assert expected <= documented, f"API pages missing for: {sorted(expected - documented)}"
    for package in ("refreekv_edu.widgets", "refreekv_edu.exercises", "refreekv_edu.eval"):
        assert any(p == package or p.startswith(package + ".") for p in documented), f"no API page documents {package}"


@pytest.mark.parametrize(
    "doc, ok",
    [
        ("Args:\n    x: ``(Hq, w, D)`` queries.", True),
        ("Returns ``(n,)`` float32.", True),
        ("``(Hkv * groups, n) -> (Hkv, n)``", True),
        ("``(..., m, k) @ (..., k, n)``", True),
        ("Copy to numpy (same shape, same dtype family).", True),
        ("Numerically stable softmax along ``axis``.", True),
        ("Convert x (numpy, list, or another backend's array) to this backend.", False),
        ("Square root, elementwise.", True),
        ("Compute something from the attention.", False),
    ],
)
def test_shape_pattern(doc: str, ok: bool) -> None:
    assert bool(SHAPE.search(doc) or SHAPE_WORDS.search(doc)) is ok


def test_checker_flags_missing_docstrings_and_shapes() -> None:
    import numpy as np

    def no_doc(x: np.ndarray) -> np.ndarray:
        return x

    def no_shape(last_attn, order):
        """Compute something from attention."""

    def with_shape(last_attn, order):
        """``(H, n)`` in, ``(n,)`` out."""

    def not_arrays(name: str) -> str:
        """A name."""

    assert problems_of(no_doc) == ["has no docstring"]
    assert problems_of(no_shape) and "shape" in problems_of(no_shape)[0]
    assert problems_of(with_shape) == [] and problems_of(not_arrays) == []


def _rst_hook():
    """The griffe extension of docs/_hooks/griffe_rst.py, imported by path (it is build code, not a package)."""
    import importlib.util

    pytest.importorskip("griffe", reason="the docs extra is not installed: pip install 'refreekv_edu[docs]'")
    path = API_DIR.parent / "_hooks" / "griffe_rst.py"
    spec = importlib.util.spec_from_file_location("griffe_rst", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rst_roles_become_code_spans() -> None:
    hook = _rst_hook()
    text = "A :class:`~refreekv_edu.decision.LayerDecision`; see :func:`refreekv_edu.generate` and :meth:`Policy.decide_layer`."
    assert hook.rst_to_markdown(text) == "A `LayerDecision`; see `refreekv_edu.generate` and `Policy.decide_layer`."


def test_rst_literal_markers_and_simple_tables() -> None:
    hook = _rst_hook()
    text = "\n".join(
        [
            "Usage::",
            "",
            "    x = 1",
            "",
            "=====  ===========",
            "name   what",
            "=====  ===========",
            "a      first line",
            "       continued",
            "b      with | pipe",
            "=====  ===========",
            "",
            "after",
        ]
    )
    assert hook.rst_to_markdown(text).split("\n") == [
        "Usage:",
        "",
        "    x = 1",
        "",
        "| name | what |",
        "|---|---|",
        "| a | first line continued |",
        "| b | with \\| pipe |",
        "",
        "after",
    ]
    # an incomplete table (no closing rule) is left alone
    broken = "=====  =====\nname   what\n=====  =====\na      b"
    assert hook.rst_to_markdown(broken) == broken
