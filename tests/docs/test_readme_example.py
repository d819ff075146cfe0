"""The README's first Python example runs as written on the bundled model (issue 19: on every transformers the
package supports; the kvpress CI venv runs it on 5.2, the main one on the newest).

The block is read from ``README.md`` itself, so an edit of the README is what gets tested; its printed values are
checked against what the same calls return here, so a run that prints nonsense fails.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the README's example loads the bundled model with the torch backend")

README = Path(__file__).resolve().parents[2] / "README.md"


def first_python_block(text: str) -> str:
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, "README.md has no ```python block"
    return match.group(1)


def test_the_readme_example_runs_and_prunes():
    code = first_python_block(README.read_text(encoding="utf-8"))
    assert "rk.generate(" in code and "rk.ReFreeKV()" in code, "the first block is no longer the ReFreeKV example"
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
    out = namespace["out"]
    kept = out.stats["kv_bytes_kept"] / out.stats["kv_bytes_full"]
    assert 0 < kept < 1, f"the README example's cache was not pruned (kept {kept:.3f})"
    assert len(out.trace.budgets) == 30, "one decision per layer of the bundled model"
    assert out.text and out.stats["new_tokens"] >= 1
    dec = namespace["dec"]
    assert f"{dec.budget:.2f}" in printed.getvalue()
    assert str(kept) in printed.getvalue()
