"""Shared fixture of the widget tests: one synthetic trace per test module (``test_real_trace`` overrides it)."""

from __future__ import annotations

import pytest
from fixtures.make_trace import make_trace

from refreekv_edu.decision import Trace


@pytest.fixture(scope="module")
def trace() -> Trace:
    return make_trace()
