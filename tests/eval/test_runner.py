"""The runner: JSONL records, matched budgets, resuming; then the report built from the records.

Two models: a numpy stand-in whose decisions are made by the real policies on random queries/keys
(always runs), and a tiny random transformers Llama through the real torch backend (skips without torch).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import refreekv_edu as rk
from refreekv_edu.eval import methods as meth
from refreekv_edu.eval import report
from refreekv_edu.eval.runner import EvalConfig, Runner, needle_kept, read_records


class FakeModel:
    """A numpy stand-in for a model: two layers, Hq=4, Hkv=2, D=8, one "token" per word."""

    def __init__(self) -> None:
        self.calls = 0


def fake_generate(model, tokenizer, prompt, policy, max_new_tokens):
    model.calls += 1
    words = prompt.split() if isinstance(prompt, str) else [str(t) for t in prompt]
    seed = int(hashlib.sha1(" ".join(words).encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    layers = []
    if policy.compresses:
        for i in range(2):
            q = rng.normal(size=(4, 8, 8)).astype(np.float32)
            k = rng.normal(size=(2, len(words), 8)).astype(np.float32)
            layers.append(policy.decide_layer(q, k, layer=i))
    trace = rk.Trace(layers=layers, tokens=[w + " " for w in words])
    # The answer: the first five-digit number of the prompt, then filler; compressed runs lose the
    # last token when they keep under half the rows (so fidelity metrics have something to see).
    number = next((w.strip(".?") for w in words if w.strip(".?").isdigit() and len(w.strip(".?")) == 5), "none")
    tokens = [seed % 97, 5, 6, 7][:max_new_tokens]
    budget = trace.mean_budget
    if budget < 0.5:
        tokens = tokens[:-1] + [99]
    logits = np.arange(10, dtype=np.float32) * (1.0 if budget == 1.0 else 1.1)
    full = 2 * 2 * len(words) * 8 * 4 * 2
    stats = {"prompt_tokens": len(words), "new_tokens": len(tokens), "kv_bytes_full": full, "kv_bytes_kept": int(full * budget),
             "prefill_s": 0.01, "decide_s": 0.001, "decode_s": 0.01, "kept_per_layer": [d.n_kept for d in layers]}
    return rk.GenerationResult(text=f"The number is {number}.", tokens=tokens, trace=trace, stats=stats, first_logits=logits)


def make_runner(tmp_path, model=None, methods=("full", "refreekv", "h2o@matched", "position@0.5"), **kw):
    kw.setdefault("haystack", "procedural")
    config = EvalConfig(tasks=["passkey", "short"], lengths=[96], methods=list(methods), samples=2, out_dir=str(tmp_path),
                        progress=False, **kw)
    return Runner(config, model=model or FakeModel(), tokenizer=None, generate_fn=fake_generate)


def test_records_scores_fidelity_and_matched_budget(tmp_path):
    runner = make_runner(tmp_path)
    records = runner.run()
    lines = read_records(tmp_path / "samples.jsonl")
    assert len(records) == len(lines) == 4 * 4  # (2 passkey + 2 short) x 4 methods
    assert runner.model.calls == 16
    by = {(r["sample_id"], r["method"]): r for r in lines}
    pk = "passkey-L96-d0.10-s0-i0"
    full, refree, matched, fixed = (by[(pk, m)] for m in ("full", "refreekv", "h2o@matched", "position@0.5"))
    assert full["score"] == 1.0 and full["token_agreement"] == 1.0 and full["first_token_kl"] == 0.0
    assert full["kv_kept"] == 1.0 and full["layer_budgets"] == [] and full["mean_budget"] == 1.0
    # matched: the fixed budget is exactly ReFreeKV's average budget on this sample
    assert matched["budget_target"] == pytest.approx(refree["mean_budget"])
    assert matched["policy"].startswith("FixedBudget(budget=")
    assert fixed["budget_target"] == 0.5 and fixed["mean_budget"] == pytest.approx(0.5, abs=1 / 80)
    assert len(refree["layer_budgets"]) == 2 and refree["mean_budget"] == pytest.approx(np.mean(refree["layer_budgets"]), abs=1e-4)
    # KL: full logits are arange(10), compressed ones 1.1 * arange(10): compare with the definition
    p = np.exp(np.arange(10.0)) / np.exp(np.arange(10.0)).sum()
    q = np.exp(1.1 * np.arange(10.0)) / np.exp(1.1 * np.arange(10.0)).sum()
    assert refree["first_token_kl"] == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-5)  # float32 logits
    # needle bookkeeping: full keeps it everywhere
    assert full["needle_kept"] == 1.0 and 0.0 <= refree["needle_kept"] <= 1.0
    assert (tmp_path / "refs" / f"{pk}.npz").exists()


def test_resume_skips_done_pairs_and_reruns_missing(tmp_path):
    runner = make_runner(tmp_path)
    first = runner.run()
    again = make_runner(tmp_path)
    assert again.run() == first and again.model.calls == 0
    # Drop every refreekv record and the refs: ReFreeKV, and the full reference (not re-recorded), run again.
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["method"] != "refreekv"]
    (tmp_path / "samples.jsonl").write_text("\n".join(kept) + "\n" + '{"torn": ')  # plus a torn last line
    for f in (tmp_path / "refs").iterdir():
        f.unlink()
    third = make_runner(tmp_path)
    records = third.run()
    assert third.model.calls == 4 + 4  # 4 refreekv runs + 4 full runs to rebuild the references
    assert sum(r["method"] == "full" for r in read_records(tmp_path / "samples.jsonl")) == 4
    old = {(r["sample_id"], r["method"]): r["score"] for r in first}
    assert {(r["sample_id"], r["method"]): r["score"] for r in records} == old


def test_resume_refuses_a_different_prompt(tmp_path):
    make_runner(tmp_path).run()
    with pytest.raises(ValueError, match="different prompt"):
        make_runner(tmp_path, haystack="docs").run()


def test_methods_parsing():
    names = [s.name for s in meth.parse_methods(["snapkv@matched", "h2o@0.2"])]
    assert names == ["full", "refreekv", "snapkv@matched", "h2o@0.2"]  # full first, refreekv added for matched
    assert [s.name for s in meth.parse_methods("default")] == list(meth.DEFAULT_METHODS)
    assert len(meth.parse_methods(["all"])) == len(meth.ALL_METHODS)
    assert meth.parse_method("refreekv@0.1").threshold == 0.1
    pol = meth.parse_method("position@0.8").policy(window=4)
    assert isinstance(pol, rk.FixedBudget) and pol.budget == 0.8 and pol.ranking == "position" and pol.window == 4
    with pytest.raises(ValueError, match="unknown method"):
        meth.parse_method("h2o-50")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        meth.parse_method("h2o@1.5")
    with pytest.raises(ValueError, match="run 'refreekv' first"):
        meth.parse_method("h2o@matched").policy()


def test_bad_config_is_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        make_runner(tmp_path / "a").config.__class__(tasks=["nope"]).validate()
    with pytest.raises(ValueError, match="lengths"):
        EvalConfig(lengths=[10]).validate()


def test_needle_kept_counts_whole_needles_per_layer_and_head():
    tokens = ["The", " key", " is", " 123", "45", ".", " 12345", " again"]
    assert rk.Trace(tokens=tokens).positions_of("12345") == [3, 4, 6]
    kept = np.array([[0, 3, 4, 6, 7], [0, 1, 2, 6, 7]])
    dec = rk.LayerDecision(kept=kept, order=np.zeros((2, 0), np.int64), scores=np.zeros((2, 0), np.float32),
                           last_attn=np.zeros((2, 0), np.float32), curve=np.zeros(0, np.float32), n_evicted=3, prompt_len=8,
                           window=2, threshold=0.05, policy="refreekv", ranking="h2o", gqa="group")
    assert needle_kept(rk.Trace(layers=[dec], tokens=tokens), "12345") == 0.5  # head 0 keeps all, head 1 misses 3 and 4
    assert needle_kept(rk.Trace(layers=[dec], tokens=tokens), "99999") is None


def _record(sid, method, score, kv, task="passkey", length=96):
    return {"sample_id": sid, "task": task, "length": length, "method": method, "score": score, "token_agreement": 1.0,
            "exact_match_full": 1.0, "first_token_kl": 0.0, "kv_kept": kv, "mean_budget": kv, "needle_kept": None,
            "prefill_s": 1.0, "decide_s": 0.1, "decode_s": 2.0, "prompt_tokens": 100, "layer_budgets": [kv, kv], "wall_s": 3.0}


def test_summary_by_hand():
    recs = [_record("a", "full", 1.0, 1.0), _record("b", "full", 0.0, 1.0),
            _record("a", "refreekv", 1.0, 0.2), _record("b", "refreekv", 0.0, 0.4),
            _record("a", "h2o@matched", 0.0, 0.2), _record("b", "h2o@matched", 1.0, 0.4)]
    rows = {r.method: r for r in report.summarize(recs)}
    assert list(rows) == ["full", "refreekv", "h2o@matched"]
    assert rows["refreekv"].keeps_full == 1.0 and rows["refreekv"].kv_kept == pytest.approx(0.3)
    assert rows["h2o@matched"].keeps_full == 0.5  # loses sample a, gains sample b (that counts as keeping)
    assert rows["h2o@matched"].score_mean == 0.5 and rows["h2o@matched"].score_worst == 0.0
    table = report.markdown_table(report.summarize(recs))
    assert table.count("\n") == 1 + 3 and "| passkey | 100 | refreekv | 2 | 0.500 | 0.000 | 100% |" in table
    text = " ".join(report.findings(report.summarize(recs)))
    assert "every sample in 1 of 1 task/length groups" in text and "30.0% of the KV bytes" in text


def test_results_md_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    records = make_runner(tmp_path / "run").run()
    info = {"config": {"model": "fake", "backend": "numpy"}, "argv": ["/x/bin/refreekv-edu", "eval", "--samples", "2"],
            "environment": report.environment()}
    path = report.write_results_md(records, info, tmp_path / "docs" / "results.md")
    text = path.read_text()
    assert "refreekv-edu eval --samples 2" in text and "| passkey |" in text and "logical CPUs" in text
    for name in ("score_vs_budget", "budget_distribution", "layer_profile"):
        png = tmp_path / "docs" / "assets" / "results" / f"{name}.png"
        assert png.stat().st_size > 1000 and f"(assets/results/{name}.png)" in text


# ---------------------------------------------------------------------------------------------- real torch path
def _byte_tokenizer():
    """A character-level tokenizer (256 byte symbols, no merges): offline, no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core)


