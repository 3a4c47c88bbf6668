"""What the browser tests share: the app server, the headless browser, and waits.

`streamlit_app` starts the README's own command, `streamlit run app.py`, from the
repository root (the shipped .streamlit/config.toml: loopback, headless, no file watcher)
on a free loopback port given by STREAMLIT_SERVER_PORT, as a deployment would set it, with
extra environment variables (another registry, an audit database, an administrator
password hash); preloading is on, as for a user. `chromium_context` is Debian's chromium
with a fresh profile of its own. Importing this module skips the importing test module
when the browser or the Python package `playwright` is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
SERVER_START_TIMEOUT_S = 90
UI_TIMEOUT_MS = 30_000
RESULT_TIMEOUT_MS = 150_000  # a first analysis may load a model on a loaded machine
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (install it with .ci/install-browser.sh)", allow_module_level=True)
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("the Python package 'playwright' is not installed (see requirements-dev.txt)", allow_module_level=True)

__all__ = ["REPO", "ARTIFACTS", "CHROMIUM", "CHROMIUM_ARGS", "UI_TIMEOUT_MS", "RESULT_TIMEOUT_MS", "StreamlitServer",
           "free_port", "healthy", "streamlit_app", "chromium_context", "open_page", "running_indicator",
           "wait_until_idle", "choose", "nav_link", "report_failure", "expect"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200 and resp.read().strip() == b"ok"
    except OSError:
        return False


class StreamlitServer:
    def __init__(self, url: str, proc: subprocess.Popen, log_path: Path):
        self.url = url
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def streamlit_app(log_path: Path, env: Mapping[str, str] | None = None) -> Iterator[StreamlitServer]:
    """`streamlit run app.py` on a free port, with `env` added to this process's environment;
    yields once it answers /_stcore/health, stops it (and its process group) afterwards."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", STREAMLIT_SERVER_PORT=str(port), **(env or {}))
    full_env.pop("XRAY_AI_PRELOAD", None)  # tests/conftest.py turns preloading off for in-process page tests
    cmd = [str(Path(sys.executable).with_name("streamlit")), "run", "app.py"]
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)
        server = StreamlitServer(f"http://127.0.0.1:{port}", proc, log_path)
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while not healthy(f"{server.url}/_stcore/health"):
                if proc.poll() is not None:
                    pytest.fail(f"streamlit exited with {proc.returncode} before answering:\n{server.log()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not answer /_stcore/health within {SERVER_START_TIMEOUT_S} s:\n"
                                f"{server.log()}")
                time.sleep(0.25)
            yield server
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)


@contextlib.contextmanager
def chromium_context(viewport: Mapping[str, int] | None = None):
    """A Playwright browser context of Debian's chromium, headless, with a fresh profile."""
    profile = tempfile.mkdtemp(prefix="xray_ai-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                accept_downloads=True,
                viewport=dict(viewport or {"width": 1400, "height": 1000}),
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def running_indicator(page):
    return page.get_by_test_id("stStatusWidget")  # shown while the script reruns


def wait_until_idle(page, timeout_ms: int = RESULT_TIMEOUT_MS) -> None:
    expect(running_indicator(page)).to_have_count(0, timeout=timeout_ms)


def open_page(context, server: StreamlitServer, path: str = ""):
    """(page, console errors) of a new tab at `server.url/path`, once the app has painted."""
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    page.goto(f"{server.url}/{path.lstrip('/')}", wait_until="domcontentloaded", timeout=60_000)
    expect(page.get_by_test_id("stMain").get_by_role("heading").first).to_be_visible(timeout=60_000)
    wait_until_idle(page)
    return page, console


def nav_link(page, title: str):
    """The sidebar's link to a page of app.py's st.navigation (its text: icon name, then title)."""
    return page.get_by_test_id("stSidebarNavLink").filter(has_text=re.compile(rf"{re.escape(title)}\s*$"))


def choose(page, label: str, option: str, *, exact: bool = True, scope=None) -> None:
    """Pick `option` in the st.selectbox labelled `label` (within `scope`, default the page)."""
    (scope or page).get_by_role("combobox", name=label, exact=exact).click()
    page.get_by_role("option", name=option, exact=exact).click()


def report_failure(page, console: list[str], server: StreamlitServer, screenshot: Path) -> None:
    """A screenshot, the browser's console errors and the server's log, for a failed test."""
    try:
        page.screenshot(path=str(screenshot), full_page=True)
    except Exception:
        pass
    if console:
        print("\n----- browser console errors -----\n" + "\n".join(console))
    print(f"\n----- streamlit log ({server.log_path}) -----\n{server.log()}\n----- end of streamlit log -----")
