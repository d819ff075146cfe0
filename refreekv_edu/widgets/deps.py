"""Import the optional notebook libraries (ipywidgets, matplotlib) with an error that says how to install them."""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "pip install 'refreekv_edu[notebooks]'  (or: pip install ipywidgets matplotlib)"


def require_ipywidgets() -> ModuleType:
    """Return the ``ipywidgets`` module (version 8 or newer), or raise an ImportError naming the install command."""
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(f"the refreekv_edu widgets need ipywidgets >= 8: {INSTALL_HINT}") from exc
    if int(ipywidgets.__version__.split(".")[0]) < 8:
        raise ImportError(
            f"the refreekv_edu widgets need ipywidgets >= 8, found {ipywidgets.__version__}: {INSTALL_HINT}"
        )
    try:
        import matplotlib  # noqa: F401 - the plots need it; fail here, before any widget is half built
    except ImportError as exc:
        raise ImportError(f"the refreekv_edu widgets need matplotlib: {INSTALL_HINT}") from exc
    return ipywidgets
