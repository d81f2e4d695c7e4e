"""Notebook 06 driven live in JupyterLab through headless Chromium (Playwright): the
FeatureExplorer's controls, and the LinkedExplorer's zoom, lasso, gallery and linked views.

A JupyterLab server (127.0.0.1, random free port, token auth, a temporary root holding a copy of
notebook 06 with its stored outputs and widget state removed) runs all cells with a real kernel in
the ``tiny`` profile. The tests wait for the ``FeatureExplorer`` to render, switch the projection
method and the domain and check that the status line follows; then, in the ``LinkedExplorer``'s
two jupyter-scatter (WebGL) views, clear the notebook's selection with the explorer's button, zoom
view 1 with the mouse wheel, draw a lasso in it, check that the kernel's selection reaches view 2
(it redraws) and that the gallery of crops appears, and clear the selection with a double click.
A last test opens a generated notebook with 20 000 points per view and measures the frame rate
while zooming and panning (printed, and written to ``test-artifacts/explorer_browser_fps.json``).
Screenshots go to ``test-artifacts/browser_06*.png``. Skipped when ``/usr/bin/chromium`` is missing.
"""
from __future__ import annotations

import contextlib
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

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

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


@pytest.fixture(scope="module")
def playwright():
    """One Playwright driver for the module (a second sync one cannot start while one runs)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (install the chromium package; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    with sync_api.sync_playwright() as pw:
        yield pw, sync_api


@contextlib.contextmanager
def _jupyterlab(playwright, tmp_path: Path, notebook: Path, profile: str = "tiny"):
    """JupyterLab serving a folder that holds ``notebook`` (a stripped copy), the notebook open in
    headless Chromium, all its cells run with Run All: yields (page, sync_api, log, kernel state)."""
    pw, sync_api = playwright
    root = tmp_path / "lab"
    root.mkdir(parents=True)
    _stripped_copy(notebook, root / notebook.name)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "CLUDA_PROFILE": profile, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE",
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "IPYTHONDIR": str(tmp_path / "ipython"), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers / CI often run as root
        cmd.append("--allow-root")
    log = tmp_path / "jupyterlab.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", server, log)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{base}/lab/tree/{notebook.name}?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=90_000)
            kernel_state = page.locator(".jp-StatusBar-TextItem", has_text="Python 3")
            sync_api.expect(kernel_state).to_contain_text("Idle", timeout=90_000)  # kernel started
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            # every cell has run (no "[*]" prompt left, the kernel idle) before anything is clicked:
            # a click into an output while later cells still run must not race with them
            sync_api.expect(kernel_state).to_contain_text("Busy", timeout=60_000)
            sync_api.expect(page.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(0, timeout=600_000)
            sync_api.expect(kernel_state).to_contain_text("Idle", timeout=60_000)
            yield page, sync_api, log, kernel_state
        finally:
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def _errors(page) -> list[str]:
    """The texts of the error outputs (tracebacks) shown in the notebook."""
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()


@pytest.fixture(scope="module")
def notebook_06(playwright, tmp_path_factory):
    """Notebook 06 (tiny profile, outputs stripped) run to the end in JupyterLab in headless
    Chromium: yields (page, sync_api, artifacts, server log, kernel state)."""
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with _jupyterlab(playwright, tmp_path_factory.mktemp("browser"), REPO / "notebooks" / NOTEBOOK) as (page, sync_api, log, kernel):
        yield page, sync_api, artifacts, log, kernel


def test_feature_explorer_live_in_jupyterlab(notebook_06):
    page, sync_api, artifacts, log, kernel_state = notebook_06
    status = page.locator(".cluda-explorer .cluda-status")
    try:
        sync_api.expect(status).to_contain_text(re.compile(r"^tsne · "), timeout=240_000)
    except AssertionError:
        page.screenshot(path=str(artifacts / "browser_06_failure.png"), full_page=True)
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        raise AssertionError(f"the explorer did not render; kernel: {kernel_state.inner_text()!r}; "
                             f"last outputs: {outputs[-3:]}; server log:\n{log.read_text()[-2000:]}") from None
    status.scroll_into_view_if_needed()
    first = status.text_content()
    assert re.search(r"tsne · source_only · both · \d+ classes · \d+ points", first), first
    for css in ("cluda-method", "cluda-model", "cluda-domain", "cluda-classes", "cluda-plot"):
        assert page.locator(f".cluda-explorer .{css}").count() == 1, css
    assert page.locator(".cluda-explorer .cluda-plot img").count() == 1

    status.scroll_into_view_if_needed()
    page.locator(".cluda-explorer .cluda-method select").select_option("umap")
    sync_api.expect(status).to_contain_text(re.compile(r"^umap · source_only · both"), timeout=120_000)
    page.locator(".cluda-explorer .cluda-domain button", has_text=re.compile(r"^real$")).click()
    sync_api.expect(status).to_contain_text(re.compile(r"^umap · source_only · real · "), timeout=120_000)
    assert status.text_content() != first
    page.screenshot(path=str(artifacts / "browser_06.png"), full_page=False)


SMOOTH_POINTS = 20_000
"""Points per view of the smoothness measurement (the issue's bar for the scatter library)."""


def _synthetic_notebook(path: Path, n: int) -> Path:
    """A notebook showing a LinkedExplorer of two synthetic models' features of the same ``n``
    points (19 classes, 2 domains, PCA): fast to run, and as many points as wanted."""
    import nbformat

    code = f"""import numpy as np
from cluda_kit.analysis.explorer import LinkedExplorer
from cluda_kit.analysis.features import FeatureSet

rng = np.random.default_rng(0)
n = {n}
labels, domain, image = rng.integers(0, 19, n), rng.integers(0, 2, n), rng.integers(0, 8, n)
pixel = np.stack([rng.integers(0, 64, n), rng.integers(0, 128, n)], 1)
centres = rng.normal(0, 3, (19, 16))
prediction = np.where(rng.random(n) < 0.8, labels, (labels + 1) % 19)
sets = {{name: FeatureSet(centres[labels] + rng.normal(0, spread, (n, 16)), labels, domain, ("game", "real"), name,
                         image_index=image, pixel=pixel, confidence=rng.uniform(0.3, 1.0, n), prediction=prediction)
        for name, spread in (("daformer", 1.5), ("cluda", 1.0))}}
picture = rng.integers(0, 256, (3, 64, 128), dtype=np.uint8)
linked = LinkedExplorer(sets, lambda domain, i: picture, method="pca", seed=0)
linked"""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _views(box, sync_api, timeout: float = 300_000):
    """The two scatter views' canvases (the two largest canvases in the explorer), once drawn."""
    sync_api.expect(box.locator("canvas").first).to_be_visible(timeout=timeout)
    box.scroll_into_view_if_needed()
    canvases = box.locator("canvas")
    sized = []
    for i in range(canvases.count()):
        b = canvases.nth(i).bounding_box()
        if b and b["width"] > 100 and b["height"] > 100:
            sized.append((b["x"], canvases.nth(i), b))
    assert len(sized) >= 2, f"expected two scatter canvases, found {[(round(b['width']), round(b['height'])) for _, _, b in sized]}"
    sized.sort(key=lambda t: t[0])  # left to right
    return [(c, b) for _, c, b in sized[:2]]


def _toolbar(box, view: dict) -> list:
    """The buttons of a view's jupyter-scatter toolbar (down its left edge: pan & zoom, lasso, ...)."""
    buttons, found = box.locator("button"), []
    for i in range(buttons.count()):
        b = buttons.nth(i).bounding_box()
        if b and view["x"] - 60 <= b["x"] <= view["x"] + 60 and view["y"] - 10 <= b["y"] <= view["y"] + view["height"]:
            found.append((b["y"], buttons.nth(i)))
    return [button for _, button in sorted(found, key=lambda t: t[0])]


VIEW_STATE = """box => [...new Set([...box.querySelectorAll("canvas")].map(c => c.parentElement?.parentElement?.api)
                                   .filter(Boolean))].map(api => ({selected: api.get("selectedPoints").length,
                                                                   mode: api.get("mouseMode")}))"""
"""Each view's own regl-scatterplot state, left to right: how many points it holds selected and its
mouse mode (jupyter-scatter keeps the scatterplot at ``.api`` of the canvas's container)."""


def _view_state(box) -> list[dict]:
    return box.evaluate(VIEW_STATE)


def _wait_for_views(page, box, test: str, timeout: float = 30_000) -> None:
    """Wait until every view's state (``VIEW_STATE``, as ``views``) satisfies the JavaScript ``test``."""
    page.wait_for_function(f"([box]) => {{ const views = ({VIEW_STATE})(box); return views.length >= 2 && ({test}); }}",
                           arg=[box.element_handle()], timeout=timeout)


def _lasso(page, cx: float, cy: float, r: float) -> None:
    """A freeform lasso drag around (cx, cy): a closed square loop of half-width r."""
    page.mouse.move(cx - r, cy - r)
    page.mouse.down()
    for px, py in ((cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r), (cx - r, cy - r + 2)):
        page.mouse.move(px, py, steps=15)
    page.mouse.up()


def test_linked_explorer_zoom_lasso_gallery_and_linked_highlight(notebook_06):
    """Two jupyter-scatter views of the same pixels: the clear button empties the selection made from
    code, the mouse wheel zooms view 1, a lasso drawn in view 1 (its lasso tool, then a drag) selects
    points, the kernel-side selection reaches view 2 (its canvas redraws with the unselected points
    faded), the gallery of crops appears, and a double click into view 1 clears the selection."""
    page, sync_api, artifacts, log, kernel_state = notebook_06
    box = page.locator(".cluda-linked-explorer")
    status = box.locator(".cluda-status")
    try:
        box.first.wait_for(state="attached", timeout=420_000)
        box.scroll_into_view_if_needed()
        sync_api.expect(status).to_contain_text(re.compile(r"points shown"), timeout=60_000)
        (view1, b1), (view2, b2) = _views(box, sync_api)
        # the notebook's next cell selected up to 16 points of one class from code
        sync_api.expect(status).to_contain_text(re.compile(r"\b([1-9]|1[0-6]) selected \("), timeout=60_000)
    except (AssertionError, sync_api.TimeoutError) as e:  # expect() raises the one, wait_for() the other
        page.screenshot(path=str(artifacts / "browser_06_linked_failure.png"), full_page=False)
        raise AssertionError(f"the linked explorer did not render: {e}; errors in the notebook: {_errors(page)}; "
                             f"server log:\n{log.read_text()[-2000:]}") from None
    assert not _errors(page), _errors(page)
    # the explorer's "clear selection" button clears the kernel's selection in every view. Not a
    # double click here: the notebook selected from code right after displaying the explorer, and a
    # view still drawing its points then drops that selection (jupyter-scatter), so view 1 may hold
    # none and its double click, which clears only what the view holds, changes nothing (seen with
    # the stand-in models). The kernel is idle first: the explorer test before this one leaves it
    # projecting. The double click is checked below, on the selection view 1's lasso makes.
    sync_api.expect(kernel_state).to_contain_text("Idle", timeout=180_000)
    box.locator("button.cluda-clear").click()
    try:
        sync_api.expect(status).to_contain_text(re.compile(r"\b0 selected"), timeout=60_000)
        _wait_for_views(page, box, "views.every(v => v.selected === 0)")
    except (AssertionError, sync_api.TimeoutError) as e:
        raise AssertionError(f"the clear button did not clear the selection: {e}; views: {_view_state(box)}; "
                             f"kernel {kernel_state.text_content()!r}") from None
    sync_api.expect(box.locator(".cluda-gallery img")).to_have_count(0, timeout=60_000)
    box.scroll_into_view_if_needed()
    (view1, b1), (view2, b2) = _views(box, sync_api)
    cx, cy = b1["x"] + b1["width"] / 2, b1["y"] + b1["height"] / 2
    before1, before2 = view1.screenshot(), view2.screenshot()
    page.mouse.move(cx, cy)
    for _ in range(3):
        page.mouse.wheel(0, 240)  # zoom out: every point gathers near the centre, inside the lasso below
        page.wait_for_timeout(150)
    page.wait_for_timeout(800)
    zoomed = view1.screenshot()
    assert zoomed != before1, "the mouse wheel did not zoom view 1"
    page.screenshot(path=str(artifacts / "browser_06_linked_zoom.png"), full_page=False)
    tools = _toolbar(box, b1)
    assert len(tools) >= 2, f"{len(tools)} toolbar buttons found at view 1"
    tools[1].click()  # "Activate lasso selection"
    _wait_for_views(page, box, 'views[0].mode === "lasso"')
    _lasso(page, cx, cy, min(b1["width"], b1["height"]) * 0.3)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(artifacts / "browser_06_linked_lasso.png"), full_page=False)
    try:
        sync_api.expect(status).to_contain_text(re.compile(r"\b[1-9]\d* selected"), timeout=120_000)
    except AssertionError as e:
        raise AssertionError(f"the lasso's selection did not reach the kernel: {e}; kernel {kernel_state.text_content()!r}; "
                             f"server log:\n{log.read_text()[-4000:]}") from None
    n = int(re.search(r"(\d+) selected", status.text_content()).group(1))
    assert n > 0
    sync_api.expect(box.locator(".cluda-gallery img")).to_have_count(1, timeout=120_000)
    page.wait_for_timeout(1000)
    assert view2.screenshot() != before2, "view 2 did not redraw with the selection"
    box.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "browser_06_linked.png"), full_page=False)
    # a double click into view 1 deselects (regl-scatterplot) what its lasso selected; the kernel
    # clears the gallery. Pan & zoom first: in lasso mode a press alone starts a lasso. Should the
    # double click land on a point, its first click selects that point and the double click clears it
    tools[0].click()  # "Activate pan & zoom"
    _wait_for_views(page, box, 'views[0].mode === "panZoom" && views[0].selected > 0')
    (view1, b1), _ = _views(box, sync_api)
    page.mouse.dblclick(b1["x"] + b1["width"] / 2, b1["y"] + b1["height"] / 2)
    try:
        sync_api.expect(status).to_contain_text(re.compile(r"\b0 selected"), timeout=60_000)
    except AssertionError as e:
        raise AssertionError(f"the double click did not clear the selection: {e}; views: {_view_state(box)}; "
                             f"kernel {kernel_state.text_content()!r}") from None
    sync_api.expect(box.locator(".cluda-gallery img")).to_have_count(0, timeout=60_000)
    print(f"\nlinked explorer: a lasso in view 1 selected {n} points; view 2 redrew; the gallery appeared; "
          "a double click cleared the selection")


