"""A measurement model's result (cardiomegaly's cardiothoracic ratio) in every output: the
overlay's outlines and diameters, the app's headline, the PDF report, the CLI summary and the
DICOM results (issue 19).

Results are built by hand from a chest phantom's true outlines (`xray_ai.phantoms`), measured
with `measure_ctr`: no model is needed.
"""

from __future__ import annotations

import dataclasses
import io
import re

import cv2
import numpy as np
import pydicom
import pytest
from pypdf import PdfReader

from xray_ai.cli.predict import summary
from xray_ai.images import XRay, load_image
from xray_ai.measurement.ctr import CTR_RULE, measure_ctr
from xray_ai.outputs.measurement_display import HEART_COLOUR, THORAX_COLOUR, ctr_headline
from xray_ai.outputs.overlay import display_pixels, finding_legend, render_overlay
from xray_ai.outputs.report import build_report
from xray_ai.outputs.view_overlay import overlay_options, view_overlay
from xray_ai.phantoms import generate
from xray_ai.result import FINDING, AnalysisResult, ViewResult

SEED = 3  # an abnormal chest: CTR 0.62, cardiac 105 px, thoracic 170 px on a 224 px image


def chest_view(image: XRay | None = None, probability: float = 0.8, **changes) -> ViewResult:
    """One view measured on the phantom's true outlines (224 px grid); `image`: another image
    for the same masks (the widths are then in its pixels)."""
    phantom = generate("cardiomegaly", abnormal=True, seed=SEED, size=224)
    heart, thorax = phantom.outlines["heart"], phantom.outlines["thorax"]
    if image is None:
        image = XRay(phantom.image.astype(np.float32), {}, "chest_pa.png")
    measurement = measure_ctr(heart, thorax, image_width_px=image.pixels.shape[1])
    return ViewResult(image, probability, heart.astype(np.float32), measurement=measurement, **changes)


def measured_result(*views: ViewResult, **changes) -> AnalysisResult:
    views = views or (chest_view(),)
    fields = dict(
        condition="cardiomegaly", condition_name="Cardiomegaly (chest)", positive_label="cardiomegaly",
        negative_label="normal", model_id="cardiomegaly-ctr-test", model_version="1.2.0", architecture="ctr-unet",
        profile="fast", sha256="cd" * 32, trained_on="synthetic phantoms (test)", intended_use="tests only",
        threshold=0.5, threshold_method=CTR_RULE, probability=float(np.mean([v.probability for v in views])),
        placeholder=False, placeholder_reason=None, heatmap_method="heart mask", target_layer=None, views=views,
        synthetic=True, created="2026-12-01T00:00:00+00:00", kind="measurement")
    return AnalysisResult(**{**fields, **changes})


def near(rgb: np.ndarray, colour, tolerance: int = 40) -> np.ndarray:
    """Pixels within `tolerance` of a colour on every channel (antialiased edges count)."""
    return np.all(np.abs(rgb.astype(int) - np.array(colour)) <= tolerance, axis=-1)


