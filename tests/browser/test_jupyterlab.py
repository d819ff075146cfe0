"""Real-browser check: JupyterLab + Chromium render the DecisionExplorer, and the slider talks to the kernel.

What it does:
1. writes a small notebook (DecisionExplorer, StepThrough, ThresholdPlayground) into a temp dir and starts JupyterLab there (localhost, random free port,
   no token, isolated config/runtime dirs, the news/announcement pop-up disabled);
2. drives Debian's Chromium through Playwright: opens the notebook, runs all cells, waits for the widget's
   slider and coloured tokens to render;
3. checks that layer 0 (a full layer of the paper's preset) says so, then presses the right-arrow key on
   the layer slider twice and waits for the kernel to send back layer 1's, then layer 2's summary (a full
   front-end -> kernel -> front-end round trip); layer 2 shows the 4 sinks in their own colour;
4. saves screenshots (page and widget) under the test's tmp dir, copied to ``$REFREEKV_ARTIFACTS`` if set.

Needs: ``apt-get install -y chromium`` (or ``$REFREEKV_CHROMIUM`` pointing at a Chromium binary) and
``pip install playwright jupyterlab ipywidgets ipykernel``. Never ``playwright install``: the test uses the
system Chromium. Skipped with the reason when any of them is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser]
if importlib.util.find_spec("pytest_timeout") is not None:  # the dev extra has it; a hard stop for a hung browser
    pytestmark.append(pytest.mark.timeout(420))

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

NOTEBOOK_CELLS = [
    "from refreekv_edu.widgets import DecisionExplorer, synthetic_trace\n"
    "trace = synthetic_trace(num_layers=6, prompt_len=48)\n"
    "explorer = DecisionExplorer(trace)\n"
    "explorer",
    "print('budgets', [round(float(b), 3) for b in trace.budgets])",
    "from refreekv_edu.widgets import StepThrough\nStepThrough(trace.layers[4], tokens=trace.tokens)",
    "from refreekv_edu.widgets import ThresholdPlayground\nThresholdPlayground(trace)",
]


def find_chromium() -> str | None:
    """``$REFREEKV_CHROMIUM``, else Debian's ``/usr/bin/chromium``, else ``chromium`` on the PATH."""
    for candidate in (os.environ.get("REFREEKV_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def start_jupyterlab(root: Path, port: int) -> subprocess.Popen:
    """Start JupyterLab on ``127.0.0.1:port`` serving ``root``, with every per-user directory inside ``root``."""
    config = root / ".jupyter-config"
    (config / "labconfig").mkdir(parents=True)
    # No "would you like news?" toast over the screenshot.
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTER_RUNTIME_DIR=str(root / ".jupyter-runtime"),
        JUPYTER_DATA_DIR=str(root / ".jupyter-data"),  # the lab extensions and kernel still come from sys.prefix
        IPYTHONDIR=str(root / ".ipython"),
    )
    log = open(root / "jupyterlab.log", "w")  # noqa: SIM115 - closed with the process
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI containers run as root
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, to run all cells through a command
        f"--LabApp.user_settings_dir={root / '.lab-settings'}",
        f"--LabApp.workspaces_dir={root / '.lab-workspaces'}",
    ]
    # Own process group, so the kernels it spawns are stopped with it.
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_up(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer on {url} within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server we started and its process group (its kernels)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def save_artifacts(paths: list[Path]) -> None:
    target = os.environ.get("REFREEKV_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copy2(p, Path(target) / p.name)


def displayed_kept(page) -> list[int]:
    """Positions the rendered widget shows as kept or protected, read from the spans' data-pos."""
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('.rk-decision-explorer .rk-tokens span'))"
        ".filter(s => ['rk-kept', 'rk-window', 'rk-sink'].some(c => s.classList.contains(c)))"
        ".map(s => Number(s.dataset.pos))"
    )


KERNEL_READY = """() => {
    const ctx = window.jupyterapp.shell.currentWidget?.sessionContext;
    const kernel = ctx?.session?.kernel;
    return !!kernel && kernel.status === 'idle' && kernel.connectionStatus === 'connected';
}"""


