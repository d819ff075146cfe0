"""The demo: prompt construction, the report, the run flow (with a stand-in model), and the real thing (slow)."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import pytest

from refreekv_edu import demo
from refreekv_edu.decision import LayerDecision, Trace
from refreekv_edu.generate import GenerationResult


def test_demo_module_imports_only_numpy_and_stdlib():
    code = (
        "import sys, refreekv_edu.demo; "
        "heavy = [m for m in ('torch', 'transformers', 'mlx', 'matplotlib') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_passkey_prompt_has_one_key_at_the_requested_depth():
    p = demo.build_passkey_prompt(sentences=100, depth=0.25, passkey="48213", seed=3)
    assert p.text.count("48213") == 2  # "The pass key is K. ... K is the pass key."
    body = p.text.split("\n\n")[1]
    assert abs(body.index("48213") / len(body) - 0.25) < 0.03
    digits = re.findall(r"\d+", p.text.replace("48213", ""))
    assert digits == []  # the filler holds no other numbers to confuse the model
    assert p.is_correct("The pass key is 48213.") and p.is_correct("48,213") and not p.is_correct("4821")
    assert demo.build_passkey_prompt(seed=1).text == demo.build_passkey_prompt(seed=1).text  # deterministic
    assert demo.build_passkey_prompt(seed=1).passkey != demo.build_passkey_prompt(seed=2).passkey


def test_passkey_prompt_rejects_bad_arguments():
    with pytest.raises(ValueError, match="depth must lie in"):
        demo.build_passkey_prompt(depth=1.5)
    with pytest.raises(ValueError, match="passkey must be"):
        demo.build_passkey_prompt(passkey="abc")
    with pytest.raises(ValueError, match="sentences"):
        demo.build_passkey_prompt(sentences=0)


def test_budget_table_lists_every_layer():
    table = demo.budget_table([0.5, 0.25, 1.0], [10, 5, 20], per_row=2)
    assert table.splitlines() == ["L00  50.0% (  10) | L01  25.0% (   5)", "L02 100.0% (  20)"]


def _fake_decision(layer: int, kept: int, length: int) -> LayerDecision:
    return LayerDecision(
        kept=np.arange(length - kept, length)[None].repeat(2, 0), order=np.zeros((2, 0), np.int64),
        scores=np.zeros((2, 0), np.float32), last_attn=np.zeros((4, 0), np.float32), curve=np.zeros(0, np.float32),
        n_evicted=length - kept, prompt_len=length, window=8, threshold=0.05, policy="refreekv", ranking="h2o",
        gqa="group", layer=layer, group_size=2,
    )  # fmt: skip


def test_run_demo_flow_with_a_stand_in_model(monkeypatch, tmp_path):
    """run_demo loads once, runs the three policies, prints the table and writes the plot and trace."""
    pytest.importorskip("matplotlib")
    calls = []

    def fake_load(name, backend):
        calls.append(("load", name, backend))
        return "model", "tokenizer"

    def fake_generate(model, tokenizer, prompt, policy, max_new_tokens):
        calls.append(("generate", policy.name))
        key = re.search(r"pass key is (\d+)", prompt).group(1)
        full, L = 4 * 2**20, 100
        if policy.name == "full":
            stats, layers, text = (
                {"kv_bytes_full": full, "kv_bytes_kept": full, "kept_per_layer": [L, L]},
                [],
                f"The pass key is {key}.",
            )
        else:
            layers = [_fake_decision(0, 50, L), _fake_decision(1, 25, L)]
            stats = {"kv_bytes_full": full, "kv_bytes_kept": full * 3 // 8, "kept_per_layer": [50, 25]}
            text = f"It is {key}" if policy.name == "refreekv" else "no idea"
        stats.update(prompt_tokens=L, new_tokens=5, prefill_s=1.0, decide_s=0.1, decode_s=0.5)
        tokens = ["x"] * 60 + list(key) + ["y"] * (L - 60 - len(key))  # the key's digits at positions 60..64
        return GenerationResult(text=text, tokens=[1] * 5, trace=Trace(layers=layers, tokens=tokens), stats=stats)

    monkeypatch.setattr(sys.modules["refreekv_edu.models"], "load_model", fake_load)
    monkeypatch.setattr(sys.modules["refreekv_edu.generate"], "generate", fake_generate)
    out = io.StringIO()
    result = demo.run_demo(backend="torch", out_dir=tmp_path, sentences=10, out=out)
    assert calls == [
        ("load", "smollm2-135m", "torch"),
        ("generate", "full"),
        ("generate", "refreekv"),
        ("generate", "fixed"),
    ]
    assert [r.correct for r in result.runs] == [True, True, False]
    assert result.run("ReFreeKV").budgets == [0.5, 0.25]
    text = out.getvalue()
    assert "[1/5] loading smollm2-135m" in text
    assert re.search(r"ReFreeKV \(threshold 0\.05\)\s+It is \d+\s+yes\s+37\.5%\s+1\.50 /   4\.00", text)
    assert "L00  50.0% (  50) | L01  25.0% (  25)" in text
    # layer 0 keeps rows 50..99 (the key at 60..64 survives), layer 1 keeps 75..99 (it does not)
    assert result.key_positions == [60, 61, 62, 63, 64]
    assert result.run("ReFreeKV").key_share == [[1.0, 1.0], [0.0, 0.0]] and result.run("ReFreeKV").key_layers == 1
    assert result.run("full").key_share is None and result.run("full").key_layers is None
    assert re.search(r"ReFreeKV \(threshold 0\.05\)\s+1 of 2 layers;\s+50\.0% of its rows", text)
    assert (tmp_path / "refreekv_demo_budgets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Trace.load(tmp_path / "refreekv_demo_trace.json").budgets.tolist() == [0.5, 0.25]


def test_sink_share_is_position_zeros_share_of_the_squared_attention():
    d = _fake_decision(0, 50, 100)
    d.last_attn = np.array([[0.6, 0.2, 0.2], [0.1, 0.3, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    expected = np.mean([0.36 / 0.44, 0.01 / 0.10, 0.0, 1.0])  # a head with no attention counts as 0
    np.testing.assert_allclose(demo.sink_share(Trace(layers=[d])), [expected], rtol=1e-6)
    assert np.isnan(demo.sink_share(Trace(layers=[_fake_decision(0, 50, 100)]))).all()  # no candidates


def test_command_line_arguments():
    parser = demo.add_arguments(__import__("argparse").ArgumentParser())
    args = parser.parse_args(
        ["--backend", "torch", "--out", "x", "--threshold", "0.01", "--no-plot", "--baseline-budget", "0"]
    )
    assert (args.backend, args.out, args.threshold, args.no_plot, args.baseline_budget) == (
        "torch",
        "x",
        0.01,
        True,
        0.0,
    )


@pytest.mark.slow
def test_real_demo_on_the_bundled_model(tmp_path):
    """The whole demo (~1.7k tokens, 3 runs). The full cache must find the key; ReFreeKV must shrink the cache."""
    pytest.importorskip("transformers")
    out = io.StringIO()
    result = demo.run_demo(backend="torch", out_dir=tmp_path, out=out, progress=False)
    assert 1400 <= result.prompt_tokens <= 2000
    assert result.run("full").correct
    assert result.run("H2O").correct
    refree = result.run("ReFreeKV")
    assert refree.stats["kv_bytes_kept"] < refree.stats["kv_bytes_full"]
    assert len(refree.budgets) == 30 and all(0 < b < 1 for b in refree.budgets)
    # the key is written twice in the needle; its digit tokens are what the survival report follows
    tokens = result.trace.tokens
    assert len(result.key_positions) == 10
    assert "".join(tokens[p] for p in result.key_positions).replace(" ", "") == result.prompt.passkey * 2
    assert np.asarray(refree.key_share).shape == (30, 3)
    assert result.run("H2O").key_layers >= 1  # the fixed 30% budget keeps the key whole somewhere
    assert (tmp_path / "refreekv_demo_budgets.png").exists()
