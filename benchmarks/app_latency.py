"""What a user of the app waits for, in a real browser, beside the engine's own time.

Starts the app with the README's command (`streamlit run app.py`, the shipped
.streamlit/config.toml; only the port comes from STREAMLIT_SERVER_PORT) with an empty ONNX
cache, drives it with Playwright in Debian's headless chromium as tests/test_browser.py
does, and measures from the user's action to the finished redraw:

- cold first analysis: the first upload after the server answers (what a user meets first),
- warm analysis: a new upload of the 1841 x 1955 RG1 chest DICOM (pydicom-data's RG1_UNCR.dcm,
  uncompressed, 7.2 MB; examples/rg1_chest.dcm is a 482 x 512 copy of it),
- slider redraw: one step of the heatmap intensity slider on that image,
- page loads: the Model registry and Model performance pages, opened from the navigation.

It then times, in this process and on the same image, `analyze()` itself (the engine the
app calls, warm), so the printout shows what the app adds. No thresholds: it prints.

Run:  python benchmarks/app_latency.py [--repeats 5] [--browser /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FIRST_FILE = REPO / "examples" / "phantom_msk_abnormality_abnormal.dcm"  # in scope for the default condition
def _large_file() -> Path:
    """pydicom-data's full-size RG1 chest CR (requirements-dev.txt): not assessable for the phantom models."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("RG1_UNCR.dcm"))


LARGE_FILE = _large_file()
LOG = Path(tempfile.gettempdir()) / "xray_ai_app_latency.log"  # the app's own output, for a failed run
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, cache: str) -> subprocess.Popen:
    env = dict(os.environ, STREAMLIT_SERVER_PORT=str(port), XRAY_AI_ONNX_CACHE=cache, PYTHONUNBUFFERED="1")
    env.pop("XRAY_AI_PRELOAD", None)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("streamlit")), "run", "app.py"], cwd=REPO,
                            env=env, stdout=LOG.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the app did not start within 90 s")


class App:
    """The Analyse page in one browser tab, with the waits the measurements need."""

    def __init__(self, page, url: str):
        self.page, self.url = page, url
        self.main = page.get_by_test_id("stMain")

    def idle(self) -> None:
        from playwright.sync_api import expect

        expect(self.page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=180_000)

    def upload(self, path: Path) -> float:
        """Seconds from choosing the file to the finished result (decision or not-assessable card)."""
        uploader = self.page.get_by_test_id("stFileUploader").locator("input[type=file]")
        start = time.perf_counter()
        uploader.set_input_files(str(path))
        self.page.locator("[data-testid=stMetric], .st-key-not_assessable_card").first.wait_for(timeout=180_000)
        self.page.get_by_role("button", name="Download PDF report").wait_for(timeout=180_000)
        self.idle()
        return time.perf_counter() - start

    def slider_step(self) -> float:
        """Seconds from one arrow-key step of the intensity slider to the redrawn overlay."""
        expander = self.main.get_by_test_id("stExpander").first
        if expander.count() and expander.locator("details").get_attribute("open") is None:
            expander.locator("summary").click()  # a study out of scope keeps its slider in there
            self.idle()
        slider = self.main.get_by_role("slider").first
        slider.wait_for(state="visible")
        images = self.main.locator("img")
        before = images.evaluate_all("els => els.map(e => e.src.length + ':' + e.src.slice(-64))")
        start = time.perf_counter()
        slider.focus()
        slider.press("ArrowRight")
        self.page.wait_for_function(
            """before => { const now = [...document.querySelectorAll('[data-testid=stMain] img')]
                   .map(e => e.src.length + ':' + e.src.slice(-64));
                 return now.length === before.length && now.some((s, i) => s !== before[i]); }""",
            arg=before, timeout=60_000)
        self.idle()
        return time.perf_counter() - start

    def open_page(self, title: str) -> float:
        """Seconds from the navigation click to the page's title and its first table."""
        start = time.perf_counter()
        self.page.get_by_test_id("stSidebarNavLink").filter(has_text=title).click()
        self.main.get_by_role("heading", name=title).wait_for(timeout=60_000)
        self.main.locator("[data-testid=stDataFrame], [data-testid=stExpander]").first.wait_for(timeout=60_000)
        self.idle()
        return time.perf_counter() - start


