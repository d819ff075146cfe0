"""Issue 12/14 pieces: the set-level matched budget, the speed step, report comparisons (oracle gap, paired
differences, computed findings) and damaged-file handling (torn lines, bad records, truncated references, an
unwritable --out). All on the numpy stand-in of test_runner.py: values are checked, not just that it ran."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from test_runner import FakeModel, _record, fake_generate, make_runner  # same folder (rootdir-relative import mode)

from refreekv_edu.eval import comparisons, findings_text, report, speed, summary
from refreekv_edu.eval import methods as meth
from refreekv_edu.eval.config import EvalConfig
from refreekv_edu.eval.records import check_writable, read_records, repair_torn_tail
from refreekv_edu.eval.runner import Runner, set_threads
from refreekv_edu.eval.tasks import make_samples


# ---------------------------------------------------------------------------------------------- matched-set
def test_matched_set_parsing_and_order():
    spec = meth.parse_method("recency@matched-set")
    assert (spec.kind, spec.ranking, spec.name) == ("matched-set", "recency", "recency@matched-set")
    names = [s.name for s in meth.parse_methods(["h2o@matched-set", "recency@0.5", "official-script"])]
    assert names == ["full", "paper", "official-script", "recency@0.5", "h2o@matched-set"]  # paper added, set last
    assert meth.parse_method("snapkv@matched-set").policy(matched_budget=0.25).budget == 0.25
    with pytest.raises(ValueError, match="needs the 'paper' preset's budget"):
        spec.policy()


def test_matched_set_uses_one_budget_from_every_papers_mean(tmp_path):
    runner = make_runner(tmp_path, methods=("full", "paper", "recency@matched", "recency@matched-set"))
    records = runner.run()
    papers = [r for r in records if r["method"] == "paper"]
    sets = [r for r in records if r["method"] == "recency@matched-set"]
    assert len(papers) == len(sets) == 4
    mean = float(np.mean([r["mean_budget"] for r in papers]))
    # 4 layers, 0 and 1 whole: b = (4 * mean - 2) / 2
    expected = (4 * mean - 2) / 2
    assert len({r["budget_target"] for r in sets}) == 1 and sets[0]["budget_target"] == pytest.approx(expected)
    assert all(r["set_mean_budget"] == pytest.approx(mean) for r in sets)
    for r in sets:  # one budget for all: each sample's mean over layers is the set's mean (to a row's rounding)
        assert r["mean_budget"] == pytest.approx(mean, abs=2 / 96) and r["full_layers"] == [0, 1]
    # the per-sample matched budgets differ between samples, the set's does not
    per_sample = {r["budget_target"] for r in records if r["method"] == "recency@matched"}
    assert len(per_sample) > 1
    # phase two: every paper line is written before the first matched-set line
    lines = [json.loads(x)["method"] for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    last_paper = max(i for i, m in enumerate(lines) if m == "paper")
    assert last_paper < min(i for i, m in enumerate(lines) if m == "recency@matched-set")
    # resumed: nothing runs again
    again = make_runner(tmp_path, methods=("full", "paper", "recency@matched", "recency@matched-set"))
    assert again.run() == records and again.model.calls == 0


def test_matched_set_reruns_when_the_set_changes(tmp_path):
    methods = ("full", "paper", "recency@matched-set")
    make_runner(tmp_path, methods=methods).run()
    config = EvalConfig(tasks=["passkey", "short"], lengths=[96, 128], methods=list(methods), samples=2, out_dir=str(tmp_path),
                        progress=False, haystack="procedural")
    grown = Runner(config, model=FakeModel(), tokenizer=None, generate_fn=fake_generate)
    with pytest.warns(UserWarning, match="running it again"):
        records = grown.run()
    sets = [r for r in records if r["method"] == "recency@matched-set"]
    papers = [r for r in records if r["method"] == "paper"]
    assert len(sets) == 6 and len({r["budget_target"] for r in sets}) == 1
    assert sets[0]["set_mean_budget"] == pytest.approx(np.mean([r["mean_budget"] for r in papers]))
    # the file holds both versions; read_records keeps the newer (one per pair)
    on_disk = read_records(tmp_path / "samples.jsonl")
    assert sum(r["method"] == "recency@matched-set" for r in on_disk) == 6
    assert {r["budget_target"] for r in on_disk if r["method"] == "recency@matched-set"} == {sets[0]["budget_target"]}


# ---------------------------------------------------------------------------------------------- damaged files
def test_resume_after_a_torn_line_does_not_glue_records(tmp_path):
    make_runner(tmp_path).run()
    path = tmp_path / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # the last record torn mid-write
    with pytest.warns(UserWarning, match="torn last line"):
        runner = make_runner(tmp_path)
        runner.run()
    assert runner.model.calls == 1  # only the torn pair runs again
    text = path.read_text()
    assert text.endswith("\n")
    parsed = [json.loads(x) for x in text.splitlines()]  # every line is one whole record again
    assert len(parsed) == len(lines)
    # a valid last record without its newline keeps the record and gets the newline
    path.write_text(text.rstrip("\n"))
    assert repair_torn_tail(path) and path.read_text() == text
    assert not repair_torn_tail(path)


@pytest.mark.parametrize("bad", ["null", "{}", "[1, 2]", '"text"', "{not json"])
def test_bad_lines_are_skipped_with_a_warning(tmp_path, bad):
    records = make_runner(tmp_path).run()
    path = tmp_path / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], bad, *lines[1:]]) + "\n")
    with pytest.warns(UserWarning, match=r"samples.jsonl:2: "):
        back = read_records(path)
    assert len(back) == len(records)
    with pytest.warns(UserWarning, match=r"samples.jsonl:2: "):  # resuming reads the same way; nothing reruns
        runner = make_runner(tmp_path)
        assert len(runner.run()) == len(records) and runner.model.calls == 0


def test_report_only_skips_bad_lines_with_a_warning(tmp_path, capsys):
    import argparse

    from refreekv_edu.eval.cli import add_eval_arguments, run_eval_from_args

    out = tmp_path / "run"
    make_runner(out).run()
    with open(out / "samples.jsonl", "a") as f:
        f.write("null\n{}\n[1,2]\n")
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_eval_from_args(parser.parse_args(["--out", str(out), "--report-only"]), ["refreekv-edu"]) == 0
    assert sum("not an eval record" in str(w.message) for w in caught) == 3
    assert "| passkey |" in capsys.readouterr().out


def test_report_only_keeps_the_last_runs_methods(tmp_path, capsys):
    import argparse

    from refreekv_edu.eval.cli import add_eval_arguments, run_eval_from_args

    out = tmp_path / "run"
    make_runner(out, methods=("full", "paper", "recency@0.5")).run()  # an earlier, wider run
    runner = make_runner(out, methods=("full", "paper"))
    runner.write_run_info(["refreekv-edu", "eval"])
    runner.run()
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    assert run_eval_from_args(parser.parse_args(["--out", str(out), "--report-only"]), ["refreekv-edu"]) == 0
    printed = capsys.readouterr().out
    assert "| paper |" in printed and "recency@0.5" not in printed


def test_truncated_reference_is_rebuilt_with_a_warning(tmp_path):
    first = make_runner(tmp_path).run()
    ref = tmp_path / "refs" / "passkey-L96-d0.10-s0-i0.npz"
    ref.write_bytes(ref.read_bytes()[:40])  # a truncated zip
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    kept = [x for x in lines if not (json.loads(x)["sample_id"] == "passkey-L96-d0.10-s0-i0" and json.loads(x)["method"] == "paper")]
    (tmp_path / "samples.jsonl").write_text("\n".join(kept) + "\n")
    runner = make_runner(tmp_path)
    with pytest.warns(UserWarning, match="unreadable full-cache reference"):
        records = runner.run()
    assert runner.model.calls == 2  # the full cache (reference only, not re-recorded) and the missing paper run
    assert sum(r["method"] == "full" for r in read_records(tmp_path / "samples.jsonl")) == 4
    old = {(r["sample_id"], r["method"]): r["token_agreement"] for r in first}
    assert {(r["sample_id"], r["method"]): r["token_agreement"] for r in records} == old
    with np.load(ref) as data:  # rebuilt whole
        assert data["tokens"].size > 0


def test_unwritable_out_fails_before_the_model_loads(tmp_path, monkeypatch):
    import argparse

    import refreekv_edu.models as models
    from refreekv_edu.eval.cli import add_eval_arguments, run_eval_from_args

    def boom(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(models, "load_model", boom)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = blocker / "results"  # under a regular file: cannot be created, even as root
    with pytest.raises(OSError, match="cannot write to the output directory"):
        check_writable(bad)
    with pytest.raises(OSError, match="choose another --out"):
        Runner(EvalConfig(tasks=["short"], out_dir=str(bad), progress=False))
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    with pytest.raises(OSError, match="a-file/results"):
        run_eval_from_args(parser.parse_args(["--out", str(bad), "--tasks", "short"]), ["refreekv-edu"])
    assert check_writable(tmp_path / "new" / "dir").is_dir() and not list((tmp_path / "new" / "dir").iterdir())


def test_config_validates_new_fields():
    for kw in ({"oracle_tolerance": 0.0}, {"oracle_tolerance": 0.6}, {"threads": 0}, {"speed_length": 10},
               {"speed_new_tokens": 0}, {"speed_repeats": True}):
        with pytest.raises(ValueError):
            EvalConfig(**kw).validate()


def test_oracle_tolerance_sets_the_number_of_probes(tmp_path):
    config = EvalConfig(tasks=["short"], lengths=[96], methods=["full", "recency@oracle"], samples=1, out_dir=str(tmp_path),
                        progress=False, oracle_tolerance=1 / 8)
    rec = next(r for r in Runner(config, model=FakeModel(), generate_fn=fake_generate).run() if r["method"] == "recency@oracle")
    assert [p[0] for p in rec["oracle_probes"]] == [0.5, 0.25, 0.125]  # stops when the interval is 1/8 wide


def test_set_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_short_task_builds_for_many_indices():
    """Every index builds (the weekday question used to index past Sunday), and the weekday answers are right."""
    days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
    samples = make_samples("short", 0, 40, 0)
    assert len({s.id for s in samples}) == 40
    for s in samples:
        if s.meta["kind"] == "weekday":
            listed = s.prompt.split(": ")[1].split("?")[0].split(", ")
            assert s.references == [days[(days.index(listed[-1]) + 1) % 7]]


# ---------------------------------------------------------------------------------------------- speed step


def _speed_generate(calls):
    """Decode seconds proportional to the rows kept: 4 layers, paper keeps part of layers 2-3."""

    def generate(model, tokenizer, prompt, policy, max_new_tokens, stop_at_eos=True):
        calls.append((type(policy).__name__, max_new_tokens, stop_at_eos))
        result = fake_generate(model, tokenizer, prompt, policy, max_new_tokens)
        result.tokens = list(range(max_new_tokens))
        result.stats.update(new_tokens=max_new_tokens, decode_s=0.1 * max_new_tokens * result.trace.mean_budget if result.trace.layers
                            else 0.1 * max_new_tokens)
        return result

    return generate


def test_speed_check_ratio_memory_and_reuse(tmp_path):
    calls: list = []
    model = FakeModel()
    out = speed.speed_check(model, None, _speed_generate(calls), tmp_path / "speed.json", length=128, new_tokens=8, repeats=2,
                            haystack="procedural", model_name="fake", progress=False)
    # warm-up (2 steps) + 2 x (full, paper), all with stop_at_eos=False and the same decode length
    assert calls == [("FullCache", 2, False)] + [("FullCache", 8, False), ("ReFreeKV", 8, False)] * 2
    full, paper = out["best"]["full"], out["best"]["paper"]
    assert full["decode_tok_s"] == pytest.approx(10.0)  # 8 tokens / 0.8 s
    assert paper["decode_tok_s"] == pytest.approx(10.0 / paper["mean_budget"])
    assert out["decode_speed_ratio"] == pytest.approx(1 / paper["mean_budget"]) and out["decode_speed_ratio"] > 1
    assert out["same_tokens"] is True and paper["kv_bytes_kept"] < paper["kv_bytes_full"] == full["kv_bytes_full"]
    assert full["rss_peak_delta_mb"] is None or full["rss_peak_delta_mb"] >= 0
    assert full["maxrss_mb"] is None or full["maxrss_mb"] > 10
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["settings"]["length"] == 128 and saved["decode_speed_ratio"] == pytest.approx(out["decode_speed_ratio"])
    # same settings: reused, nothing runs; other settings: measured again
    n = len(calls)
    assert speed.speed_check(model, None, _speed_generate(calls), tmp_path / "speed.json", length=128, new_tokens=8, repeats=2,
                             haystack="procedural", model_name="fake", progress=False)["decode_speed_ratio"] == out["decode_speed_ratio"]
    assert len(calls) == n
    speed.speed_check(model, None, _speed_generate(calls), tmp_path / "speed.json", length=128, new_tokens=4, repeats=1,
                      haystack="procedural", model_name="fake", progress=False)
    assert len(calls) == n + 3
    # a backend without stop_at_eos still runs
    plain = speed.speed_check(model, None, fake_generate, tmp_path / "plain.json", length=128, new_tokens=3, repeats=1,
                              haystack="procedural", progress=False)
    assert plain["best"]["full"]["new_tokens"] == 3
    text = findings_text.speed_line(out)
    assert f"= {out['decode_speed_ratio']:.2f}" in text and "full cache 10.0 tok/s" in text


def test_runner_speed_step_writes_speed_json(tmp_path):
    calls: list = []
    config = EvalConfig(tasks=["short"], lengths=[96], methods=["full"], samples=1, out_dir=str(tmp_path), progress=False,
                        haystack="procedural", speed_length=100, speed_new_tokens=4, speed_repeats=1)
    Runner(config, model=FakeModel(), generate_fn=_speed_generate(calls)).run()
    data = report.read_speed(tmp_path / "speed.json")
    assert data["settings"]["length"] == 100 and data["best"]["full"]["new_tokens"] == 4
    (tmp_path / "bad.json").write_text("{")
    with pytest.warns(UserWarning, match="unreadable speed results"):
        assert report.read_speed(tmp_path / "bad.json") is None


def test_rss_sampler_sees_an_allocation():
    if speed._rss_bytes() is None:
        pytest.skip("no /proc")
    import mmap
    import time

    # A fresh anonymous mapping, every page written: new resident memory whatever the allocator kept from
    # earlier tests (np.ones could reuse freed heap pages that are already resident, and RSS would not move).
    block = mmap.mmap(-1, 64 * 2**20)
    with speed.RssSampler(interval=0.001) as mem:
        np.frombuffer(block, dtype=np.uint8)[:] = 1
        time.sleep(0.05)
    block.close()
    assert mem.delta_mb >= 48


# ---------------------------------------------------------------------------------------------- comparisons
def _rec(sid, method, score, budget, exact=1.0, task="passkey", **extra):
    r = _record(sid, method, score, budget, task=task)
    r.update(exact_match_full=exact, layer_budgets=[1.0, 1.0, budget, budget], full_layers=[0, 1],
             mean_budget=(2 + 2 * budget) / 4, **extra)
    return r


def test_paired_comparison_by_hand():
    recs = []
    # 4 samples: full scores 1; paper keeps 1,1,1,0; fixed keeps 1,0,0,1
    for i, (p, b) in enumerate([(1, 1), (1, 0), (1, 0), (0, 1)]):
        recs += [_rec(f"s{i}", "full", 1.0, 1.0), _rec(f"s{i}", "paper", p, 0.4, exact=p),
                 _rec(f"s{i}", "recency@matched-set", b, 0.4, exact=0.0)]
    (group, total) = comparisons.paired_comparisons(recs, "recency@matched-set")
    assert group.group == "passkey @96" and total.group == "all" and total.n == 4
    assert total.paper_keeps == 0.75 and total.base_keeps == 0.5 and total.diff_keeps == pytest.approx(0.25)
    assert (total.only_paper, total.only_baseline) == (2, 1)
    assert total.diff_exact == pytest.approx(0.75) and total.diff_exact_ci[0] > 0
    lo, hi = total.diff_keeps_ci
    assert lo < 0 < hi  # differences +0,+1,+1,-1: too few to tell
    text = " ".join(findings_text.findings(summary.summarize(recs), recs))
    assert "**Fixed budget at the same mean, recency@matched-set** (one budget for the whole set" in text
    assert "+25 points" in text and "no difference this sample size can detect" in text
    assert "**Failed on passkey @96**: the paper preset lost the full cache's score on 1 of 4 samples" in text
    table = report.matched_table(recs)
    assert "| recency@matched-set | all | 4 | 70.0% / 70.0% | 75% / 50% | +25 [" in table and "| 2 / 1 |" in table


def test_oracle_comparison_by_hand():
    # paper's per-pruned-layer budgets 0.6, 0.2, 0.4; oracle brackets (0.25, 0.5], (0.25, 0.5], (0.375, 0.5]:
    # above, below, inside
    probes = [[0.5, 1.0], [0.25, 0.0], [0.375, 0.0]]
    recs = [
        _rec("a", "paper", 1, 0.6), _rec("a", "recency@oracle", 1, 0.5, budget_target=0.5, oracle_probes=probes[:2]),
        _rec("b", "paper", 1, 0.2), _rec("b", "recency@oracle", 1, 0.5, budget_target=0.5, oracle_probes=probes[:2]),
        _rec("c", "paper", 1, 0.4, exact=0.0), _rec("c", "recency@oracle", 1, 0.5, budget_target=0.5, oracle_probes=probes),
    ]
    (*_, total) = comparisons.oracle_comparisons(recs, "recency@oracle")
    assert total.n == 3
    assert total.above == total.below == total.inside == pytest.approx(1 / 3)
    # gaps in mean budget: (0.6 - 0.5) / 2 = 0.05, -0.15, -0.05 (layers 0-1 whole halve the per-layer gap)
    assert total.gap == pytest.approx((0.05 - 0.15 - 0.05) / 3)
    assert total.below_but_same == 1 and total.gap_when_same == pytest.approx((0.05 - 0.15) / 2)
    assert total.paper_exact == pytest.approx(2 / 3)
    text = " ".join(findings_text.findings(summary.summarize(recs), recs))
    assert "above the smallest uniform fixed budget that reproduces the full cache's output on 33% of 3 samples, below it on 33%, within the search's resolution on 33%" in text
    assert "mean gap -5.0 points" in text
    assert "It keeps more than the input needed" not in text  # one group of 3: its interval spans 0
    assert "| recency@oracle | all | 3 |" in report.oracle_table(recs)


def test_sweep_table_and_finding(tmp_path):
    records = make_runner(tmp_path, methods=("full", "paper@0.001", "paper", "paper@0.1")).run()
    table = report.sweep_table(records)
    assert table.count("| paper |") == 3 and "| paper | 0.1% | 4 |" in table and "| paper | 10% | 4 |" in table
    text = " ".join(findings_text.findings(summary.summarize(records), records))
    assert "**Threshold sweep (paper preset)**: from T = 0.1% to T = 10%" in text
    assert report.sweep_table([r for r in records if r["method"] in ("full", "paper")]) == ""
