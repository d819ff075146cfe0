"""How long does ``rk.load_model("smollm2-135m")`` take the first time (GGUF conversion) and once cached?

Every load used to convert the bundled Q4_1 GGUF again (dequantize the weights, rebuild the tokenizer from the
metadata). Now the first load converts once and saves the result under ``$REFREEKV_CACHE/converted/``; later
loads read it. This script measures both, each load in a fresh Python process (what a new user's ``demo`` or
notebook pays), in a temporary ``REFREEKV_CACHE`` that links to the bundled GGUF (nothing is downloaded):

- torch: first load (converts and caches), then the cached load ``--repeats`` times;
- MLX (if installed): quantized (the tokenizer is cached; weights come straight from the GGUF) and
  ``dequantize=True`` (the dense weights are cached too), first and cached.

Each line gives the ``load_model`` call and, apart, the import time of the libraries (torch or MLX, and
transformers with the llama and tokenizer modules it imports lazily): the same with or without the cache, and
paid by any program using them. Usage::

    python bench/model_load.py                 # torch and MLX, 2 cached repeats
    python bench/model_load.py --backends torch --repeats 3

Timings depend on the machine and on whatever else runs on it; the header names the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

TARGET_S = 3.0

#: Run in a child process: import, then time one load_model call; print one JSON line.
CHILD = """
import json, sys, time
t0 = time.perf_counter()
import refreekv_edu as rk
backend, kwargs = sys.argv[1], json.loads(sys.argv[2])
# The libraries' import cost (paid by any use of them, cached or not): transformers imports its model and
# tokenizer modules lazily, on first use, so touch the classes a llama load needs.
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: F401
if backend == "torch":
    import torch  # noqa: F401
else:
    import mlx.core, mlx_lm.models.llama, mlx_lm.tokenizer_utils  # noqa: F401
t1 = time.perf_counter()
model, tokenizer = rk.load_model("smollm2-135m", backend=backend, **kwargs)
t2 = time.perf_counter()
print("RESULT " + json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def bundled_gguf() -> Path:
    from refreekv_edu import models

    art = models.ARTIFACTS["smollm2-135m"]
    path = models.cache_dir() / "smollm2-135m" / Path(art.member).name
    if not path.is_file():
        sys.exit(f"the bundled GGUF is not at {path}: run `refreekv fetch-model smollm2-135m` first")
    return path


def run_child(cache: Path, backend: str, kwargs: dict) -> dict:
    env = {**os.environ, "REFREEKV_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, backend, json.dumps(kwargs)], env=env, capture_output=True, text=True
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"the {backend} load failed:\n{proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["torch", "mlx"], choices=["torch", "mlx"])
    parser.add_argument("--repeats", type=int, default=2, help="cached loads per case (default 2)")
    args = parser.parse_args()

    gguf = bundled_gguf()
    cases = []
    if "torch" in args.backends:
        cases.append(("torch", {}, "torch (float32)"))
    if "mlx" in args.backends:
        if importlib.util.find_spec("mlx") and importlib.util.find_spec("mlx_lm"):
            cases += [("mlx", {}, "mlx quantized"), ("mlx", {"dequantize": True}, "mlx dequantize=True")]
        else:
            print("mlx / mlx-lm not installed: MLX cases skipped")

    print(f"machine: {machine()}")
    print(f"model: smollm2-135m ({gguf.stat().st_size / 1e6:.0f} MB Q4_1 GGUF); each load in a fresh process")
    rows = []
    with tempfile.TemporaryDirectory(prefix="refreekv-bench-") as tmp:
        cache = Path(tmp)
        (cache / "smollm2-135m").mkdir()
        (cache / "smollm2-135m" / gguf.name).symlink_to(gguf)
        for backend, kwargs, label in cases:
            first = run_child(cache, backend, kwargs)
            cached = [run_child(cache, backend, kwargs) for _ in range(args.repeats)]
            rows.append((label, first, cached))
            best = min(c["load_s"] for c in cached)
            print(
                f"{label:22s} first (converts) {first['load_s']:6.2f} s | cached "
                + ", ".join(f"{c['load_s']:.2f}" for c in cached)
                + f" s (best {best:.2f} s, {first['load_s'] / best:.0f}x faster)"
                + f" | imports before it ~{min(c['import_s'] for c in [first, *cached]):.1f} s",
                flush=True,
            )
        if len([r for r in rows if r[0].startswith("mlx")]) == 2:
            print("(the dequantize=True first load reuses the tokenizer the quantized first load cached)")
        size = sum(f.stat().st_size for f in (cache / "converted").rglob("*") if f.is_file())
        print(f"cache written: {size / 1e6:.0f} MB under converted/")
    torch_rows = [r for r in rows if r[0].startswith("torch")]
    if torch_rows:
        best = min(c["load_s"] for c in torch_rows[0][2])
        verdict = "meets" if best < TARGET_S else "MISSES"
        print(f"cached torch load {best:.2f} s {verdict} the {TARGET_S:.0f} s target")


if __name__ == "__main__":
    main()
