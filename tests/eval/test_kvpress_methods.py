"""``kvpress:<press>@matched`` methods (issue 19): parsed, ordered after the paper preset, run at its budget.

The runner hands a :class:`KvpressBaseline` to ``refreekv_torch.kvpress_baselines`` instead of ``generate``; here
a stand-in records what it was given, so the budget passed (1 - compression ratio = the paper's mean budget on
the same sample) is checked against the paper's record without kvpress installed. ``tests/kvpress_tests`` runs the
real presses on the bundled model where kvpress is installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import refreekv_edu as rk
from refreekv_edu.eval import methods as meth
from refreekv_edu.eval import runner as runner_module
from refreekv_edu.eval.config import EvalConfig
from refreekv_edu.eval.records import read_records
from refreekv_edu.eval.runner import Runner


def _paper_only_generate(model, tokenizer, prompt, policy, max_new_tokens):
    """The paper's decisions on random queries and keys (4 layers, 0 and 1 whole): a budget to match."""
    words = prompt.split() if isinstance(prompt, str) else [str(t) for t in prompt]
    rng = np.random.default_rng(len(words))
    layers = []
    if policy.compresses:
        for i in range(4):
            q = rng.normal(size=(4, 8, 8)).astype(np.float32)
            k = rng.normal(size=(2, len(words), 8)).astype(np.float32)
            layers.append(policy.decide_layer(q, k, layer=i))
    stats = {"prompt_tokens": len(words), "new_tokens": 2, "kv_bytes_full": 1000}
    return rk.GenerationResult(text="x", tokens=[1, 2], trace=rk.Trace(layers=layers), stats=stats,
                               first_logits=np.zeros(10, np.float32))


def make_runner(tmp_path, methods):
    config = EvalConfig(tasks=["passkey", "short"], lengths=[96], methods=list(methods), samples=2,
                        out_dir=str(tmp_path), progress=False, haystack="procedural")
    return Runner(config, model=object(), tokenizer=None, generate_fn=_paper_only_generate)


def test_kvpress_methods_parse_and_bring_the_paper_preset() -> None:
    specs = meth.parse_methods(["kvpress:snapkv@matched", "full", "kvpress:streamingllm@matched"])
    assert [s.name for s in specs] == ["full", "paper", "kvpress:snapkv@matched", "kvpress:streamingllm@matched"]
    assert specs[2].kind == "kvpress" and specs[2].ranking == "snapkv"
    baseline = specs[2].policy(matched_budget=0.7)
    assert baseline == meth.KvpressBaseline("snapkv", 0.7) and baseline.compression_ratio == pytest.approx(0.3)
    assert baseline.ranking == "kvpress:snapkv" and baseline.threshold is None
    with pytest.raises(ValueError, match="needs the 'paper' preset's mean budget"):
        specs[2].policy()
    for bad in ("kvpress:h2o@matched", "kvpress:snapkv@0.5", "kvpress:snapkv"):
        with pytest.raises(ValueError, match="kvpress:<press>@matched"):
            meth.parse_method(bad)


def test_the_runner_gives_each_press_the_papers_mean_budget(tmp_path, monkeypatch) -> None:
    seen = []

    def press_generate(model, tokenizer, prompt, baseline, max_new_tokens):
        seen.append(baseline)
        kept = baseline.budget
        stats = {"prompt_tokens": 96, "new_tokens": 2, "kv_bytes_full": 1000, "kv_bytes_kept": int(1000 * kept),
                 "mean_budget": kept}
        return rk.GenerationResult(text="x", tokens=[1, 2], trace=rk.Trace(layers=[]), stats=stats,
                                   first_logits=np.zeros(10, np.float32))

    monkeypatch.setattr(runner_module, "kvpress_generate", lambda: press_generate)
    runner = make_runner(tmp_path, methods=("full", "kvpress:tova@matched"))
    runner.run()
    records = {(r["sample_id"], r["method"]): r for r in read_records(tmp_path / "samples.jsonl")}
    papers = {sid: r for (sid, m), r in records.items() if m == "paper"}
    presses = {sid: r for (sid, m), r in records.items() if m == "kvpress:tova@matched"}
    assert set(papers) == set(presses) and len(seen) == len(presses) == 4
    for sid, rec in presses.items():
        assert rec["kind"] == "kvpress" and rec["ranking"] == "kvpress:tova"
        assert rec["budget_target"] == pytest.approx(papers[sid]["mean_budget"], abs=1e-9)
        assert rec["mean_budget"] == pytest.approx(papers[sid]["mean_budget"], abs=1e-9)
        assert rec["kv_kept"] == pytest.approx(int(1000 * papers[sid]["mean_budget"]) / 1000)


def test_without_kvpress_the_error_says_what_to_install() -> None:
    pytest.importorskip("torch", reason="the kvpress baselines live in the torch backend")
    try:
        import kvpress  # noqa: F401
    except ImportError:
        from refreekv_torch.kvpress_baselines import make_press

        with pytest.raises(RuntimeError, match=r"pip install -e \"\.\[torch,kvpress\]\""):
            make_press("snapkv", 0.3)
    else:
        pytest.skip("kvpress is installed here: tests/kvpress_tests runs the real presses")
    from refreekv_torch.kvpress_baselines import make_press

    with pytest.raises(ValueError, match="unknown kvpress press"):
        make_press("h2o", 0.3)
    with pytest.raises(ValueError, match=r"compression_ratio must lie in \[0, 1\)"):
        make_press("snapkv", 1.0)