def test_linked_explorer_stays_smooth_at_20000_points_per_view(playwright, tmp_path):
    """Frames per second while zooming and panning two linked views of 20 000 points each
    (requestAnimationFrame timestamps over the interaction), printed and kept as an artifact."""
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    nb = _synthetic_notebook(tmp_path / "explorer_20000.ipynb", SMOOTH_POINTS)
    with _jupyterlab(playwright, tmp_path / "serve", nb) as (page, sync_api, log, kernel_state):
        box = page.locator(".cluda-linked-explorer")
        try:
            box.first.wait_for(state="attached", timeout=300_000)
            sync_api.expect(box.locator(".cluda-status")).to_contain_text(f"{SMOOTH_POINTS} points shown", timeout=60_000)
            (view1, b1), (view2, b2) = _views(box, sync_api)
            sync_api.expect(kernel_state).to_contain_text("Idle", timeout=120_000)
        except AssertionError as e:
            page.screenshot(path=str(artifacts / "browser_explorer_20000_failure.png"), full_page=False)
            raise AssertionError(f"the 20 000-point explorer did not render: {e}; errors: {_errors(page)}; "
                                 f"server log:\n{log.read_text()[-2000:]}") from None
        page.wait_for_timeout(2000)  # let the first draw and the legend settle
        page.evaluate("""() => { window.__frames = []; const tick = (t) => { window.__frames.push(t);
                          if (window.__frames.length < 200000) requestAnimationFrame(tick); }; requestAnimationFrame(tick); }""")
        page.wait_for_timeout(1000)
        idle = page.evaluate("() => window.__frames.length")
        t0 = page.evaluate("() => performance.now()")
        cx, cy = b1["x"] + b1["width"] / 2, b1["y"] + b1["height"] / 2
        steps = 0
        for k in range(4):  # zoom in and out, then pan, each a burst of input events
            page.mouse.move(cx, cy)
            for _ in range(8):
                page.mouse.wheel(0, -120 if k % 2 == 0 else 120)
                page.wait_for_timeout(40)
                steps += 1
            page.mouse.move(cx - 80, cy - 60)
            page.mouse.down()
            page.mouse.move(cx + 80, cy + 60, steps=20)
            page.mouse.up()
            steps += 1
        page.wait_for_timeout(200)
        t1 = page.evaluate("() => performance.now()")
        frames = page.evaluate(f"() => window.__frames.filter(t => t >= {t0} && t <= {t1})")
        page.screenshot(path=str(artifacts / "browser_explorer_20000.png"), full_page=False)
    import statistics

    gaps = [b - a for a, b in zip(frames, frames[1:])]
    result = {"points_per_view": SMOOTH_POINTS, "views": 2, "interaction_s": round((t1 - t0) / 1000, 2),
              "input_bursts": steps, "frames": len(frames),
              "fps": round((len(frames) - 1) / ((frames[-1] - frames[0]) / 1000), 1) if len(frames) > 1 else 0.0,
              "frame_ms_median": round(statistics.median(gaps), 1) if gaps else None,
              "frame_ms_p95": round(sorted(gaps)[int(0.95 * (len(gaps) - 1))], 1) if gaps else None,
              "frame_ms_max": round(max(gaps), 1) if gaps else None, "idle_frames_per_s": idle,
              "renderer": "headless Chromium, WebGL on SwiftShader (software, CPU)"}
    (artifacts / "explorer_browser_fps.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{SMOOTH_POINTS} points per view, 2 linked views: {result['fps']} frames/s while zooming and panning "
          f"(frame time median {result['frame_ms_median']} ms, p95 {result['frame_ms_p95']} ms, max {result['frame_ms_max']} ms; "
          f"{result['renderer']})")
    # measured 13.7-14.0 frames/s here (bench/results/explorer_browser.md), 7.1 with the machine at load 6.5:
    # the floor catches a view that stops redrawing, not a slow shared machine
    assert result["fps"] >= 4, result
