"""The browser in a real browser: Debian's chromium driven by Playwright (``executable_path`` = the system chromium;
``playwright install`` is never run), against the live server on loopback, the static export and the dashboard
from ``file://``, and JupyterLab rendering a paper notebook. Chromium is installed with apt-get when missing
(as root, like the Slurm tests install Slurm). Every failure leaves a screenshot in ``.browser_test_failures/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from neuron_lib import artifacts

REPO = Path(__file__).resolve().parents[1]
FAILURES = REPO / ".browser_test_failures"
NOTEBOOK = "paper_notebooks/properties_of_universal_neurons.ipynb"
TIMEOUT_MS = 60_000


def chromium_path() -> str:
    """The system chromium; installed with apt-get when missing and we are root (the CI machine)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("chromium is missing and cannot be installed here: apt-get install chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    found = shutil.which("chromium")
    assert found, "apt-get install chromium did not provide a chromium binary"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args} exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


@contextlib.contextmanager
def running(cmd: list[str], url: str, env: dict, cwd: Path = REPO):
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(url, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"], headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(data_root):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "neuron_lib.browser", "serve", "--port", str(port)]
    with running(cmd, f"http://127.0.0.1:{port}/api/models", env) as proc:
        yield f"http://127.0.0.1:{port}", proc


@pytest.fixture
def page(chromium, request):
    """A fresh page that may only talk to loopback and file:// (anything else is blocked and recorded)."""
    context = chromium.new_context()
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.external_requests = []
    pg.console_errors = []

    def guard(route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "http://localhost", "file://", "data:", "blob:")):
            route.continue_()
        else:
            pg.external_requests.append(url)
            route.abort()

    pg.route("**/*", guard)
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
    failed_before = request.session.testsfailed
    yield pg
    if request.session.testsfailed > failed_before:  # the call phase is reported before fixtures tear down
        FAILURES.mkdir(exist_ok=True)
        with contextlib.suppress(Exception):
            pg.screenshot(path=str(FAILURES / f"{request.node.name}.png"), full_page=True)
    context.close()


# ---------------------------------------------------------------- the served pages
def test_model_index_neuron_partner_search_docs(server, page):
    base, proc = server
    page.goto(base + "/")
    page.click("table.models a:text('bt-a')")
    page.wait_for_selector("h1:has-text('bt-a')")
    page.click("section:has(h2:has-text('universality')) ol a >> nth=0")
    page.wait_for_selector("#examples")
    assert page.locator(".ex.top").count() > 0
    assert page.locator("svg.hist rect").count() > 0
    token = page.locator(".ex.top .tok.t").first
    token.hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    float(tip.inner_text())  # the hovered token's value
    assert page.locator("#vocab table").count() >= 2
    # follow a cross-seed partner
    page.click("table.partners a >> nth=0")
    page.wait_for_url("**/model/bt-b/**")
    page.wait_for_selector("h1:has-text('bt-b')")
    assert page.locator(".ex.top").count() > 0
    # search
    page.goto(base + "/search")
    page.fill("input[name=filter]", "excess_corr>-10&layer=1")
    page.select_option("select[name=model]", "bt-a")
    page.click("#search-button")
    page.wait_for_selector("#results a.result")
    assert "50 results of 64" in page.inner_text("#results")
    assert page.locator("#results a.result").count() == 50
    page.click("#results a.result >> nth=0")
    page.wait_for_selector("#histogram")
    # a bad filter shows the parser's message, and the server keeps serving
    page.goto(base + "/search")
    page.fill("input[name=filter]", "__import__('os')>1")
    page.click("#search-button")
    page.wait_for_selector("#results:has-text('error')")
    # the offline API docs render their operations from local assets
    page.goto(base + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=TIMEOUT_MS)
    assert page.locator(".opblock").count() >= 6
    assert not page.external_requests, page.external_requests
    assert not page.console_errors, page.console_errors
    assert proc.poll() is None


def test_server_survives_malformed_requests(server):
    base, proc = server
    host, port = base.removeprefix("http://").split(":")
    for junk in (
        b"\x00\xff garbage\r\n\r\n",
        b"GET /api/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        b"POST /api/models HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(junk)
            with contextlib.suppress(OSError):
                reply = s.recv(200)
                assert b"root:" not in reply
    with urllib.request.urlopen(base + "/api/bt-a/0/0", timeout=5) as r:
        assert r.status == 200 and json.loads(r.read())["model"] == "bt-a"
    assert proc.poll() is None


def test_host_warning_when_not_loopback(data_root):
    port = free_port()
    cmd = [sys.executable, "-m", "neuron_lib.browser", "serve", "--host", "0.0.0.0", "--port", str(port)]
    with running(cmd, f"http://127.0.0.1:{port}/api/models", dict(os.environ)) as proc:
        pass
    assert "WARNING: binding 0.0.0.0" in proc.stdout.read()


# ---------------------------------------------------------------- files opened from file://
def test_dashboard_from_file_renders_plots(data_root, page):
    page.goto(artifacts.browser_dashboard().resolve().as_uri())
    page.wait_for_selector("#panel-network .main-svg")
    for panel in ("correlations", "properties", "layer_matches", "network"):
        assert page.locator(f"#panel-{panel} .main-svg").count() > 0, panel
    assert page.locator("#panel-properties .box").count() > 0 or page.locator("#panel-properties path").count() > 0
    assert not page.external_requests and not page.console_errors


def test_static_export_from_file(data_root, page):
    site = artifacts.browser_site()
    page.goto((site / "index.html").resolve().as_uri())
    page.click("table.models a:text('bt-a')")
    page.click("table.layers a >> nth=0")
    page.click("table.neurons a >> nth=3")
    page.wait_for_selector(".ex.top")
    assert page.locator("svg.hist rect").count() > 0
    page.goto((site / "search.html").resolve().as_uri())
    page.fill("#static-q", "layer=1&kurt>-100")
    page.click("#static-search button")
    page.wait_for_selector("#results a.result")
    page.click("#results a.result >> nth=0")
    page.wait_for_selector("#histogram")
    assert not page.external_requests and not page.console_errors


# ---------------------------------------------------------------- the notebooks' home
def test_jupyterlab_renders_a_paper_notebook(page, tmp_path):
    port, token = free_port(), "neuron-lib-test"
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
    )
    cmd = [
        str(Path(sys.executable).with_name("jupyter")),
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={REPO}",
        "--LabApp.news_url=",
        "--ServerApp.allow_remote_access=False",
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
    ]
    n_cells = len(json.loads((REPO / NOTEBOOK).read_text())["cells"])
    with running(cmd, f"http://127.0.0.1:{port}/api/status?token={token}", env):
        page.goto(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        page.wait_for_function(
            f"document.querySelectorAll('.jp-Notebook .jp-Cell').length >= {min(n_cells, 3)}", timeout=60_000
        )
        assert page.locator(".jp-Notebook .jp-MarkdownCell").count() > 0
        assert page.locator(".jp-Notebook .jp-CodeCell").count() > 0
        # code rendered by CodeMirror (a rendered markdown cell keeps a hidden editor: look in code cells)
        code = page.locator(".jp-Notebook .jp-CodeCell .jp-InputArea-editor .cm-content").first
        code.wait_for(state="visible")
        assert 'model = "zoo-gpt2-a"' in code.inner_text()
