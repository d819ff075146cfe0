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
from refreekv_edu.eval import findings_text, plots, report, summary
from refreekv_edu.eval import methods as meth
from refreekv_edu.eval.config import EvalConfig
from refreekv_edu.eval.records import read_records
from refreekv_edu.eval.runner import Runner, needle_kept


class FakeModel:
    """A numpy stand-in for a model: four layers (the paper keeps 0 and 1 whole), Hq=4, Hkv=2, D=8, one "token" per word."""

    def __init__(self) -> None:
        self.calls = 0


def fake_generate(model, tokenizer, prompt, policy, max_new_tokens):
    model.calls += 1
    words = prompt.split() if isinstance(prompt, str) else [str(t) for t in prompt]
    seed = int(hashlib.sha1(" ".join(words).encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    layers = []
    if policy.compresses:
        for i in range(4):
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


def make_runner(tmp_path, model=None, methods=("full", "paper", "h2o@matched", "recency@0.5"), **kw):
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
    full, refree, matched, fixed = (by[(pk, m)] for m in ("full", "paper", "h2o@matched", "recency@0.5"))
    assert full["score"] == 1.0 and full["token_agreement"] == 1.0 and full["first_token_kl"] == 0.0
    assert full["kv_kept"] == 1.0 and full["layer_budgets"] == [] and full["mean_budget"] == 1.0
    # the paper preset: layers 0 and 1 whole, the others pruned; its repr names the preset
    assert refree["full_layers"] == [0, 1] and refree["layer_budgets"][:2] == [1.0, 1.0]
    assert refree["policy"].startswith("ReFreeKV(preset='paper'") and refree["threshold"] == 0.01
    assert len(refree["layer_budgets"]) == 4 and refree["mean_budget"] == pytest.approx(np.mean(refree["layer_budgets"]), abs=1e-4)
    # matched: layers 0-1 whole plus b in layers 2-3, so that the mean over the 4 layers is the paper's mean
    pruned_mean = np.mean(refree["layer_budgets"][2:])
    assert matched["budget_target"] == pytest.approx(pruned_mean, abs=1e-4)
    assert matched["budget_target"] == pytest.approx((4 * refree["mean_budget"] - 2) / 2, abs=1e-4)
    assert matched["mean_budget"] == pytest.approx(refree["mean_budget"], abs=2 / 96)  # ceil of b * L rows per layer
    assert matched["policy"].startswith("FixedBudget(budget=") and "sinks=4" in matched["policy"]
    assert matched["full_layers"] == [0, 1] and matched["ranking"] == "h2o"
    # recency@0.5: 50% of the rows in layers 2-3, layers 0-1 whole: mean (1 + 1 + 0.5 + 0.5) / 4
    assert fixed["budget_target"] == 0.5 and fixed["mean_budget"] == pytest.approx(0.75, abs=1 / 96)
    assert fixed["layer_budgets"][2] == pytest.approx(0.5, abs=1 / 96) and "window=0" in fixed["policy"]
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
    # Drop every paper record and the refs: the paper preset, and the full reference (not re-recorded), run again.
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["method"] != "paper"]
    (tmp_path / "samples.jsonl").write_text("\n".join(kept) + "\n" + '{"torn": ')  # plus a torn last line
    for f in (tmp_path / "refs").iterdir():
        f.unlink()
    third = make_runner(tmp_path)
    records = third.run()
    assert third.model.calls == 4 + 4  # 4 paper runs + 4 full runs to rebuild the references
    assert sum(r["method"] == "full" for r in read_records(tmp_path / "samples.jsonl")) == 4
    old = {(r["sample_id"], r["method"]): r["score"] for r in first}
    assert {(r["sample_id"], r["method"]): r["score"] for r in records} == old


def test_resume_refuses_a_different_prompt(tmp_path):
    make_runner(tmp_path).run()
    with pytest.raises(ValueError, match="different prompt"):
        make_runner(tmp_path, haystack="docs").run()


def test_methods_parsing():
    names = [s.name for s in meth.parse_methods(["snapkv@matched", "h2o@0.2"])]
    assert names == ["full", "paper", "snapkv@matched", "h2o@0.2"]  # full first, paper added for matched
    assert [s.name for s in meth.parse_methods("default")] == list(meth.DEFAULT_METHODS)
    assert len(meth.parse_methods(["all"])) == len(meth.ALL_METHODS)
    assert {"sinks-in-metric", "h2o-ranking"} <= set(meth.ALL_METHODS)
    # presets by name, with their own fields; a threshold override; the old name is an alias of the paper preset
    for name in rk.policies.PRESETS:
        pol = meth.parse_method(name).policy()
        assert pol == rk.ReFreeKV.preset(name) and pol.preset_name == name
    assert meth.parse_method("paper@0.02").policy() == rk.ReFreeKV(threshold=0.02)
    assert meth.parse_method("official-script@0.1").policy().window == 8
    assert meth.parse_method("refreekv").name == "paper" and meth.parse_method("refreekv@0.1").name == "paper@0.1"
    assert meth.parse_method("paper").policy(gqa="expand").gqa == "expand"
    pol = meth.parse_method("recency@0.8").policy(window=4)
    assert pol == rk.FixedBudget(budget=0.8, ranking="recency", window=0, sinks=4, full_layers=(0, 1))
    pol = meth.parse_method("snapkv@0.3").policy(window=4)
    assert (pol.ranking, pol.window, pol.sinks, pol.full_layers, pol.budget) == ("snapkv", 4, 4, (0, 1), 0.3)
    assert meth.parse_method("h2o@matched").policy(matched_budget=0.4).budget == 0.4
    assert meth.matched_budget(0.6, 30, 2) == pytest.approx((18 - 2) / 28)
    assert meth.matched_budget(0.05, 30, 2) == 1e-3 and meth.matched_budget(0.9, 2, 2) == 1.0
    with pytest.raises(ValueError, match="unknown method"):
        meth.parse_method("h2o-50")
    with pytest.raises(ValueError, match="'position' ranking is gone"):
        meth.parse_method("position@0.5")
    with pytest.raises(ValueError, match="unknown method 'papr'"):
        meth.parse_method("papr")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        meth.parse_method("h2o@1.5")
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\)"):
        meth.parse_method("paper@1.5")
    with pytest.raises(ValueError, match="run 'paper' first"):
        meth.parse_method("h2o@matched").policy()
    with pytest.raises(ValueError, match="no methods"):
        meth.parse_methods([])


