"""The panel in a real browser: JupyterLab on localhost, Debian's chromium driven by
Playwright. Opens a notebook, runs the panel cell, types a script, clicks Run, waits
for the output and the exit status in the page, clicks Stop on a long script.
Screenshots go to test-artifacts/."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from playwright import sync_api as playwright_api   # installed by `make test`; no skip

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A token-less JupyterLab on localhost, serving a temporary root dir."""
    root = tmp_path / "root"
    root.mkdir()
    notebook = new_notebook(cells=[new_code_cell("%load_ext sandbox_magic"),
                                   new_code_cell("panel = %sandbox panel\npanel")],
                            metadata={"kernelspec": {"name": "python3", "language": "python",
                                                     "display_name": "Python 3"}})
    nbformat.write(notebook, root / "panel-browser.ipynb")
    port = free_port()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={root}",
         "--ServerApp.disable_check_xsrf=True",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"), env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as reply:
                json.load(reply)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text())
            time.sleep(0.25)
    yield url
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture
def page():
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def run_all_cells_until_shown(page, panel) -> None:
    """Run > Run All Cells, until the panel shows: right after the page loads, the
    kernel may not take the first request yet."""
    for attempt in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            panel.wait_for(timeout=20_000)
            return
        except playwright_api.TimeoutError:
            page.screenshot(path=str(ARTIFACTS / f"panel-not-shown-{attempt}.png"))
    panel.wait_for(timeout=1000)


def type_script(page, panel, script: str) -> None:
    """Type into the editor, then wait until the kernel has it: the panel shows the
    digest of the script it holds. (ipywidgets may hold a value update back while a
    button's click message goes out: a click right after typing could run the old one.)"""
    panel.locator(".sandbox-magic-script textarea").fill(script)
    digest = hashlib.sha256(script.encode()).hexdigest()[:12]
    panel.locator(".sandbox-magic-script-info", has_text=digest).wait_for()


def test_panel_in_jupyterlab(lab, page):
    try:
        drive_the_panel(lab, page)
    except Exception:
        # What the page showed, for the one reading the CI log.
        page.screenshot(path=str(ARTIFACTS / "panel-failure.png"), full_page=True)
        print("panel text at failure:\n" + page.locator(".jp-Notebook").inner_text(timeout=5000))
        raise


def drive_the_panel(lab, page):
    page.goto(f"{lab}/lab/tree/panel-browser.ipynb")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           state="attached", timeout=60_000)
    panel = page.locator(".sandbox-magic-panel")
    run_all_cells_until_shown(page, panel)
    run = panel.locator("button", has_text="Run")
    stop = panel.locator("button", has_text="Stop")
    status = panel.locator(".sandbox-magic-status")
    output = panel.locator(".sandbox-magic-output")

    # An invalid field: a message next to it, and Run disabled.
    timeout_field = panel.locator("input[placeholder='seconds (none)']")
    timeout_field.fill("soon")
    page.wait_for_function("() => document.querySelector('.sandbox-magic-panel')"
                           ".innerText.includes('is not a positive number')")
    assert run.is_disabled()
    timeout_field.fill("")

    type_script(page, panel, "echo hello from the browser\nexit 3")
    page.wait_for_function("() => !document.querySelector('.sandbox-magic-panel button')"
                           ".disabled")
    page.wait_for_function("() => document.querySelector('.sandbox-magic-panel')"
                           ".innerText.includes('%%sandbox')")   # the line preview
    run.click()
    output.get_by_text("hello from the browser").wait_for()
    page.wait_for_function("() => document.querySelector('.sandbox-magic-status')"
                           ".innerText.includes('exited with status 3')")
    page.screenshot(path=str(ARTIFACTS / "panel-run.png"), full_page=True)

    type_script(page, panel, "echo long-running\nsleep 60")
    run.click()
    output.get_by_text("long-running").wait_for()
    assert stop.is_enabled()
    page.screenshot(path=str(ARTIFACTS / "panel-running.png"), full_page=True)
    started = time.monotonic()
    stop.click()
    page.wait_for_function("() => document.querySelector('.sandbox-magic-status')"
                           ".innerText.includes('stopped')")
    assert time.monotonic() - started < 10
    assert "stopped (killed by signal" in status.inner_text()
    page.screenshot(path=str(ARTIFACTS / "panel-stopped.png"), full_page=True)