def wait_for_kernel(page, timeout: float = 90.0) -> None:
    """Wait until the notebook's kernel is connected and idle, accepting the "Select Kernel" dialog if it shows.

    JupyterLab sometimes asks which kernel to start (when it opens the notebook before it has listed the
    kernel specs); the notebook's metadata already names python3, so accepting the proposed one is right.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        if accept.count() and accept.first.is_visible():
            accept.first.click()
        if page.evaluate(KERNEL_READY):
            return
        page.wait_for_timeout(500)
    raise TimeoutError(f"the notebook's kernel was not connected and idle within {timeout:.0f}s")


def drive_notebook(page, url: str, shots: list[Path]) -> None:
    """Open the notebook, run it, check the widget against the trace, move the slider, take the screenshots."""
    from refreekv_edu.widgets import synthetic_trace

    trace = synthetic_trace(num_layers=6, prompt_len=48)  # the same trace the notebook makes (same seed)
    assert trace.layers[0].full_layer and not trace.layers[2].full_layer  # the paper's preset
    page.goto(f"{url}/lab/tree/explorer.ipynb", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    page.wait_for_function("() => window.jupyterapp !== undefined")
    wait_for_kernel(page)
    # Fire and forget: the command's promise may settle much later; the waits below are the check.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

    widget = page.locator(".rk-decision-explorer")
    widget.wait_for(state="visible")
    page.wait_for_selector(".rk-decision-explorer .widget-slider")
    page.wait_for_selector(".rk-decision-explorer .rk-tokens .rk-kept")
    page.wait_for_function("() => document.querySelectorAll('.rk-decision-explorer img').length === 3")
    text = widget.inner_text()
    assert "layer 0" in text and "full layer: never pruned (paper, Appendix B)" in text
    assert displayed_kept(page) == trace.layers[0].kept[0].tolist() == list(range(48))
    assert page.locator(".rk-decision-explorer .rk-tokens .rk-sink").count() == 0

    # Front end -> kernel -> front end: move the layer slider one step at a time with the keyboard.
    handle = page.locator(".rk-decision-explorer .widget-slider .noUi-handle").first
    for layer in (1, 2):
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            f"() => document.querySelector('.rk-decision-explorer').innerText.includes('layer {layer} (')"
        )
        wait_for_kernel(page)  # the kernel is done redrawing this layer's plots
    assert displayed_kept(page) == trace.layers[2].kept[0].tolist()
    assert page.locator(".rk-decision-explorer .rk-tokens .rk-sink").count() == 4
    assert "sink, kept, outside the metric" in widget.inner_text()
    page.locator(".jp-OutputArea-output pre", has_text="budgets").wait_for()
    widget.scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # let the new images paint before the screenshot
    page.screenshot(path=str(shots[0]))
    widget.screenshot(path=str(shots[1]))

    # StepThrough: the Next button goes through the kernel; Play animates the slider in the browser alone
    # (jslink), and the kernel follows it.
    stepper = page.locator(".rk-step-through")
    stepper.wait_for(state="visible")
    assert "Step e = 0 of n = 44" in stepper.inner_text()  # 48 positions - 4 sinks
    stepper.get_by_role("button", name="Next ▶").click()
    page.wait_for_function("() => document.querySelector('.rk-step-through').innerText.includes('Step e = 1 of')")
    stepper.locator(".widget-play button").first.click()
    page.wait_for_function(
        "() => /Step e = ([3-9]|[1-3][0-9]) of/.test(document.querySelector('.rk-step-through').innerText)"
    )
    stepper.locator(".widget-play button").first.click()  # the play button pauses while playing
    wait_for_kernel(page)
    stepper.scroll_into_view_if_needed()
    stepper.screenshot(path=str(shots[2]))

    # ThresholdPlayground: one keyboard step of the threshold slider (0.010 -> 0.011) re-decides in the kernel.
    playground = page.locator(".rk-threshold-playground")
    playground.wait_for(state="visible")
    assert "threshold 0.010" in playground.inner_text()
    playground.locator(".widget-slider .noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "() => document.querySelector('.rk-threshold-playground').innerText.includes('threshold 0.011')"
    )
    wait_for_kernel(page)
    playground.scroll_into_view_if_needed()
    playground.screenshot(path=str(shots[3]))


def test_decision_explorer_renders_and_reacts_in_jupyterlab(tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium: apt-get install -y chromium (or set REFREEKV_CHROMIUM to a Chromium binary)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (do not run playwright install)"
    )
    pytest.importorskip("jupyterlab", reason="pip install jupyterlab")
    pytest.importorskip("ipywidgets", reason="pip install ipywidgets")
    pytest.importorskip("ipykernel", reason="pip install ipykernel")

    started = time.monotonic()
    write_notebook(tmp_path / "explorer.ipynb")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_jupyterlab(tmp_path, port)
    shots = [
        tmp_path / "jupyterlab_decision_explorer.png",
        tmp_path / "decision_explorer_widget.png",
        tmp_path / "step_through_widget.png",
        tmp_path / "threshold_playground_widget.png",
    ]
    try:
        wait_until_up(proc, url, tmp_path / "jupyterlab.log")
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            try:
                drive_notebook(page, url, shots)
            except Exception:
                failure = tmp_path / "jupyterlab_failure.png"
                page.screenshot(path=str(failure))
                save_artifacts([failure, tmp_path / "jupyterlab.log"])
                raise
            finally:
                browser.close()
    finally:
        stop(proc)
    save_artifacts(shots)
    for shot in shots:
        assert shot.stat().st_size > 10_000, f"{shot} looks empty"
    print(f"browser check took {time.monotonic() - started:.1f}s; screenshots: {[str(s) for s in shots]}")
