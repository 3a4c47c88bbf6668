"""End-to-end: the Streamlit app driven in headless Chromium (Debian's /usr/bin/chromium).

Starts `streamlit run app.py` once for the module on a free loopback port. The first test
uploads an in-scope synthetic phantom (examples/) through the Analyse page's file uploader
under the default condition and waits for the decision, checks the provenance (model id,
threshold, the placeholder banner exactly when the model is the placeholder, the
synthetic-data note as a neutral info note), the legend of the automatic marks, downloads
the PDF report and checks it, and takes a full-page screenshot. The second switches to
pneumonia and uploads the real RG1 chest radiograph: a grey "Not assessable" card with the
reason in error colour, no pneumonia headline, the model's output only in its expander, and
a PDF that says "Not assessable". The third uploads pydicom's CT_small.dcm: not assessable,
naming CT. The fourth visits every page and analyses the phantom and the CT slice, and
checks that no request left the app's own server (a hospital runs it offline, and patient
work must not call a CDN: the favicon once came from fonts.gstatic.com). It records the
upload-to-result time of the first analysis (cold: imports
TensorFlow, loads the model) and of the second (the pneumonia model loads) in
test-artifacts/browser_timings.json. No timing assertions.

CI installs the browser with .ci/install-browser.sh and the Python package `playwright`
(requirements-dev.txt); Playwright's own browser download is not used.
Run: python -m pytest tests/test_browser.py -q -s
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from browser_support import (ARTIFACTS, REPO, RESULT_TIMEOUT_MS, UI_TIMEOUT_MS, chromium_context, expect,
                             choose, nav_link, report_failure, streamlit_app,
                             wait_until_idle)

# ---------------------------------------------------------------------------------------
# Selectors and page texts: the one place to update when the Analyse page changes.
# ---------------------------------------------------------------------------------------
UPLOADER_LABEL = re.compile(r"Radiographs", re.I)          # st.file_uploader label
CONDITION_LABEL = "Condition"                               # st.selectbox (combobox) label
MODEL_LABEL = "Model"                                       # st.selectbox (combobox) label
DOWNLOAD_LABEL = re.compile(r"Download PDF report", re.I)   # st.download_button
HEATMAP_LABEL = re.compile(r"Heatmap intensity", re.I)      # st.slider
THRESHOLD_WORD = re.compile(r"\bthreshold\b", re.I)
NOT_ASSESSABLE = "Not assessable"                           # ui.result_view.NOT_ASSESSABLE_TITLE
NOT_ASSESSABLE_CARD = ".st-key-not_assessable_card"         # ui.result_view.NOT_ASSESSABLE_CARD_KEY
UNRELIABLE_EXPANDER = "model output (unreliable for this image)"  # ui.result_view.UNRELIABLE_EXPANDER
MARKS_LEGEND = re.compile(r"Automatic marks\. Solid box")
PDF_DISCLAIMER = "not a diagnosis"
PLACEHOLDER_BANNER = "PLACEHOLDER MODEL - NOT A DIAGNOSTIC RESULT"  # xray_ai.result.PLACEHOLDER_WATERMARK
SYNTHETIC_WARNING = re.compile(r"trained on synthetic data", re.I)
SECOND_CONDITION = "Pneumonia (chest)"  # the 2nd analysis: a real chest radiograph, out of scope


def _uploader(page):
    return page.get_by_test_id("stFileUploader").filter(has_text=UPLOADER_LABEL)


def _file_input(page):
    return _uploader(page).locator("input[type=file]")


def _remove_file_button(page, filename):
    return _uploader(page).get_by_role("button", name=re.compile(rf"Remove {re.escape(filename)}", re.I))


def _file_chip(page, filename):
    return _uploader(page).get_by_test_id("stFileChip").filter(has_text=filename)


def _result_image(page, filename):
    return page.get_by_test_id("stMain").get_by_test_id("stImage").filter(has_text=filename)


def _decision_metric(page):
    return page.get_by_test_id("stMetric")


def _not_assessable_card(page):
    return page.locator(NOT_ASSESSABLE_CARD)


def _info_alerts(page):
    return page.get_by_test_id("stAlertContentInfo")


def _download_button(page):
    return page.get_by_role("button", name=DOWNLOAD_LABEL)


# ---------------------------------------------------------------------------------------
FIRST_FILE = REPO / "examples" / "phantom_msk_abnormality_abnormal.dcm"  # in scope for the default condition
SECOND_FILE = REPO / "examples" / "rg1_chest.dcm"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def streamlit_server():
    # The README's own command, `streamlit run app.py`, with the shipped .streamlit/config.toml
    # (browser_support.streamlit_app); preloading is on, as for a user.
    with streamlit_app(ARTIFACTS / "browser_streamlit.log") as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with chromium_context() as context:
        yield context


def _wait_for_result(page, timeout_ms=RESULT_TIMEOUT_MS):
    """The decision metric and the download button are rendered only after an analysis."""
    expect(_decision_metric(page).first).to_be_visible(timeout=timeout_ms)
    expect(_download_button(page)).to_be_enabled(timeout=timeout_ms)


def _wait_for_not_assessable(page, timeout_ms=RESULT_TIMEOUT_MS):
    """The grey card and the download button, and no decision metric."""
    expect(_not_assessable_card(page)).to_be_visible(timeout=timeout_ms)
    expect(_download_button(page)).to_be_enabled(timeout=timeout_ms)
    expect(_decision_metric(page)).to_have_count(0)


def _expect_not_assessable(page, reason: str, decision_labels) -> None:
    """The grey card with the reason in error colour inside it; no decision headline; the
    model's output only in the unreliable-output expander."""
    card = _not_assessable_card(page)
    expect(card).to_contain_text(NOT_ASSESSABLE)
    expect(card.get_by_test_id("stAlertContentError")).to_contain_text(reason)
    grey = card.evaluate("e => getComputedStyle(e).backgroundColor")
    rgb = [float(v) for v in re.findall(r"[\d.]+", grey)[:3]]
    assert grey not in ("rgba(0, 0, 0, 0)", "transparent") and max(rgb) - min(rgb) < 8, f"card not grey: {grey}"
    main = page.get_by_test_id("stMain")
    for label in decision_labels:  # neither the positive nor the negative label as a headline
        expect(main.get_by_role("heading", name=label, exact=True)).to_have_count(0)
        expect(main.get_by_test_id("stMetricValue").filter(has_text=label)).to_have_count(0)
    expect(main.get_by_test_id("stExpander").filter(has_text=UNRELIABLE_EXPANDER)).to_have_count(1)
    expect(main.get_by_text(MARKS_LEGEND)).to_have_count(0)  # no automatic marks, so no legend


