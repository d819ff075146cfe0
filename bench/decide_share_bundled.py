"""Decide + compaction time as a share of prefill time, on the bundled model (SmolLM2-135M, transformers).

For each prompt length and each preset (``paper`` = ``ReFreeKV()``, ``official-script``), one run does, back to
back and ``--repeats`` times:
- ``prefill``: the model's forward over the prompt into an empty cache (with the capture hooks on);
- ``decide``: ``Compressor.compact()``: the queries the policy needs, a decision per layer, the kept rows gathered.
The printed share ``decide / prefill`` is the number that matters (both timed in the same process, same
threads, same machine state); the best of the repeats is reported for each.

    python bench/decide_share_bundled.py [--lengths 512 1536] [--repeats 3] [--backend torch|numpy]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from common import machine  # noqa: E402
from refreekv_torch.hf_compress import Compressor  # noqa: E402
from transformers import DynamicCache  # noqa: E402

import refreekv_edu as rk  # noqa: E402
from refreekv_edu.eval.runner import token_counter  # noqa: E402
from refreekv_edu.eval.tasks import passkey  # noqa: E402


def prompt_of_length(tokenizer, length: int) -> list[int]:
    """Chat-formatted pass-key prompt ids (stdlib docstring prose, no network) cut to ``length`` tokens."""
    ids: list[int] = []
    target = length
    while len(ids) < length:
        text = passkey(target + 64, 0.5, seed=0, count=token_counter(tokenizer)).prompt
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        target *= 2
    return ids[-length:]


@torch.no_grad()
def measure(model, ids: list[int], policy, backend: str) -> tuple[float, float, float]:
    """One prefill and one compaction: ``(prefill_s, decide_s, kv_kept_fraction)``."""
    press = Compressor(model, policy, backend=backend, auto=False)
    with press:
        cache = DynamicCache(config=model.config)
        start = time.perf_counter()
        model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        press.compact(cache)
        decide = time.perf_counter() - start
    return prefill, decide, press.stats.kv_bytes_kept / press.stats.kv_bytes_full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1536])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="torch", help="decision backend: torch (default) or numpy")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = rk.load_model("smollm2-135m", backend="torch")
    policies = {"paper": rk.ReFreeKV(), "official-script": rk.ReFreeKV.preset("official-script")}
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: smollm2-135m (float32, {model.config._attn_implementation}); decide backend: {args.backend}")
    for name, policy in policies.items():
        print(f"  {name}: {policy!r}")
    print(f"{'L':>6} {'preset':<16} {'prefill s':>10} {'decide s':>10} {'decide/prefill':>15} {'KV kept':>8}")
    for length in args.lengths:
        ids = prompt_of_length(tokenizer, length)
        for policy in policies.values():
            measure(model, ids[: min(64, length)], policy, args.backend)  # warm-up (first-call overheads)
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in policies}
        for _ in range(args.repeats):  # interleaved, so background load hits both presets alike
            for name, policy in policies.items():
                runs[name].append(measure(model, ids, policy, args.backend))
        for name, rs in runs.items():
            prefill = min(r[0] for r in rs)
            decide = min(r[1] for r in rs)
            print(f"{length:>6} {name:<16} {prefill:>10.3f} {decide:>10.3f} {100 * decide / prefill:>14.1f}% "
                  f"{100 * rs[0][2]:>7.1f}%")
    print("Timings on a shared machine are noisy; each ratio comes from the same run.")


if __name__ == "__main__":
    main()