def test_bad_config_is_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        make_runner(tmp_path / "a").config.__class__(tasks=["nope"]).validate()
    with pytest.raises(ValueError, match="lengths"):
        EvalConfig(lengths=[10]).validate()
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        EvalConfig(window=0).validate()
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        EvalConfig(max_new_tokens=0).validate()
    with pytest.raises(ValueError, match="gqa must be"):
        EvalConfig(gqa="both").validate()
    with pytest.raises(ValueError, match="'position' ranking is gone"):
        EvalConfig(methods=["full", "position@0.5"]).validate()
    with pytest.raises(ValueError, match="samples must be"):
        EvalConfig(samples=0).validate()


def test_cli_validates_before_loading_the_model(monkeypatch, capsys):
    """Bad --methods/--window/--max-new-tokens fail with a clear message before any model is loaded."""
    from refreekv_edu import models
    from refreekv_edu.cli import main

    def no_load(*a, **k):
        raise AssertionError("the model must not be loaded for a bad argument")

    monkeypatch.setattr(models, "load_model", no_load)
    for argv, message in ((["--methods", "full", "position@0.5"], "'position' ranking is gone"),
                          (["--methods", "paper@2"], "threshold must lie in"),
                          (["--window", "0"], "window must be an int >= 1"),
                          (["--max-new-tokens", "0"], "max_new_tokens must be an int >= 1")):
        assert main(["eval", *argv, "--out", "/nonexistent/never-written"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("refreekv-edu eval: error:")


def test_needle_kept_counts_whole_needles_per_layer_and_head():
    tokens = ["The", " key", " is", " 123", "45", ".", " 12345", " again"]
    assert rk.Trace(tokens=tokens).positions_of("12345") == [3, 4, 6]
    kept = np.array([[0, 3, 4, 6, 7], [0, 1, 2, 6, 7]])
    dec = rk.LayerDecision(kept=kept, order=np.zeros((2, 0), np.int64), scores=np.zeros((2, 0), np.float32),
                           last_attn=np.zeros((2, 0), np.float32), curve=np.zeros(0, np.float32), n_evicted=3, prompt_len=8,
                           window=2, threshold=0.05, policy="refreekv", ranking="h2o", gqa="group")
    assert needle_kept(rk.Trace(layers=[dec], tokens=tokens), "12345") == 0.5  # head 0 keeps all, head 1 misses 3 and 4
    assert needle_kept(rk.Trace(layers=[dec], tokens=tokens), "99999") is None
    full = rk.LayerDecision(kept=np.arange(8)[None].repeat(2, 0), order=np.zeros((2, 0), np.int64),
                            scores=np.zeros((2, 0), np.float32), last_attn=np.zeros((2, 0), np.float32),
                            curve=np.zeros(0, np.float32), n_evicted=0, prompt_len=8, window=0, threshold=0.01,
                            policy="refreekv", ranking="recency", gqa="group", full_layer=True)
    assert needle_kept(rk.Trace(layers=[full, dec], tokens=tokens), "12345") == 0.5  # full layers do not count
    assert needle_kept(rk.Trace(layers=[full], tokens=tokens), "12345") == 1.0


def _record(sid, method, score, kv, task="passkey", length=96):
    return {"sample_id": sid, "task": task, "length": length, "method": method, "score": score, "token_agreement": 1.0,
            "exact_match_full": 1.0, "first_token_kl": 0.0, "kv_kept": kv, "mean_budget": kv, "needle_kept": None,
            "prefill_s": 1.0, "decide_s": 0.1, "decode_s": 2.0, "prompt_tokens": 100, "layer_budgets": [kv, kv], "wall_s": 3.0}


def test_summary_by_hand():
    recs = [_record("a", "full", 1.0, 1.0), _record("b", "full", 0.0, 1.0),
            _record("a", "paper", 1.0, 0.2), _record("b", "paper", 0.0, 0.4),
            _record("a", "h2o@matched", 0.0, 0.2), _record("b", "h2o@matched", 1.0, 0.4)]
    rows = {r.method: r for r in summary.summarize(recs)}
    assert list(rows) == ["full", "paper", "h2o@matched"]
    assert rows["paper"].keeps_full == 1.0 and rows["paper"].kv_kept == pytest.approx(0.3)
    assert rows["h2o@matched"].keeps_full == 0.5  # loses sample a, gains sample b (that counts as keeping)
    assert rows["h2o@matched"].score_mean == 0.5 and rows["h2o@matched"].score_worst == 0.0
    table = summary.markdown_table(summary.summarize(recs))
    assert table.count("\n") == 1 + 3 and "| passkey | 100 | paper | 2 | 0.50 [0.00, 1.00] | 0.00 | 100% [100, 100] |" in table
    # 95% bootstrap intervals over the two samples: scores 1 and 0 -> the mean's interval spans 0..1
    assert rows["paper"].intervals["score_mean"] == (0.0, 1.0) and rows["paper"].intervals["keeps_full"] == (1.0, 1.0)
    assert rows["h2o@matched"].intervals["keeps_full"] == (0.0, 1.0)
    assert "| 100% [100, 100] | 1.00 [1.00, 1.00] | 0.000 [0.000, 0.000] | 30.0% [20.0, 40.0] | - |" in table.splitlines()[3]
    assert set(rows["paper"].intervals) >= {"score_mean", "keeps_full", "exact_match_full", "token_agreement", "first_token_kl",
                                            "kv_kept", "mean_budget", "prefill_s", "decide_s", "decode_s"}
    assert "| passkey | 100 | paper | 2 | 1.00 [1.00, 1.00] | 0.100 [0.100, 0.100] | 2.00 [2.00, 2.00] |" in summary.timing_table(
        summary.summarize(recs))
    assert summary.bootstrap_interval([0.2, 0.2]) == pytest.approx((0.2, 0.2))
    lo, hi = summary.bootstrap_interval(np.r_[np.zeros(10), np.ones(10)])
    assert 0.25 <= lo <= 0.35 and 0.65 <= hi <= 0.75  # mean 0.5, standard error ~0.11
    assert all(np.isnan(summary.bootstrap_interval([])))
    text = " ".join(findings_text.findings(summary.summarize(recs)))
    assert "held in 1 of 1 task/length groups (passkey @96)" in text and "keeping 30.0% of the KV bytes" in text


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
    config = LlamaConfig(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    cfg = EvalConfig(tasks=["passkey", "continuation"], lengths=[400], samples=1, out_dir=str(tmp_path),
                     methods=["full", "paper", "snapkv@matched", "h2o@0.5"], max_new_tokens=4, haystack="procedural",
                     progress=False)
    runner = Runner(cfg, model=model, tokenizer=tok)
    records = runner.run()
    assert len(records) == 2 * 4
    by = {(r["task"], r["method"]): r for r in records}
    for task in ("passkey", "continuation"):
        full, fixed = by[(task, "full")], by[(task, "h2o@0.5")]
        assert full["token_agreement"] == 1.0 and full["first_token_kl"] == pytest.approx(0.0, abs=1e-6)
        assert full["kv_kept"] == 1.0 and 300 <= full["prompt_tokens"] <= 400
        # h2o@0.5: layers 0-1 whole, 50% in layers 2-3 -> 75% of the rows and of the bytes
        assert fixed["kv_kept"] == pytest.approx(fixed["mean_budget"], abs=0.02)
        assert fixed["mean_budget"] == pytest.approx(0.75, abs=0.01)
        paper, matched = by[(task, "paper")], by[(task, "snapkv@matched")]
        assert paper["full_layers"] == [0, 1] and matched["mean_budget"] == pytest.approx(paper["mean_budget"], abs=0.01)
    table = summary.markdown_table(summary.summarize(records))
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


def test_threshold_sweep_methods_and_plot(tmp_path):
    names = [s.name for s in meth.parse_methods(["sweep"])]
    assert names[0] == "full" and len(names) == 1 + 4 * 5
    assert "paper" in names and "paper@0.01" not in names  # the preset's own threshold keeps the bare name
    assert "official-script@0.001" in names and "official-script@0.1" in names and "paper@0.1" in names
    assert "official-script" not in names  # its own T = 0.05 is not one of the sweep thresholds
    assert meth.parse_method("paper@0.01").name == "paper" and meth.parse_method("paper@0.01").threshold is None
    records = make_runner(tmp_path / "run", methods=("full", "paper@0.001", "paper", "paper@0.1", "official-script")).run()
    points = plots.sweep_points(records)
    assert list(points) == ["paper"]  # official-script ran at one threshold only: no curve
    ts, budgets, _ = zip(*points["paper"])
    assert ts == (0.001, 0.01, 0.1)
    assert budgets[0] >= budgets[1] >= budgets[2]  # a larger threshold never keeps more
    by_t = {t: [r["mean_budget"] for r in records if r["method"] == m] for t, m in
            ((0.001, "paper@0.001"), (0.01, "paper"), (0.1, "paper@0.1"))}
    assert budgets == tuple(pytest.approx(np.mean(by_t[t])) for t in ts)
    pytest.importorskip("matplotlib")
    assert plots.plot_threshold_sweep(records, tmp_path / "s.png").stat().st_size > 1000
    assert plots.plot_threshold_sweep([r for r in records if r["method"] != "paper@0.1" and r["method"] != "paper@0.001"],
                                       tmp_path / "t.png") is None


def test_oracle_budget_is_the_smallest_fixed_budget_that_reproduces_the_full_cache(tmp_path):
    """The stand-in changes its output only when its mean budget drops under 0.5; with layers 0 and 1 of 4 kept
    whole that never happens, so every probe reproduces the full cache and the search halves down to the tolerance."""
    records = make_runner(tmp_path, methods=("full", "paper", "recency@oracle")).run()
    by = {(r["sample_id"], r["method"]): r for r in records}
    rec = by[("passkey-L96-d0.10-s0-i0", "recency@oracle")]
    probes = rec["oracle_probes"]
    assert [p[0] for p in probes] == [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625]  # halving, all reproduce
    assert all(p[1] == 1.0 for p in probes) and rec["budget_target"] == 0.015625
    assert rec["exact_match_full"] == 1.0 and rec["policy"].startswith("FixedBudget(budget=0.015625, ranking='recency'")
    assert meth.parse_method("snapkv@oracle").kind == "oracle"
    with pytest.raises(ValueError, match="budget to probe"):
        meth.parse_method("h2o@oracle").policy()
    text = " ".join(findings_text.findings(summary.summarize(records), records))
    assert "**Oracle budget (recency@oracle)**" in text and "mean gap" in text


def test_oracle_search_finds_the_edge(tmp_path):
    """A stand-in whose output breaks below a fixed budget of 0.3 per pruned layer: the search brackets 0.3."""

    def generate(model, tokenizer, prompt, policy, max_new_tokens):
        result = fake_generate(model, tokenizer, prompt, policy, max_new_tokens)
        budget = getattr(policy, "budget", 1.0)
        result.tokens = [1, 2, 3] if budget >= 0.3 else [1, 2, 4]
        return result

    config = EvalConfig(tasks=["short"], lengths=[96], methods=["full", "h2o@oracle"], samples=1, out_dir=str(tmp_path),
                        progress=False)
    records = Runner(config, model=FakeModel(), tokenizer=None, generate_fn=generate).run()
    rec = next(r for r in records if r["method"] == "h2o@oracle")
    assert 0.3 <= rec["budget_target"] <= 0.3 + meth.ORACLE_TOLERANCE
    assert [p[0] for p in rec["oracle_probes"]][:3] == [0.5, 0.25, 0.375] and rec["exact_match_full"] == 1.0