def _full_page_screenshot(page, path: Path, max_height: int = 8000) -> None:
    """Streamlit scrolls inside its main container, so full_page=True alone captures only the
    viewport: grow the viewport to the content's height, screenshot, restore it."""
    original = page.viewport_size
    height = page.evaluate(
        """() => Math.max(document.documentElement.scrollHeight,
            ...[...document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"]')]
                .map(e => e.scrollHeight))"""
    )
    try:
        page.set_viewport_size({"width": original["width"], "height": min(max(height + 40, original["height"]), max_height)})
        page.get_by_test_id("stMain").evaluate("e => e.scrollTo(0, 0)")
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=UI_TIMEOUT_MS)
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(original)


def _active_model_for(condition_name: str) -> str:
    registry = json.loads((REPO / "model_registry.json").read_text())
    by_name = {c["name"]: key for key, c in registry["conditions"].items()}
    assert condition_name in by_name, f"condition {condition_name!r} shown by the page is not in the registry"
    return registry["active_models"][by_name[condition_name]]


def _served_as(model_id: str) -> tuple[bool, bool]:
    """(placeholder?, trained on synthetic data?) for a registry model, by the check the app's
    ModelManager makes: the page must show the placeholder banner exactly when it fails."""
    from xray_ai.serving.verify import check_entry
    from xray_ai.registry import load_registry

    registry = load_registry(REPO / "model_registry.json")
    entry = registry.model(model_id)
    return check_entry(entry, registry) is not None, entry.trained_on.synthetic


