"""The demo: its prompt set, its pieces, the run flow with a stand-in model, and the real thing (slow)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import refreekv_edu as rk
from refreekv_edu import demo, demo_report
from refreekv_edu.decision import LayerDecision, Trace
from refreekv_edu.eval.methods import matched_budget
from refreekv_edu.generate import GenerationResult


def words(text: str) -> int:
    return len(text.split())


def test_demo_module_imports_only_numpy_and_stdlib():
    code = (
        "import sys, refreekv_edu.demo; "
        "heavy = [m for m in ('torch', 'transformers', 'mlx', 'matplotlib') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_prompt_set_is_four_different_tasks_from_the_eval_harness():
    samples = demo.demo_samples(words)
    assert [s.task for s in samples] == ["short", "reading", "repeat", "passkey"]
    assert [s.id for s in samples] == ["short-s0-i1", "reading-s0-i1", "repeat-L768-s0-i0", "passkey-L1024-d0.50-s0-i0"]
    short, reading, repeat, passkey = samples
    assert short.meta["kind"] == "capital" and words(short.prompt) < 20
    assert reading.meta["kind"] == "colour" and 60 < words(reading.prompt) < 140
    assert not repeat.chat and repeat.metric == "continues" and repeat.meta["copies"] >= 3
    assert 600 <= words(repeat.prompt) <= 768
    assert passkey.meta["depth"] == 0.5 and passkey.prompt.count(passkey.references[0]) == 2
    assert 850 <= words(passkey.prompt) <= 1024
    assert [s.prompt for s in demo.demo_samples(words)] == [s.prompt for s in samples]  # fixed, not drawn per run
    assert len(demo.PROMPT_LABELS) == len(samples)


def test_policies_are_the_presets_and_a_recency_baseline_with_the_papers_protections():
    pols = demo.demo_policies(0.4)
    assert list(pols) == list(demo.METHODS)
    assert pols["paper"] == rk.ReFreeKV() and pols["official-script"] == rk.ReFreeKV.preset("official-script")
    assert pols["matched"] == rk.FixedBudget(budget=0.4, ranking="recency", sinks=4, window=0, full_layers=(0, 1))
    assert "matched" not in demo.demo_policies()
    assert demo.method_label("paper", pols["paper"]) == "ReFreeKV() paper T=0.01"
    assert demo.method_label("official-script", pols["official-script"]) == "official-script T=0.05"
    assert demo.method_label("matched", pols["matched"]) == "fixed recency 40.0%"


def test_text_helpers():
    assert demo_report.sparkline([0.0, 0.124, 0.126, 0.5, 0.99, 1.0]) == "▁▁▂▅██"
    assert demo_report.budget_summary([0.02, 0.41, 1.0]) == "min 2% med 41% max 100%" and demo_report.budget_summary([]) == ""
    assert demo_report.short_answer("The pass\nkey is 12345.", 30) == "The pass key is 12345."
    assert demo_report.short_answer("x" * 40, 10) == "xxxxxxx..."


def test_out_dir_is_created_and_checked(tmp_path):
    assert demo.prepare_out_dir(tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write check leaves nothing behind
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot write to the output directory .*file.*pass --out"):
        demo.prepare_out_dir(blocker / "sub")


def test_unwritable_out_fails_before_the_model_loads(monkeypatch, tmp_path, capsys):
    from refreekv_edu.cli import main

    def no_load(*a, **k):
        raise AssertionError("the model must not load when the output directory is unusable")

    monkeypatch.setattr(sys.modules["refreekv_edu.models"], "load_model", no_load)
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refreekv-edu demo: error: cannot write to the output directory")
    assert demo.main(["--out", str(tmp_path / "file" / "out")]) == 2


def test_command_line_defaults():
    parser = demo.add_arguments(__import__("argparse").ArgumentParser())
    args = parser.parse_args([])
    assert (args.backend, args.out, args.model, args.no_plot, args.no_traces) == (
        "auto", "refreekv-demo-out", "smollm2-135m", False, False)
    assert "(default: ./refreekv-demo-out)" in " ".join(parser.format_help().split())


def _decision(layer: int, kept: np.ndarray, length: int, full: bool = False, last_attn=None, sink_attn=None):
    n = 0 if full else length - 4
    return LayerDecision(
        kept=kept, order=np.tile(np.arange(n), (kept.shape[0], 1)), scores=np.zeros((kept.shape[0], n), np.float32),
        last_attn=np.zeros((2, n), np.float32) if last_attn is None else last_attn, curve=np.zeros(n, np.float32),
        n_evicted=length - kept.shape[1], prompt_len=length, window=0, threshold=0.01, policy="refreekv",
        ranking="recency", gqa="group", layer=layer, group_size=2, sinks=0 if full else 4,
        sink_attn=np.zeros((2, 0 if full else 4), np.float32) if sink_attn is None else sink_attn, full_layer=full,
    )  # fmt: skip


def test_sink_share_is_position_zeros_share_of_the_squared_row():
    row_sinks = np.array([[0.6, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]], np.float32)
    row_cands = np.array([[0.2, 0.2], [0.3, 0.0]], np.float32)
    d = _decision(2, np.array([[0, 1, 2, 3, 4, 5]]), 6, last_attn=row_cands, sink_attn=row_sinks)
    full = _decision(0, np.arange(6)[None], 6, full=True)
    share = demo_report.sink_share(Trace(layers=[full, d]))
    assert np.isnan(share[0])  # a full layer is not decided
    np.testing.assert_allclose(share[1], np.mean([0.36 / 0.44, 0.01 / 0.10]), rtol=1e-6)


def test_failure_reason_names_the_evicted_key():
    sample = demo.demo_samples(words)[3]
    tokens = ["x"] * 10
    tokens[7:9] = ["123", "45"]
    full_run = demo.DemoRun("passkey", "full", "full cache", "12345", [1, 2, 3], True)
    kept_key = _decision(2, np.array([[0, 1, 2, 3, 7, 8, 9]]), 10)
    lost_key = _decision(3, np.array([[0, 1, 2, 3, 9]]), 10)
    trace = Trace(layers=[_decision(0, np.arange(10)[None], 10, full=True), kept_key, lost_key], tokens=tokens)
    sample.meta["needle"] = "12345"
    sample.references[:] = ["12345"]
    run = demo.DemoRun("passkey", "paper", "ReFreeKV() paper", "It is 99", [1, 5, 6], False, same_as_full=False)
    reason = demo_report.failure_reason(sample, run, full_run, trace)
    assert reason == ("wrong (expected '12345'); diverges from the full cache at answer token 2; "
                      "the key's rows were kept whole in 1 of 2 pruned layers")
    assert demo_report.failure_reason(sample, full_run, full_run, None) is None
    crashed = demo.DemoRun("passkey", "paper", "x", error="RuntimeError: boom")
    assert demo_report.failure_reason(sample, crashed, full_run) == "crashed: RuntimeError: boom"
    wrong_full = demo.DemoRun("passkey", "full", "full cache", "no", [1], False)
    assert demo_report.failure_reason(sample, wrong_full, wrong_full) == "the full cache itself answers wrong (expected '12345')"


class _WordTokenizer:
    """One token per word (ids are indices in a growing vocabulary)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]


