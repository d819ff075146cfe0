"""Regression tests for the bad inputs of issue 20 (a careless user's probes), and two situations not tested before.

Each case once printed a raw traceback, failed only after expensive work, or was accepted silently; each now gets
a clear error before any model loads (or a correct, documented result):

- ``eval --out`` an unwritable path; ``eval --lengths 100000`` (the context comes from the model's GGUF header);
- ``fetch-model`` with ``REFREEKV_CACHE`` at a file; ``Trace.load`` of non-UTF-8 bytes;
- ``demo --model nonexistent`` (no output folder is left behind);
- ``max_new_tokens=np.int64(3)`` (numpy integers are integers, bools are not);
- ``decide_layer(layer="1" | True | 1.5 | -1)``; ``FixedBudget(True)``; a chat role ``"wizard"``; a
  ``preset_name=`` override naming another preset;
- two demos on the same ``--out`` at once (the second says the folder is busy; the folder ends consistent);
- a first model conversion killed mid-write (the next load removes the leftover and converts again).

Cheap fixtures stand in for the model wherever the model is not what is tested (the numpy toy model of
``tests/test_integration.py``, the demo's stand-in generate of ``tests/test_demo.py``, the tiny GGUF of
``tests/tiny_gguf.py``); nothing here loads the bundled model, and nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import refreekv_edu as rk
from refreekv_edu import cli, convert_cache, demo, models
from refreekv_edu.dir_lock import LOCK_NAME, FolderBusyError, folder_lock
from refreekv_edu.generate import CHAT_ROLES, check_prompt

TESTS = Path(__file__).resolve().parent
RNG = np.random.default_rng(0)
Q = RNG.standard_normal((4, 1, 16)).astype(np.float32)
K = RNG.standard_normal((2, 40, 16)).astype(np.float32)


def _bundled_gguf() -> Path:
    """The bundled GGUF in the default cache (never fetched here), else skip."""
    art = models.ARTIFACTS["smollm2-135m"]
    path = Path.home() / ".cache" / "refreekv_edu" / "smollm2-135m" / Path(art.member).name
    if not path.is_file() or path.stat().st_size != art.file_size:
        pytest.skip(f"the bundled GGUF is not at {path} (run `refreekv-edu fetch-model` once; tests never download)")
    return path


def _no_model_loads(monkeypatch):
    """Make any model load (or eval run) fail the test: the checks must come first."""

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "load_model", boom)
    from refreekv_edu.eval import runner

    monkeypatch.setattr(runner, "Runner", boom)


# ---------------------------------------------------------------------------------------------- eval
def test_eval_out_unwritable_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    _no_model_loads(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # A hub id: its context is unknown here (nothing is looked up), so the --out check is what refuses.
    code = cli.main(["eval", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("refreekv-edu eval: error: cannot write to the output directory")
    assert "choose another --out" in err and "Traceback" not in err


def test_eval_out_unwritable_in_a_real_process(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "refreekv_edu.cli", "eval", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct",
         "--out", str(blocker / "out")], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "cannot write" in proc.stderr


def test_eval_lengths_beyond_the_bundled_context_refused_before_loading(tmp_path, monkeypatch, capsys):
    gguf = _bundled_gguf()
    monkeypatch.setenv("REFREEKV_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "smollm2-135m").mkdir(parents=True)
    (tmp_path / "cache" / "smollm2-135m" / gguf.name).symlink_to(gguf)
    _no_model_loads(monkeypatch)
    assert models.context_length("smollm2-135m") == 8192  # llama.context_length in the GGUF header
    out = tmp_path / "out"
    code = cli.main(["eval", "--lengths", "100000", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--lengths 100000 does not fit: smollm2-135m's context is 8192 tokens (from its metadata)" in err
    assert not out.exists()  # nothing written either
    code = cli.main(["eval", "--lengths", "1024", "--speed-length", "9000", "--out", str(out)])
    assert code == 2 and "--speed-length 9000 does not fit" in capsys.readouterr().err


def test_the_context_is_read_from_the_model_metadata_not_guessed(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    from tiny_gguf import write_tiny_llama_gguf

    gguf = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(gguf, layers=1)  # llama.context_length = 256
    assert models.context_length(gguf) == 256
    _no_model_loads(monkeypatch)
    assert cli.main(["eval", "--model", str(gguf), "--lengths", "300", "--out", str(tmp_path / "o")]) == 2
    assert "context is 256 tokens" in capsys.readouterr().err
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 4096}}))
    assert models.context_length(folder) == 4096
    assert models.context_length("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # no network lookup


# ---------------------------------------------------------------------------------------------- fetch-model, traces
@pytest.mark.parametrize("below", [False, True], ids=["at-a-file", "below-a-file"])
def test_fetch_model_with_the_cache_at_a_file(tmp_path, monkeypatch, capsys, below):
    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    monkeypatch.setenv("REFREEKV_CACHE", str(blocker / "sub" if below else blocker))
    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: pytest.fail("pip ran before the check"))
    assert cli.main(["fetch-model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{blocker} is a file" in err and "Set REFREEKV_CACHE to a directory" in err
    with pytest.raises(ValueError, match="REFREEKV_CACHE"):
        rk.fetch_model()


def test_trace_load_of_non_utf8_bytes(tmp_path):
    path = tmp_path / "trace.json"
    data = b'{"layers": [], "tokens": ["\xff\xfe"]}'
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"not a trace: its bytes are not UTF-8 text \(byte {data.index(0xFF)} is 0xff\)"):
        rk.Trace.load(path)
    trace = rk.Trace(layers=[rk.ReFreeKV().decide_layer(Q, K, layer=3)], tokens=["é", "日本"], meta={"seed": 1})
    again = rk.Trace.load(trace.save(path))  # non-ASCII tokens round-trip; the save leaves no temporary file
    assert again.tokens == ["é", "日本"] and again.layers[0].kept.tolist() == trace.layers[0].kept.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.json"]


# ---------------------------------------------------------------------------------------------- demo
def test_demo_with_an_unknown_model_leaves_no_folder(tmp_path, monkeypatch, capsys):
    _no_model_loads(monkeypatch)
    out = tmp_path / "new" / "demo-out"
    assert cli.main(["demo", "--model", "nonexistent", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refreekv-edu demo: error: unknown model 'nonexistent'") and err.count("\n") == 1
    assert not (tmp_path / "new").exists()


def test_a_demo_whose_load_fails_removes_only_the_folders_it_created(tmp_path, monkeypatch):
    def fails(name, backend):
        raise RuntimeError("the model cannot load")

    monkeypatch.setattr(models, "load_model", fails)
    out = tmp_path / "made" / "by" / "demo"
    with pytest.raises(RuntimeError, match="cannot load"):
        demo.run_demo(backend="torch", out_dir=out, out=io.StringIO())
    assert list(tmp_path.iterdir()) == []  # made/by/demo all created by the run, all removed
    kept = tmp_path / "mine"
    (kept / "old.txt").parent.mkdir()
    (kept / "old.txt").write_text("the user's")
    with pytest.raises(RuntimeError):
        demo.run_demo(backend="torch", out_dir=kept / "sub", out=io.StringIO())
    assert sorted(p.name for p in kept.iterdir()) == ["old.txt"]  # sub removed, the user's folder left alone


_DEMO_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from test_demo import _fake_model
import refreekv_edu.generate, refreekv_edu.models
from refreekv_edu import demo
generate, calls, tok = _fake_model()

def load(name, backend):
    time.sleep({hold})  # hold the folder while the other process starts
    return "m", tok

sys.modules["refreekv_edu.models"].load_model = load
sys.modules["refreekv_edu.generate"].generate = generate  # the package exports a function named `generate` too
sys.exit(demo.main(["--out", {out!r}, "--no-plot", "--backend", "torch"]))
"""