def border(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The mask resized to the image, cut at one half, and its one-pixel border."""
    full = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) >= 0.5
    inner = cv2.erode(full.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return full & ~inner


def within(mask: np.ndarray, pixels: int) -> np.ndarray:
    size = 2 * pixels + 1
    return cv2.dilate(mask.astype(np.uint8), np.ones((size, size), np.uint8)) > 0


def line_row(line, height: int) -> int:
    return int(round(line.row * height - 0.5))


# --- the overlay ---------------------------------------------------------------------------


def test_the_outlines_follow_the_mask_borders_in_two_colours():
    view = chest_view()
    result = measured_result(view)
    pixels = display_pixels(view.image.pixels)  # 512 px, as the app and the PDF draw a small image
    out = view_overlay(result, view, pixels, show_heatmap=False)
    m = view.measurement
    lines = np.zeros(out.shape[:2], bool)
    for line in (m.cardiac_line, m.thoracic_line):
        row = line_row(line, out.shape[0])
        lines[max(0, row - 12):row + 13] = True  # the diameter, its ticks and its label
    for mask, colour in ((m.heart, HEART_COLOUR), (m.thorax, THORAX_COLOUR)):
        edge = border(mask, out.shape[:2])
        drawn = near(out, colour)
        assert drawn.sum() > 500
        # drawn along the border: nearly every pixel of that colour lies on it (or on its diameter)...
        assert (drawn & ~within(edge, 3) & ~lines).sum() < 0.02 * drawn.sum()
        # ...and most of the border has that colour on it (the other outline and labels cover some)
        assert (edge & within(drawn, 2)).sum() > 0.75 * edge.sum()
    assert not (near(out, HEART_COLOUR) & near(out, THORAX_COLOUR)).any()  # two distinct colours


def test_the_diameters_lie_on_the_measured_rows_between_their_ends():
    view = chest_view()
    m = view.measurement
    out = view_overlay(measured_result(view), view, display_pixels(view.image.pixels), show_heatmap=False)
    height, width = out.shape[:2]
    for line, colour in ((m.cardiac_line, HEART_COLOUR), (m.thoracic_line, THORAX_COLOUR)):
        row = line_row(line, height)
        x0, x1 = int(line.left * width), int(line.right * width) - 1
        on_row = near(out[row, x0 + 12:x1 - 12], colour)
        assert on_row.mean() > 0.95, (line, on_row.mean())
        # the end ticks: the line's colour above and below each end, at the ends only
        for x in (x0, x1):
            assert near(out[row - 6:row + 7, max(0, x - 2):x + 3], colour).any(axis=1).all()
        off_row = near(out[row + 30, x0 + 12:x1 - 12], colour)
        assert off_row.mean() < 0.2
    # the labels: a dark plate with white text at each line and in the top-left corner
    assert (out[:30, :80] == 255).all(axis=-1).any() and (out[:30, :80] == 0).all(axis=-1).any()


def test_lines_and_labels_scale_with_the_image():
    view = chest_view()
    result = measured_result(view)
    row = view.measurement.cardiac_line.row
    centre = (view.measurement.cardiac_line.left + view.measurement.cardiac_line.right) / 2
    thickness, labelled = {}, {}
    for size in (512, 2048):
        pixels = cv2.resize(view.image.pixels, (size, size), interpolation=cv2.INTER_LINEAR)
        out = view_overlay(result, view, pixels, show_heatmap=False)
        plain = render_overlay(pixels, None)
        column = near(out[:, int(centre * size)], HEART_COLOUR)
        y = int(round(row * size - 0.5))
        thickness[size] = int(column[y - size // 40:y + size // 40].sum())
        corner = slice(0, size // 12), slice(0, size // 6)
        labelled[size] = np.any(out[corner] != plain[corner], axis=-1).mean()  # the "CTR 0.62" plate
    assert 1 <= thickness[512] <= 4 and 2.5 < thickness[2048] / thickness[512] < 6, thickness
    assert 0.1 < labelled[512] and 0.5 < labelled[2048] / labelled[512] < 2, labelled


def test_no_outlines_where_no_mark_may_be_drawn_and_never_a_box():
    view = chest_view()
    result = measured_result(view)
    pixels = display_pixels(view.image.pixels)
    heat_only = render_overlay(pixels, view.heatmap, 0.5)
    assert view_overlay(result, view, pixels).tolist() != heat_only.tolist()
    # the switch off: the heatmap (the heart mask) alone, and no finding box round it
    np.testing.assert_array_equal(view_overlay(result, view, pixels, annotate=False), heat_only)
    assert overlay_options(result, view)["finding"] is None and result.finding_level(view) == FINDING
    # a placeholder: no outlines, the watermark
    placeholder = dataclasses.replace(result, placeholder=True, placeholder_reason="file missing")
    np.testing.assert_array_equal(view_overlay(placeholder, view, pixels),
                                  render_overlay(pixels, view.heatmap, 0.5, placeholder=True))
    # out of scope: no outlines
    outside = dataclasses.replace(view, scope_reasons=("chest_pa.png: not a PA chest (test).",))
    np.testing.assert_array_equal(view_overlay(measured_result(outside), outside, pixels), heat_only)


def test_a_classifier_view_gets_what_each_output_drew_before():
    """The shared options reproduce the old per-site calls: finding level, contour level, placeholder."""
    view = chest_view()
    classifier = measured_result(view, kind="classifier", contour_level=0.4, high_sensitivity_threshold=0.3)
    pixels = display_pixels(view.image.pixels)
    np.testing.assert_array_equal(
        view_overlay(classifier, view, pixels, 0.7),
        render_overlay(pixels, view.heatmap, 0.7, finding=FINDING, contour_level=0.4))
    options = overlay_options(classifier, view, show_heatmap=False)
    assert options["heatmap"] is None and options["measurement"] is None and options["finding"] == FINDING


def test_the_legend_says_what_the_outlines_and_lines_are():
    legend = " ".join(finding_legend(measured_result()))
    assert "Red outline: the cardiac silhouette" in legend and "green outline" in legend
    assert CTR_RULE in legend and "box" not in legend.lower()


# --- text outputs --------------------------------------------------------------------------


def test_the_cli_summary_leads_with_the_ratio():
    lines = summary(measured_result()).splitlines()
    assert lines[0] == ("Cardiomegaly (chest): Cardiothoracic ratio 0.62: cardiomegaly (rule: CTR > 0.50); "
                        "cardiac 105 px, thoracic 170 px")
    assert lines[1].startswith("  calibrated probability 0.800 (threshold 0.500: cardiothoracic ratio above 0.50")
    outside = dataclasses.replace(chest_view(), scope_reasons=("x.png: out of scope (test).",))
    lines = summary(measured_result(outside)).splitlines()
    assert lines[0].startswith("Cardiomegaly (chest): NOT ASSESSABLE")
    assert lines[1] == "  Cardiothoracic ratio 0.62 (model output, unreliable for these images)"
    assert ctr_headline(dataclasses.replace(measured_result(), kind="classifier")) is None


def test_the_pdf_report_states_the_ratio_the_rule_and_the_widths():
    data = build_report(measured_result(), report_id="abc123")
    text = " ".join("\n".join(p.extract_text() for p in PdfReader(io.BytesIO(data)).pages).split())
    assert "Measurement Cardiothoracic ratio 0.62: cardiomegaly (rule: CTR > 0.50)" in text
    assert "Widths cardiac 105 px, thoracic 170 px" in text
    assert re.search(r"Calibrated probability 80\.0\s?% \(cardiomegaly\)", text)  # the secondary figure
    assert CTR_RULE in text and "cardiomegaly-ctr-test" in text  # the rule and the model, as for any result
    assert "CTR 0.62 (cardiac 105 px, thoracic 170 px)" in text  # the view's title
    assert "Red outline: the cardiac silhouette" in text


def test_the_pdf_overlay_is_the_shared_one():
    view = chest_view()
    reader = PdfReader(io.BytesIO(build_report(measured_result(view), report_id="abc123")))
    images = [np.asarray(i.image.convert("RGB")) for page in reader.pages for i in page.images]
    coloured = [a for a in images if np.ptp(a.astype(int), axis=2).any()]
    assert len(coloured) == 1 and coloured[0].shape[0] == 512
    assert near(coloured[0], THORAX_COLOUR, 50).sum() > 500  # JPEG-free, but the embedding may resample


# --- DICOM results -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest_dicom():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        pytest.skip("pydicom test file RG1_UNCR.dcm not available (pip install pydicom-data)")
    return load_image(path)


def _numbers(ds, code: str) -> list[float]:
    found = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == code:
            found.append(float(item.MeasuredValueSequence[0].NumericValue))
        found += _numbers(item, code)
    return found


def test_the_sr_holds_the_ratio_and_widths_and_the_capture_draws_the_outlines(chest_dicom, tmp_path):
    from xray_ai.outputs.dicom_capture import banner_lines
    from xray_ai.outputs.dicom_results import write_dicom_results
    from xray_ai.outputs.dicom_source import read_sources

    view = chest_view(chest_dicom)
    m = view.measurement
    result = measured_result(view)
    paths = write_dicom_results(result, tmp_path)
    sr = pydicom.dcmread(paths[-1])
    # the study's figure and the view's own reading, each a NUM item
    assert _numbers(sr, "ctr") == [pytest.approx(m.ctr, abs=1e-4)] * 2
    assert _numbers(sr, "cardiac-width") == [pytest.approx(m.cardiac_width_px, abs=0.1)] * 2
    assert _numbers(sr, "thoracic-width") == [pytest.approx(m.thoracic_width_px, abs=0.1)] * 2
    assert m.thoracic_width_px > 170 * chest_dicom.pixels.shape[1] / 224 - 10  # in the film's pixels
    capture = pydicom.dcmread(paths[0]).pixel_array
    lines = [t for t, _ in banner_lines(result, read_sources(result)[0])]
    assert f"(CTR {m.ctr:.2f}, rule: CTR > 0.50; calibrated probability 0.80)" in lines[2]
    assert lines[3].startswith(f"view 1 of 1: CTR {m.ctr:.2f} (cardiac ") and "finding" not in lines[3]
    image = capture[capture.shape[0] - chest_dicom.pixels.shape[0]:]
    assert near(image, HEART_COLOUR, 10).sum() > 1000 and near(image, THORAX_COLOUR, 10).sum() > 1000


# --- the app -------------------------------------------------------------------------------


def _app_script():
    # run by AppTest in this process: tests/ is on sys.path (pyproject's pytest pythonpath)
    from test_measurement_display import measured_result

    from ui.result_view import show_result_card, show_views

    result = measured_result()
    show_result_card(result)
    show_views(result)


def test_the_app_headline_is_the_ratio_with_the_rule_and_the_widths():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_app_script, default_timeout=60).run()
    assert not at.exception, at.exception
    assert len(at.metric) == 1
    metric = at.metric[0]
    assert metric.label == "Cardiomegaly (chest): cardiothoracic ratio" and metric.value == "0.62 — cardiomegaly"
    assert metric.delta == "rule: CTR > 0.50 · cardiac 105 px, thoracic 170 px"
    captions = " ".join(c.value for c in at.caption)
    assert "Calibrated probability 80.0%" in captions and "Red outline: the cardiac silhouette" in captions
    assert "CTR 0.62 (cardiac 105 px, thoracic 170 px) · calibrated probability 80.0%" in captions.replace("\\", "")


def test_the_widest_row_is_one_the_outline_crosses():
    """A soft edge row just beyond the region can sum wider than any row of it; the diameter
    is measured on a row of the outline itself."""
    from xray_ai.measurement.ctr import widest_row

    prob = np.zeros((10, 20), np.float32)
    prob[4, 5:10] = 0.9        # the outline: one row, 5 px
    prob[5, 0:20] = 0.45       # below one half everywhere, but 9 px in sum
    width, line = widest_row(prob)
    assert line.row == pytest.approx(4.5 / 10) and width == pytest.approx(0.9 * 5)