def _fake_model(fail_on=None):
    """A stand-in generate(): real policy decisions on random arrays of 4 layers; answers right iff budget >= 0.6."""
    calls = []
    tok = _WordTokenizer()
    answers = {}
    for s in demo.demo_samples(lambda t: len(tok.encode(t))):
        answers[s.prompt if s.chat else tuple(tok.encode(s.prompt))] = s.references[0]

    def generate(model, tokenizer, prompt, policy, max_new_tokens):
        key = prompt if isinstance(prompt, str) else tuple(prompt)
        length = len(prompt.split()) if isinstance(prompt, str) else len(prompt)
        calls.append((policy.name, getattr(policy, "preset_name", None), length))
        if fail_on and fail_on(policy, length):
            raise RuntimeError("boom\nsecond line")
        rng = np.random.default_rng(length)
        layers = []
        if policy.compresses:
            for i in range(4):
                q = rng.normal(size=(4, 8, 8)).astype(np.float32)
                k = rng.normal(size=(2, length, 8)).astype(np.float32)
                layers.append(policy.decide_layer(q, k, layer=i))
        trace = Trace(layers=layers, tokens=[f"w{i} " for i in range(length)])
        budget = trace.mean_budget if layers else 1.0
        right = budget >= 0.6
        text = answers[key] if right else "I do not know"
        full_bytes = 4 * 2 * 2 * length * 8 * 4
        stats = {"prompt_tokens": length, "new_tokens": 3, "kv_bytes_full": full_bytes,
                 "kv_bytes_kept": int(round(full_bytes * budget)), "prefill_s": 0.01, "decide_s": 0.0, "decode_s": 0.01}
        return GenerationResult(text=text, tokens=[7, 8, 9] if right else [7, 0, 0], trace=trace, stats=stats)

    return generate, calls, tok