def _demo_process(out: Path, hold: float) -> subprocess.Popen:
    script = _DEMO_SCRIPT.format(tests=str(TESTS), out=str(out), hold=hold)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_consistent(out: Path) -> None:
    """The folder holds one run's files: summary.json parses and every trace matches its runs; no lock, no temps."""
    names = sorted(p.name for p in out.iterdir())
    assert names == ["summary.json", "trace_1_short_paper.json", "trace_2_reading_paper.json",
                     "trace_3_repeat_paper.json", "trace_4_passkey_paper.json"]  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 16
    for i, prompt in enumerate(summary["prompts"], start=1):
        paper = next(r for r in summary["runs"] if r["prompt"] == prompt["label"] and r["method"] == "paper")
        trace = rk.Trace.load(out / f"trace_{i}_{prompt['task']}_paper.json")
        assert trace.budgets.tolist() == paper["layer_budgets"] and len(trace.tokens) == prompt["prompt_tokens"]


def test_two_demos_on_the_same_out(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "shared-out"
    first = _demo_process(out, hold=4.0)
    line = first.stdout.readline()  # printed once the first demo holds the folder's lock
    assert line.startswith("refreekv-edu demo: output directory"), line + first.stderr.read()
    second = _demo_process(out, hold=0.0)
    _, err2 = second.communicate(timeout=120)
    _, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 2 and "Traceback" not in err2
    assert f"another demo is writing to {out.resolve()} (pid {first.pid}, since" in err2
    _check_consistent(out)
    # Released on exit: a third run takes the folder, overwrites it whole and leaves it consistent.
    third = _demo_process(out, hold=0.0)
    _, err3 = third.communicate(timeout=120)
    assert third.returncode == 0, err3
    _check_consistent(out)


def test_a_killed_demo_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "out"
    holder = _demo_process(out, hold=60.0)
    assert holder.stdout.readline().startswith("refreekv-edu demo: output directory")
    with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
        with folder_lock(out.resolve(), "demo"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=30)
    assert (out / LOCK_NAME).exists()  # SIGKILL left the file, but the OS released the lock with the process
    with folder_lock(out.resolve(), "demo"):
        pass
    assert not (out / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------------- interrupted conversion
_CONVERT_SCRIPT = """
import sys, time
import mlx.core as mx
real = mx.save_safetensors

def slow_save(path, arrays, *args, **kwargs):
    real(path, arrays, *args, **kwargs)
    print("WRITTEN", flush=True)
    time.sleep(60)  # killed here: the weights are written, the manifest is not

mx.save_safetensors = slow_save
from refreekv_mlx import gguf_loader
gguf_loader.load_gguf_model({gguf!r}, dequantize=True)
"""


def test_a_first_conversion_killed_mid_write_is_recovered_by_the_next_load(tmp_path, monkeypatch):
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    from mlx.utils import tree_flatten
    from refreekv_mlx import gguf_loader
    from tiny_gguf import write_tiny_llama_gguf

    cache = tmp_path / "cache"
    monkeypatch.setenv("REFREEKV_CACHE", str(cache))
    gguf = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(gguf, layers=1)
    child = subprocess.Popen([sys.executable, "-c", _CONVERT_SCRIPT.format(gguf=str(gguf))], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "REFREEKV_CACHE": str(cache)})
    line = child.stdout.readline()
    assert line.strip() == "WRITTEN", line + child.stderr.read()
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    [root] = (cache / "converted").glob("tiny-*")
    [leftover] = root.iterdir()  # only the killed process's temporary folder: never a half final folder
    assert leftover.name.startswith(f"{convert_cache.TMP_PREFIX}{child.pid}-")
    assert (leftover / "weights.safetensors").exists() and not (leftover / convert_cache.MANIFEST).exists()

    deadline = time.time() + 10  # the pid is gone once the child is reaped
    while convert_cache._pid_alive(child.pid) and time.time() < deadline:
        time.sleep(0.1)
    model = gguf_loader.load_gguf_model(gguf, dequantize=True)
    [folder] = [p for p in root.iterdir()]  # the leftover removed, one complete folder
    assert folder.name.startswith("mlx-") and convert_cache.cache_is_complete(folder)
    uncached = gguf_loader.load_gguf_model(gguf, dequantize=True, cache=False)
    a, b = dict(tree_flatten(model.parameters())), dict(tree_flatten(uncached.parameters()))
    assert a.keys() == b.keys() and all(np.array_equal(np.array(a[k]), np.array(b[k])) for k in a)


# ---------------------------------------------------------------------------------------------- the core
def test_max_new_tokens_accepts_numpy_integers(monkeypatch):
    from test_integration import PROMPT, ToyAdapter, ToyModel

    from refreekv_edu.integration import generate

    policy = rk.ReFreeKV.preset("official-script", threshold=0.3)
    plain = generate(ToyAdapter(ToyModel(), policy), None, PROMPT, max_new_tokens=3, stop_at_eos=False)
    out = generate(ToyAdapter(ToyModel(), policy), None, PROMPT, max_new_tokens=np.int64(3), stop_at_eos=False,
                   seed=np.int32(0), temperature=np.float32(0.0))  # fmt: skip
    assert out.tokens == plain.tokens and len(out.tokens) == 3
    assert json.loads(out.trace.to_json())["meta"]["seed"] == 0  # a numpy seed still writes JSON
    for bad in (True, np.True_, 3.0, "3", 0, np.int64(-1)):
        with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
            generate(ToyAdapter(ToyModel(), policy), None, PROMPT, max_new_tokens=bad)
    # rk.generate: past the check to the model dispatch (this object belongs to no backend)
    with pytest.raises(TypeError, match="no installed backend knows models"):
        rk.generate(object(), None, PROMPT, max_new_tokens=np.int64(3))
    with pytest.raises(ValueError, match=r"got True \(bool\)"):
        rk.generate(object(), None, PROMPT, max_new_tokens=True)


@pytest.mark.parametrize("layer", ["1", True, np.True_, 1.5, -1, np.int64(-2)], ids=repr)
def test_decide_layer_refuses_layers_that_are_not_indices(layer):
    for call in (lambda: rk.ReFreeKV().decide_layer(Q, K, layer=layer), lambda: rk.ReFreeKV().prunes_layer(layer),
                 lambda: rk.ReFreeKV().full_layer_decision(40, 4, 2, layer)):  # fmt: skip
        with pytest.raises(ValueError, match=r"layer must be a layer index \(an int >= 0"):
            call()


def test_numpy_integer_layers_are_layers():
    policy = rk.ReFreeKV()
    for value in (0, 1, 7):
        a, b = policy.decide_layer(Q, K, layer=np.int64(value)), policy.decide_layer(Q, K, layer=value)
        assert a.layer == b.layer == value and type(a.layer) is int and a.full_layer == (value < 2)
        np.testing.assert_array_equal(a.kept, b.kept)
    assert policy.decide_layer(Q, K, layer=None).layer is None


@pytest.mark.parametrize("budget", [True, False, np.True_])
def test_fixed_budget_refuses_bools(budget):
    with pytest.raises(TypeError, match="a bool; write FixedBudget"):
        rk.FixedBudget(budget)
    assert rk.FixedBudget(np.float32(0.5)).budget == 0.5 and rk.FixedBudget(1).budget == 1.0


def test_unknown_chat_roles_are_refused_and_the_roles_named():
    with pytest.raises(ValueError, match="chat message 1 has role 'wizard'; the roles are: system, user, assistant, tool"):
        check_prompt([{"role": "user", "content": "hi"}, {"role": "wizard", "content": "abracadabra"}])
    with pytest.raises(ValueError, match="role 'wizard'"):
        rk.generate(object(), None, [{"role": "wizard", "content": "hi"}])  # before any model work
    check_prompt([{"role": r, "content": "x"} for r in CHAT_ROLES])


def test_a_preset_name_override_is_refused_or_applied_never_ignored():
    with pytest.raises(ValueError, match=r"names two presets; the preset is the first argument: "
                                         r"ReFreeKV.preset\('official-script', ...\)"):
        rk.ReFreeKV.preset("paper", preset_name="official-script")
    same = rk.ReFreeKV.preset("official-script", preset_name="official-script")
    assert same == rk.ReFreeKV.preset("official-script") and same.preset_name == "official-script"
    # Given to the constructor, preset_name is the baseline the fields are compared with (documented), and the repr
    # says so: nothing is ignored.
    labelled = rk.ReFreeKV(preset_name="official-script")
    assert labelled == rk.ReFreeKV() and labelled.changed == ("threshold", "sinks", "window", "ranking", "full_layers")
    assert repr(labelled).startswith("ReFreeKV(preset='official-script' changed threshold, sinks, window, ranking")