def _expect_provenance(main, model_id: str) -> None:
    """The model id, and the placeholder banner or the synthetic-data warning as they apply."""
    expect(main).to_contain_text(model_id)
    expect(main).to_contain_text("Input check:")
    placeholder, synthetic = _served_as(model_id)
    banner = main.get_by_text(PLACEHOLDER_BANNER)
    if placeholder:
        expect(banner.first).to_be_visible()
    else:
        expect(banner).to_have_count(0)
        if synthetic:  # a neutral info note, unlike the out-of-scope reasons (error colour)
            expect(_info_alerts(main).filter(has_text=SYNTHETIC_WARNING)).to_have_count(1)
            expect(main.get_by_test_id("stAlertContentError").filter(has_text=SYNTHETIC_WARNING)).to_have_count(0)


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    return "\n".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(data)).pages)


def _download_pdf_text(page, name: str) -> str:
    with page.expect_download(timeout=60_000) as dl_info:
        _download_button(page).click()
    download = dl_info.value
    pdf_path = ARTIFACTS / name
    download.save_as(pdf_path)
    data = pdf_path.read_bytes()
    assert data.startswith(b"%PDF"), f"download is not a PDF: {data[:20]!r} ({download.suggested_filename})"
    wait_until_idle(page)  # the download button reruns the script
    return " ".join(_pdf_text(data).split())  # pypdf may break lines inside phrases


def _open(browser, server):
    page = browser.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    console = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    page.goto(server.url, wait_until="domcontentloaded", timeout=60_000)
    expect(_uploader(page)).to_be_visible(timeout=60_000)
    wait_until_idle(page)
    return page, console


def _report_failure(page, console, server, name: str) -> None:
    report_failure(page, console, server, ARTIFACTS / name)


TIMINGS: dict = {}


def _save_timings() -> None:
    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")
    print(f"\nupload-to-result: first analysis {TIMINGS.get('first_analysis_s')} s, "
          f"second analysis {TIMINGS.get('second_analysis_s')} s")


APP_DISCLAIMER = "Decision support only, not a diagnosis"  # xray_ai.result.DISCLAIMER, shown by app.py
APP_PAGES = ["Analyse", "Model registry", "Model performance", "About"]  # app.py's st.navigation


def test_a_deep_link_as_the_first_request_goes_through_the_app(browser, streamlit_server):
    """The very first request after the start is a deep link (/about, a bookmark): it must run
    app.py (the disclaimer, the app's own navigation of four pages), not Streamlit's
    automatic navigation of a `pages/` folder. Runs first: nothing else has loaded a page."""
    page = browser.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page.goto(f"{streamlit_server.url}/about", wait_until="domcontentloaded", timeout=60_000)
        main = page.get_by_test_id("stMain")
        # app.py's caption (the About page also quotes the disclaimer in its text)
        expect(main.get_by_test_id("stCaptionContainer").filter(has_text=APP_DISCLAIMER)).to_have_count(
            1, timeout=60_000)
        expect(main.get_by_role("heading", name=re.compile("About", re.I)).first).to_be_visible()
        links = page.get_by_test_id("stSidebarNavLink")
        expect(links).to_have_count(len(APP_PAGES))
        # each link's text is its material icon's name, then its title
        assert [t.strip().split("\n")[-1].strip() for t in links.all_inner_texts()] == APP_PAGES
    except Exception:
        _report_failure(page, [], streamlit_server, "browser_deep_link_failure.png")
        raise
    finally:
        page.close()