def test_run_demo_flow_with_a_stand_in_model(monkeypatch, tmp_path):
    """One load; per prompt full, paper, official-script; then the matched baseline; one table; files named."""
    pytest.importorskip("matplotlib")
    generate, calls, tok = _fake_model()
    loads = []
    monkeypatch.setattr(sys.modules["refreekv_edu.models"], "load_model", lambda name, backend: loads.append(name) or ("m", tok))
    monkeypatch.setattr(sys.modules["refreekv_edu.generate"], "generate", generate)
    out = io.StringIO()
    result = demo.run_demo(backend="torch", out_dir=tmp_path / "out", out=out)
    text = out.getvalue()
    assert loads == ["smollm2-135m"]
    assert text.splitlines()[0] == f"refreekv-edu demo: output directory {(tmp_path / 'out').resolve()}"
    lengths = [c[2] for c in calls[::3][:4]]
    assert [c[:2] for c in calls[:3]] == [("full", None), ("refreekv", "paper"), ("refreekv", "official-script")]
    assert [c[0] for c in calls[12:]] == ["fixed"] * 4 and len(calls) == 16
    assert lengths == result.prompt_tokens and lengths[0] < lengths[1] < lengths[2] < lengths[3]
    # the matched baseline: its mean over layers equals the paper's mean over the set
    paper = [result.run(label, "paper").budget for label in demo.PROMPT_LABELS]
    assert result.fixed_budget == pytest.approx(matched_budget(float(np.mean(paper)), 4, 2))
    matched = [result.run(label, "matched") for label in demo.PROMPT_LABELS]
    assert np.mean([r.budget for r in matched]) == pytest.approx(np.mean(paper), abs=0.02)
    assert all(r.layer_budgets[:2] == [1.0, 1.0] for r in matched)
    # every row: right iff the stand-in kept >= 60%, equal to the full cache iff right; KV bytes from the stats
    for r in result.runs:
        assert r.error is None and r.correct == (r.budget >= 0.6) and r.same_as_full == r.correct
        assert r.kv_bytes_kept == int(round(r.kv_bytes_full * r.budget))
        assert (r.reason is None) == r.correct
    # the table: one line per run, with its numbers
    off = result.run("passkey (stress)", "official-script")
    line = next(ln for ln in text.splitlines() if ln.startswith(" " * 17 + " official-script T=0.05") and
                f"{100 * off.budget:6.1f}%" in ln)
    assert demo_report.sparkline(off.layer_budgets) in line and demo_report.budget_summary(off.layer_budgets) in line
    assert re.search(r"^short fact\s+full cache\s+Athens\s+yes\s+ref\s+100\.0%", text, re.M)
    assert f"fixed recency {100 * result.fixed_budget:.1f}% (matched)" in text
    assert "KV MiB (model dtype)" in text  # the stand-in model has no dtype; a real one prints float32
    fails = [r for r in result.runs if not r.correct]
    assert fails and all(r.method != "full" for r in fails)
    for r in fails:
        assert f"FAIL {r.prompt} / {r.label}: wrong (expected" in text
    # files: named at the end, all inside the output directory
    names = sorted(p.name for p in result.files)
    assert names == sorted(["summary.json", "budgets.png", "trace_1_short_paper.json", "trace_2_reading_paper.json",
                            "trace_3_repeat_paper.json", "trace_4_passkey_paper.json"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    assert (tmp_path / "out" / "budgets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["fixed_budget"] == result.fixed_budget and len(summary["runs"]) == 16
    assert Trace.load(tmp_path / "out" / "trace_4_passkey_paper.json").budgets.tolist() == \
        result.run("passkey (stress)", "paper").layer_budgets
    assert text.rstrip().splitlines()[-1].startswith("Backend torch; model load")
    assert result.trace("passkey (stress)").budgets.tolist() == result.run("passkey (stress)", "paper").layer_budgets
    assert result.trace("short fact", "full").layers == [] and result.trace("nope") is None
    assert f"Wrote to {(tmp_path / 'out').resolve()}:" in text
    size = (tmp_path / "out" / "summary.json").stat().st_size
    assert f"  summary.json ({size / 1024:.0f} KiB)" in text


def test_a_crash_is_printed_as_a_failure_and_the_demo_goes_on(monkeypatch, tmp_path):
    generate, calls, tok = _fake_model(fail_on=lambda policy, length: getattr(policy, "preset_name", "") == "official-script" and length < 30)
    monkeypatch.setattr(sys.modules["refreekv_edu.models"], "load_model", lambda name, backend: ("m", tok))
    monkeypatch.setattr(sys.modules["refreekv_edu.generate"], "generate", generate)
    out = io.StringIO()
    result = demo.run_demo(backend="torch", out_dir=tmp_path, out=out, plot=False, save_traces=False)
    crashed = result.run("short fact", "official-script")
    assert crashed.error == "RuntimeError: boom" and result.crashed == [crashed]
    text = out.getvalue()
    assert "FAIL short fact / official-script T=0.05: crashed: RuntimeError: boom" in text
    assert re.search(r"official-script T=0.05\s+FAILED", text)
    assert len(calls) == 16 and [p.name for p in result.files] == ["summary.json"]


@pytest.mark.slow
def test_real_demo_on_the_bundled_model(tmp_path):
    """The whole demo: 4 prompts x 4 methods. The full cache must answer all four; budgets must differ by input."""
    pytest.importorskip("transformers")
    out = io.StringIO()
    result = demo.run_demo(backend="torch", out_dir=tmp_path, out=out, progress=False)
    assert not result.crashed
    assert [result.run(label, "full").correct for label in demo.PROMPT_LABELS] == [True] * 4
    assert result.kv_dtype == "float32"
    paper = [result.run(label, "paper") for label in demo.PROMPT_LABELS]
    assert len({round(r.budget, 3) for r in paper}) == 4  # one threshold, a different budget per input
    for r in paper:
        assert len(r.layer_budgets) == 30 and r.layer_budgets[:2] == [1.0, 1.0] and 0 < r.budget < 1
        assert r.kv_bytes_kept < r.kv_bytes_full
    matched = [result.run(label, "matched") for label in demo.PROMPT_LABELS]
    assert np.mean([r.budget for r in matched]) == pytest.approx(np.mean([r.budget for r in paper]), abs=0.01)
    assert 400 <= result.prompt_tokens[2] <= 800 and 900 <= result.prompt_tokens[3] <= 1100
    assert (tmp_path / "budgets.png").stat().st_size > 5000
    print(out.getvalue())


def test_failure_reason_blames_a_dominant_sink_only_when_it_is_in_the_metric():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(4, 8, 8)).astype(np.float32)
    k = rng.normal(size=(2, 64, 8)).astype(np.float32)
    k[:, 0] = 4 * q[::2, -1]  # position 0 takes most of the last row's attention (a sink)
    sample = demo.demo_samples(words)[0]
    full_run = demo.DemoRun("short fact", "full", "full cache", "Athens", [1, 2], True)
    wrong = demo.DemoRun("short fact", "x", "x", "Rome", [1, 3], False, same_as_full=False)
    official = Trace(layers=[rk.ReFreeKV.preset("official-script").decide_layer(q, k, layer=i) for i in range(2)])
    assert demo_report.sink_share(official).min() > 0.5
    reason = demo_report.failure_reason(sample, wrong, full_run, official)
    assert reason.startswith("wrong (expected 'Athens'); diverges from the full cache at answer token 2; position 0 holds")
    paper = Trace(layers=[rk.ReFreeKV().decide_layer(q, k, layer=i) for i in range(2, 4)])
    assert demo_report.sink_share(paper).min() > 0.5  # the sink is there, but the paper leaves it out of the norm
    assert demo_report.failure_reason(sample, wrong, full_run, paper) == (
        "wrong (expected 'Athens'); diverges from the full cache at answer token 2")