def engine_seconds(repeats: int) -> tuple[float, str]:
    """Median warm analyze() of the large file under pneumonia, and the backend that served it."""
    from xray_ai import analysis, load_image
    from xray_ai.serving.manager import ModelManager

    manager = ModelManager()
    image = load_image(LARGE_FILE.read_bytes(), filename=LARGE_FILE.name)
    result = analysis.analyze(image, "pneumonia", manager=manager)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        analysis.analyze(load_image(LARGE_FILE.read_bytes(), filename=LARGE_FILE.name), "pneumonia", manager=manager)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result.backend


def _session(context, port: int, condition: str | None = None) -> App:
    """A new tab (a new Streamlit session) on the Analyse page, with `condition` chosen."""
    page = context.new_page()
    page.on("pageerror", lambda e: print("page error:", e))
    page.goto(f"http://127.0.0.1:{port}", wait_until="domcontentloaded")
    app = App(page, f"http://127.0.0.1:{port}")
    page.get_by_test_id("stFileUploader").wait_for(timeout=60_000)
    app.idle()
    if condition:
        page.get_by_role("combobox", name="Condition").click()
        page.get_by_role("option", name=condition).click()
        app.idle()
    return app


def measure(context, port: int, repeats: int) -> tuple:
    """(cold, warm list, slider list, registry list, performance list), seconds. Each upload
    in a new session (tab), as a new user would; the models stay loaded in the server."""
    app = _session(context, port)
    cold = app.upload(FIRST_FILE)
    app.page.close()
    warm = []
    for _ in range(repeats):
        app = _session(context, port, "Pneumonia (chest)")
        warm.append(app.upload(LARGE_FILE))
        app.page.close()
    app = _session(context, port, "Pneumonia (chest)")
    app.upload(LARGE_FILE)
    slider = [app.slider_step() for _ in range(repeats)]
    registry, performance = [], []
    for _ in range(repeats):
        registry.append(app.open_page("Model registry"))
        performance.append(app.open_page("Model performance"))
    return cold, warm, slider, registry, performance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--browser", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="xray_ai-onnx-") as cache, \
            tempfile.TemporaryDirectory(prefix="xray_ai-chromium-") as profile:
        proc = start_app(port, cache)
        try:
            with sync_playwright() as p:
                context = p.chromium.launch_persistent_context(profile, executable_path=args.browser,
                                                               args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
                try:
                    figures = measure(context, port, args.repeats)
                except Exception:
                    context.pages[-1].screenshot(path=str(LOG.with_suffix(".png")), full_page=True)
                    print(f"failed; the app's log: {LOG}, a screenshot: {LOG.with_suffix('.png')}")
                    raise
                context.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    cold, warm, slider, registry, performance = figures
    engine, backend = engine_seconds(args.repeats)
    med = statistics.median
    print(f"app latency on {os.cpu_count()} cores, medians of {args.repeats} (seconds; the engine served by {backend})")
    print(f"  cold first analysis (upload to result, fresh server)   {cold:7.2f}")
    print(f"  warm analysis, RG1 1841 x 1955 DICOM                   {med(warm):7.2f}   "
          f"engine analyze() {engine:.3f}  ratio {med(warm) / engine:6.1f}x")
    print(f"  slider redraw on RG1                                   {med(slider):7.2f}")
    print(f"  Model registry page (first {registry[0]:.2f})           {med(registry):7.2f}")
    print(f"  Model performance page (first {performance[0]:.2f})     {med(performance):7.2f}")


if __name__ == "__main__":
    main()
