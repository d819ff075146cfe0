"""The core imports only numpy and the standard library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import refreekv_edu

CORE = Path(refreekv_edu.__file__).parent
FORBIDDEN = {"torch", "mlx", "triton", "transformers", "mlx_lm", "refreekv_torch", "refreekv_mlx"}
# Optional subpackages may import their own extras (ipywidgets, matplotlib, ...) but never a backend library.
OPTIONAL_EXTRAS = {"ipywidgets", "matplotlib", "IPython", "tqdm", "datasets", "rouge_score", "nbformat", "nbclient"}


def _top_level_imports(path: Path) -> set[str]:
    """Module-level imports only (lazy imports inside functions are allowed for optional extras)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_core_module_imports_a_backend_library():
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # anywhere in the file, even inside functions
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            for mod in mods:
                assert mod.split(".")[0] not in FORBIDDEN, f"{path.relative_to(CORE)} imports {mod}"


def test_core_modules_import_only_numpy_and_stdlib_at_top_level():
    allowed = set(sys.stdlib_module_names) | {"numpy", "refreekv_edu"}
    for path in CORE.glob("*.py"):  # the core proper; subpackages are optional extras
        extra = _top_level_imports(path) - allowed
        assert not extra, f"{path.name} imports {sorted(extra)} at module level"


def test_import_and_decide_with_backend_libraries_blocked():
    code = """
import sys
for name in ("torch", "mlx", "triton", "transformers", "mlx_lm", "ipywidgets", "matplotlib"):
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np, refreekv_edu as rk
print(rk.ReFreeKV())
q = np.random.default_rng(0).standard_normal((4, 8, 16)).astype("float32")
k = np.random.default_rng(1).standard_normal((2, 40, 16)).astype("float32")
dec = rk.ReFreeKV().decide_layer(q, k, backend="numpy")
assert dec.kept.shape[0] == 2
names = {i.name: i.available for i in rk.available_backends()}
assert names["numpy"] and not names.get("torch", False) and not names.get("mlx", False), names
from refreekv_edu.backend import auto_backend_name
assert auto_backend_name()[0] == "numpy"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ReFreeKV(preset='paper': threshold=0.01, sinks=4" in out.stdout and out.stdout.strip().endswith("ok")