def test_runner_on_tiny_random_llama(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    try:
        rk.get_backend("torch")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"torch backend not usable: {exc}")
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = _byte_tokenizer()
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    cfg = EvalConfig(tasks=["passkey", "continuation"], lengths=[400], samples=1, out_dir=str(tmp_path),
                     methods=["full", "refreekv", "snapkv@matched", "h2o@0.5"], max_new_tokens=4, haystack="procedural",
                     progress=False)
    runner = Runner(cfg, model=model, tokenizer=tok)
    records = runner.run()
    assert len(records) == 2 * 4
    by = {(r["task"], r["method"]): r for r in records}
    for task in ("passkey", "continuation"):
        full, fixed = by[(task, "full")], by[(task, "h2o@0.5")]
        assert full["token_agreement"] == 1.0 and full["first_token_kl"] == pytest.approx(0.0, abs=1e-6)
        assert full["kv_kept"] == 1.0 and 300 <= full["prompt_tokens"] <= 400
        assert fixed["kv_kept"] == pytest.approx(fixed["mean_budget"], abs=0.02) and fixed["kv_kept"] < 0.6
        assert by[(task, "snapkv@matched")]["budget_target"] == pytest.approx(by[(task, "refreekv")]["mean_budget"])
    table = report.markdown_table(report.summarize(records))
    assert "snapkv@matched" in table
    calls = []
    again = Runner(cfg, model=model, tokenizer=tok, generate_fn=lambda *a, **k: calls.append(1))
    assert len(again.run()) == 8 and not calls  # resumed: nothing to do


def test_cli_report_only_rebuilds_from_records(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import argparse

    from refreekv_edu.eval.cli import add_eval_arguments, run_eval_from_args

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    out = tmp_path / "run"
    args = parser.parse_args(["--out", str(out), "--report-only"])
    with pytest.raises(ValueError, match="no records"):
        run_eval_from_args(args)
    make_runner(out).run()
    args = parser.parse_args(["--out", str(out), "--report-only", "--results-md", str(tmp_path / "results.md")])
    assert run_eval_from_args(args, ["refreekv-edu", "eval", "--report-only"]) == 0
    printed = capsys.readouterr().out
    assert "| short |" in printed and (out / "summary.md").exists() and (tmp_path / "results.md").exists()
    assert (out / "plots" / "layer_profile.png").exists()
    assert parser.parse_args(["--tasks", "passkey,short", "gsm8k"]).tasks == ["passkey,short", "gsm8k"]
