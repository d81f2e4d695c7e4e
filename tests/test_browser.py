"""Notebook 06 driven live in JupyterLab through headless Chromium (Playwright).

A JupyterLab server (127.0.0.1, random free port, token auth, a temporary root holding a copy of
notebook 06 with its stored outputs and widget state removed) runs all cells with a real kernel in
the ``tiny`` profile; the test waits for the ``FeatureExplorer`` to render, switches the projection
method and the domain, and checks that the status line follows. A screenshot goes to
``test-artifacts/browser_06.png``. Skipped when ``/usr/bin/chromium`` is missing.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NOTEBOOK = "06_feature_space.ipynb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stripped_copy(src: Path, dst: Path) -> None:
    """Copy a notebook without outputs and stored widget state: only a live kernel can draw widgets."""
    nb = json.loads(src.read_text())
    nb["metadata"].pop("widgets", None)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    dst.write_text(json.dumps(nb))


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


def test_feature_explorer_live_in_jupyterlab(tmp_path: Path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (install the chromium package; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")

    root = tmp_path / "lab"
    root.mkdir()
    _stripped_copy(REPO / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "CLUDA_PROFILE": "tiny", "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE",
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "IPYTHONDIR": str(tmp_path / "ipython"), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers / CI often run as root
        cmd.append("--allow-root")
    log = tmp_path / "jupyterlab.log"
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with open(log, "w") as log_file:
        server = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", server, log)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
                page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=90_000)
                kernel_state = page.locator(".jp-StatusBar-TextItem", has_text="Python 3")
                sync_api.expect(kernel_state).to_contain_text("Idle", timeout=90_000)  # kernel started
                page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

                status = page.locator(".cluda-explorer .cluda-status")
                try:
                    sync_api.expect(status).to_contain_text(re.compile(r"^tsne · "), timeout=240_000)
                except AssertionError:
                    page.screenshot(path=str(artifacts / "browser_06_failure.png"), full_page=True)
                    outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
                    raise AssertionError(f"the explorer did not render; kernel: {kernel_state.inner_text()!r}; "
                                         f"last outputs: {outputs[-3:]}; server log:\n{log.read_text()[-2000:]}") from None
                first = status.inner_text()
                assert re.search(r"tsne · source_only · both · \d+ classes · \d+ points", first), first
                for css in ("cluda-method", "cluda-model", "cluda-domain", "cluda-classes", "cluda-plot"):
                    assert page.locator(f".cluda-explorer .{css}").count() == 1, css
                assert page.locator(".cluda-explorer .cluda-plot img").count() == 1

                status.scroll_into_view_if_needed()
                page.locator(".cluda-explorer .cluda-method select").select_option("umap")
                sync_api.expect(status).to_contain_text(re.compile(r"^umap · source_only · both"), timeout=120_000)
                page.locator(".cluda-explorer .cluda-domain button", has_text=re.compile(r"^real$")).click()
                sync_api.expect(status).to_contain_text(re.compile(r"^umap · source_only · real · "), timeout=120_000)
                assert status.inner_text() != first
                page.screenshot(path=str(artifacts / "browser_06.png"), full_page=False)
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