def test_an_in_scope_phantom_gives_a_decision_and_a_report(browser, streamlit_server):
    server = streamlit_server
    page, console = _open(browser, server)
    try:
        # The active model of the condition selected on the page, from the registry.
        condition_name = page.get_by_role("combobox", name=CONDITION_LABEL).input_value()
        model_id = _active_model_for(condition_name)
        expect(page.get_by_role("combobox", name=MODEL_LABEL)).to_have_value(re.compile(re.escape(model_id)))

        # 1st analysis (cold: TensorFlow import + model load).
        t0 = time.perf_counter()
        _file_input(page).set_input_files(str(FIRST_FILE))
        expect(_result_image(page, FIRST_FILE.name).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        _wait_for_result(page)
        TIMINGS.update(first_analysis_s=round(time.perf_counter() - t0, 2), model_id=model_id,
                       first_file=FIRST_FILE.name)

        main = page.get_by_test_id("stMain")
        decision = _decision_metric(page).first.get_by_test_id("stMetricValue").inner_text().strip()
        registry = json.loads((REPO / "model_registry.json").read_text())
        labels = {c["positive_label"]: c for c in registry["conditions"].values() if c["name"] == condition_name}
        labels |= {c["negative_label"]: c for c in registry["conditions"].values() if c["name"] == condition_name}
        assert decision in labels, f"the card says {decision!r}, not one of {sorted(labels)}"
        expect(_not_assessable_card(page)).to_have_count(0)
        _expect_provenance(main, model_id)
        expect(main).to_contain_text(THRESHOLD_WORD)
        expect(main.get_by_text(MARKS_LEGEND)).to_be_visible()
        expect(page.get_by_text(HEATMAP_LABEL).first).to_be_visible()
        expect(main.get_by_test_id("stImage").first).to_be_visible()

        flat = _download_pdf_text(page, "browser_report.pdf")
        assert model_id in flat.replace(" ", "") or model_id in flat, f"model id {model_id} not in the PDF text"
        assert PDF_DISCLAIMER in flat.lower(), f"disclaimer {PDF_DISCLAIMER!r} not in the PDF text"
        assert f"Decision {decision}" in flat and NOT_ASSESSABLE not in flat
        _wait_for_result(page)
        _full_page_screenshot(page, ARTIFACTS / "browser_analyse.png")
    except BaseException:
        _report_failure(page, console, server, "browser_failure.png")
        raise
    finally:
        _save_timings()
        page.close()


def test_a_real_chest_under_pneumonia_is_not_assessable(browser, streamlit_server):
    server = streamlit_server
    page, console = _open(browser, server)
    try:
        choose(page, CONDITION_LABEL, SECOND_CONDITION)
        wait_until_idle(page)
        second_model_id = _active_model_for(SECOND_CONDITION)
        expect(page.get_by_role("combobox", name=MODEL_LABEL)).to_have_value(re.compile(re.escape(second_model_id)))
        t0 = time.perf_counter()
        _file_input(page).set_input_files(str(SECOND_FILE))
        # The new images (captioned with the file name) exist only once the analysis is done.
        expect(_result_image(page, SECOND_FILE.name).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        _wait_for_not_assessable(page)
        TIMINGS.update(second_analysis_s=round(time.perf_counter() - t0, 2), second_model_id=second_model_id,
                       second_file=SECOND_FILE.name)
        main = page.get_by_test_id("stMain")
        _expect_provenance(main, second_model_id)
        reason = (f"{SECOND_FILE.name}: unlike the images {second_model_id} was trained on"
                  if _served_as(second_model_id) == (False, True) else f"{SECOND_FILE.name}:")
        _expect_not_assessable(page, reason, ("pneumonia", "normal"))
        flat = _download_pdf_text(page, "browser_report_not_assessable.pdf")
        assert f"{NOT_ASSESSABLE}: no view of this study is in the model's scope" in flat
        assert f"Result {NOT_ASSESSABLE}" in flat and "Decision pneumonia" not in flat
        _wait_for_not_assessable(page)
        _full_page_screenshot(page, ARTIFACTS / "browser_analyse_not_assessable.png")
    except BaseException:
        _report_failure(page, console, server, "browser_failure_not_assessable.png")
        raise
    finally:
        _save_timings()
        page.close()


def test_a_ct_slice_is_not_assessable_and_names_ct(browser, streamlit_server):
    from pydicom.data import get_testdata_file

    server = streamlit_server
    page, console = _open(browser, server)
    ct = Path(get_testdata_file("CT_small.dcm"))
    try:
        _file_input(page).set_input_files(str(ct))
        expect(_result_image(page, ct.name).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        _wait_for_not_assessable(page)
        _expect_not_assessable(page, f"{ct.name}: DICOM modality CT (computed tomography) is not a projection "
                                     "radiograph", ("abnormal", "normal"))
    except BaseException:
        _report_failure(page, console, server, "browser_failure_ct.png")
        raise
    finally:
        page.close()


APP_HOSTS = {"127.0.0.1", "localhost", "::1"}  # the app's own server (browser_support: loopback)


def test_no_request_leaves_the_app_s_own_server(browser, streamlit_server):
    """Every request of every page (favicon, fonts, the navigation's and the result cards'
    material icons, images, the report) goes to the app's own server: nothing to a CDN. A
    hospital may run the app offline, where such a request fails (a console error, no
    favicon), and online it would tell a third party that the app is in use. Visits every
    page of the navigation, then analyses the in-scope phantom (a decision, its marks) and
    the CT slice (the "not assessable" card, its icon) on Analyse."""
    server = streamlit_server
    external: list[str] = []

    def record(request) -> None:
        url = urlsplit(request.url)
        if url.scheme not in ("data", "blob") and url.hostname not in APP_HOSTS:
            external.append(f"{request.resource_type} {request.url}")

    browser.on("request", record)  # the context: pages, workers, the browser's favicon fetch
    page, console = None, []
    try:
        page, console = _open(browser, server)
        for title in APP_PAGES[1:] + APP_PAGES[:1]:  # each page, back to Analyse
            nav_link(page, title).click()
            expect(page.get_by_test_id("stMain").get_by_role("heading").first).to_be_visible()
            wait_until_idle(page)
        _file_input(page).set_input_files(str(FIRST_FILE))
        expect(_result_image(page, FIRST_FILE.name).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        _wait_for_result(page)
        from pydicom.data import get_testdata_file

        ct = Path(get_testdata_file("CT_small.dcm"))
        _remove_file_button(page, FIRST_FILE.name).click()
        wait_until_idle(page)
        _file_input(page).set_input_files(str(ct))
        expect(_result_image(page, ct.name).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        _wait_for_not_assessable(page)
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=UI_TIMEOUT_MS)

        # The browser fetches the favicon on its own schedule: check where it points as well.
        icons = page.eval_on_selector_all("link[rel~='icon']", "links => links.map(l => l.href)")
        assert icons, "the page has no favicon link"
        external += [f"favicon link {href}" for href in icons if urlsplit(href).hostname not in APP_HOSTS]
        page.wait_for_timeout(500)  # a request issued in the last moment
        assert not external, ("requests to hosts other than the app's own server:\n  "
                              + "\n  ".join(dict.fromkeys(external)))
        for href in icons:  # served, and an image
            response = page.request.get(href)
            assert response.ok and response.headers.get("content-type", "").startswith("image/"), (
                f"favicon {href}: HTTP {response.status} {response.headers.get('content-type')}")
        assert not console, f"browser console errors: {console}"
    except BaseException:
        if page is not None:
            _report_failure(page, console, server, "browser_failure_external_requests.png")
        raise
    finally:
        browser.remove_listener("request", record)
        if page is not None:
            page.close()
