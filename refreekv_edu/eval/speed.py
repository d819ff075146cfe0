"""The speed step of an evaluation: decode tokens/s with the compressed cache against the full cache, in one run.

At one long prompt (a passkey at about ``length`` tokens, e.g. 4096) the full cache and the paper preset run
**interleaved** (full, paper, full, paper, ...) with the same number of greedy decode steps (end-of-sequence
ignored where the backend allows it), so background load on a shared machine hits both alike. For each method
the run with the fastest decode is kept; the result is ``decode tok/s (paper) / decode tok/s (full)``: above 1
means the shorter cache decodes faster.

Memory, per run (say what is measured, since "peak memory" means several things on a CPU):

- ``rss_peak_delta_mb``: the highest resident set size (RSS, ``/proc/self/statm``, sampled every 5 ms by a thread)
  during the ``generate`` call, minus the RSS just before it. It covers everything the call allocates: the
  prefill's attention activations (the same for both methods, and usually the peak), the KV cache, the logits.
  Memory the allocator kept from an earlier run is reused, not counted again, so this is a lower bound.
- ``maxrss_mb``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the call: the process's peak RSS so far
  (model weights included; it only grows, so it shows the heaviest run up to then).
- ``kv_bytes_full`` / ``kv_bytes_kept``: the prompt's K/V bytes before and after compaction, computed from the
  cache's tensors: the memory a compressed cache actually saves during decoding.

numpy and the standard library only; the model is whatever :func:`refreekv_edu.load_model` returned.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SPEED_METHODS = ("full", "paper")


def _rss_bytes() -> int | None:
    """Resident set size of this process from ``/proc/self/statm`` (``None`` where there is no ``/proc``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class RssSampler:
    """A thread that records the highest RSS while the ``with`` block runs; ``delta_mb`` is that peak minus the RSS
    at entry (``None`` without ``/proc``)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start = self.peak = None
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes()
            if rss is not None and (self.peak is None or rss > self.peak):
                self.peak = rss

    def __enter__(self) -> RssSampler:
        self.start = self.peak = _rss_bytes()
        if self.start is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.start is not None:
            self._stop.set()
            self._thread.join()
            rss = _rss_bytes()
            if rss is not None and rss > self.peak:
                self.peak = rss

    @property
    def delta_mb(self) -> float | None:
        return None if self.start is None else (self.peak - self.start) / 2**20


def _generate_fixed(generate_fn: Callable[..., Any], model: Any, tokenizer: Any, prompt: Any, policy: Any, steps: int) -> Any:
    """``generate`` for exactly ``steps`` tokens where the backend accepts ``stop_at_eos=False``."""
    try:
        return generate_fn(model, tokenizer, prompt, policy=policy, max_new_tokens=steps, stop_at_eos=False)
    except TypeError as exc:
        if "stop_at_eos" not in str(exc):
            raise
        return generate_fn(model, tokenizer, prompt, policy=policy, max_new_tokens=steps)


def measure(generate_fn: Callable[..., Any], model: Any, tokenizer: Any, prompt: Any, policy: Any, steps: int) -> dict[str, Any]:
    """One timed generation: stage seconds, decode tokens/s, KV bytes and memory (see the module docstring)."""
    start = time.perf_counter()
    with RssSampler() as mem:
        out = _generate_fixed(generate_fn, model, tokenizer, prompt, policy, steps)
    total = time.perf_counter() - start
    s = out.stats
    new = int(s.get("new_tokens", len(out.tokens)))
    decode_s = float(s.get("decode_s", 0.0))
    trace = out.trace
    return {
        "prompt_tokens": int(s.get("prompt_tokens", 0)),
        "new_tokens": new,
        "prefill_s": float(s.get("prefill_s", 0.0)),
        "decide_s": float(s.get("decide_s", 0.0)),
        "decode_s": decode_s,
        "total_s": total,
        "decode_tok_s": new / decode_s if decode_s > 0 else None,
        "kv_bytes_full": int(s.get("kv_bytes_full") or 0),
        "kv_bytes_kept": int(s.get("kv_bytes_kept", s.get("kv_bytes_full")) or 0),
        "mean_budget": trace.mean_budget if trace.layers else 1.0,
        "rss_peak_delta_mb": mem.delta_mb,
        "maxrss_mb": _maxrss_mb(),
        "tokens": [int(t) for t in out.tokens],
    }


def summarize_speed(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per method the run with the fastest decode, and the paper/full ratios (decode tok/s; prefill and total time).

    Example:
        >>> r = summarize_speed({"full": [{"decode_tok_s": 10.0, "prefill_s": 2.0, "total_s": 5.0}],
        ...                      "paper": [{"decode_tok_s": 12.0, "prefill_s": 2.0, "total_s": 4.0}]})
        >>> r["decode_speed_ratio"]
        1.2
    """
    best = {m: max(rs, key=lambda r: r.get("decode_tok_s") or 0.0) for m, rs in runs.items() if rs}
    out: dict[str, Any] = {"best": best}
    full, paper = best.get("full"), best.get("paper")
    if full and paper and full.get("decode_tok_s") and paper.get("decode_tok_s"):
        out["decode_speed_ratio"] = paper["decode_tok_s"] / full["decode_tok_s"]
        out["total_time_ratio"] = paper["total_s"] / full["total_s"] if full.get("total_s") else None
        out["same_tokens"] = paper.get("tokens") == full.get("tokens") if "tokens" in full else None
    return out


def speed_check(model: Any, tokenizer: Any, generate_fn: Callable[..., Any], path: str | Path, length: int = 4096,
                new_tokens: int = 32, repeats: int = 2, seed: int = 0, haystack: str = "prose", model_name: str = "",
                progress: bool = True) -> dict[str, Any]:
    """Run (or reuse) the speed step and write ``path`` (``<out>/speed.json``).

    A file written with the same settings (length, decode steps, repeats, model, prompt) is reused, so a resumed
    evaluation does not measure again; delete it to measure anew.
    """
    from ..policies import FullCache, ReFreeKV
    from .config import token_counter
    from .records import prompt_digest
    from .tasks import approx_tokens, passkey

    count = token_counter(tokenizer) if tokenizer is not None else approx_tokens
    sample = passkey(int(length), 0.5, seed, index=0, count=count, source=haystack)
    settings = {"length": int(length), "new_tokens": int(new_tokens), "repeats": int(repeats), "model": model_name,
                "prompt": prompt_digest(sample), "task": "passkey", "depth": 0.5}
    path = Path(path)
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("settings") == settings:
                return old
        except (json.JSONDecodeError, OSError):
            pass
    if progress:
        print(f"speed step: passkey at ~{length} tokens, full vs paper, {new_tokens} decode steps, {repeats} runs each",
              file=sys.stderr, flush=True)
    _generate_fixed(generate_fn, model, tokenizer, sample.prompt, FullCache(), 2)  # warm-up (allocator, kernels)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in SPEED_METHODS}
    for _ in range(int(repeats)):
        for name, policy in (("full", FullCache()), ("paper", ReFreeKV())):
            runs[name].append(measure(generate_fn, model, tokenizer, sample.prompt, policy, int(new_tokens)))
    result = {"settings": settings, "runs": runs, **summarize_speed(runs)}
    torch = sys.modules.get("torch")  # loaded by the model's backend when it is torch; the core never imports it
    if torch is not None:
        result["torch_threads"] = torch.get_num_threads()
    if hasattr(os, "getloadavg"):
        result["load_average"] = round(os.getloadavg()[0], 2)
    path.write_text(json.dumps(result, indent=1))
    return result
