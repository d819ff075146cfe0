"""The examples in the widgets' docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

pytest.importorskip("ipywidgets", reason="the widgets need the notebooks extra: pip install 'refreekv_edu[notebooks]'")
pytest.importorskip("matplotlib", reason="the widgets need matplotlib")


@pytest.mark.parametrize("module", ["explorer", "step_through", "playground"])
def test_docstring_examples(module):
    mod = importlib.import_module(f"refreekv_edu.widgets.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
