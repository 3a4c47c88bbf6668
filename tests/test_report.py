"""Tests for xray_ai.outputs.report: the PDF holds what the README says a report must say."""

from __future__ import annotations

import io
import re
from datetime import datetime, timezone

import numpy as np
import pytest
from pypdf import PdfReader

from xray_ai.images import XRay
from xray_ai.outputs.overlay import Marker
from xray_ai.outputs.report import build_report
from xray_ai.result import PLACEHOLDER_WATERMARK, AnalysisResult, BodyPartEstimate, ViewResult

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def make_result(
    n_views: int = 1, *, placeholder: bool = False, synthetic: bool = False, size: int = 128
) -> AnalysisResult:
    yy, xx = np.mgrid[0:1:complex(size), 0:1:complex(size)].astype(np.float32)
    views = []
    for i in range(n_views):
        pixels = (0.2 + 0.6 * np.exp(-((xx - 0.5) ** 2) / 0.02)).astype(np.float32)
        heatmap = np.zeros((7, 7), np.float32)
        heatmap[2:4, 3:5] = 1.0
        metadata = {
            "patient": {"name": "DOE^JANE", "id": "PID-4711", "birth_date": "19700101", "sex": "F"},
            "study": {
                "date": "20240102",
                "description": "WRIST 2 VIEWS",
                "accession_number": "ACC99",
            },
            "warnings": ["inverted MONOCHROME1"] if i == 0 else [],
        }
        image = XRay(pixels, metadata, f"wrist_view{i + 1}.dcm")
        views.append(ViewResult(image, 0.6 + 0.1 * i, heatmap))
    return AnalysisResult(
        condition="fracture",
        condition_name="Fracture",
        positive_label="fracture",
        negative_label="no fracture",
        model_id="fracture-dn121-quick",
        model_version="2.3.1",
        architecture="densenet121",
        profile="fast",
        sha256="0123456789abcdef" * 4,
        trained_on="synthetic phantoms v1",
        intended_use="Demonstration of the pipeline only",
        threshold=0.437,
        threshold_method="Youden index on the validation split",
        probability=float(np.mean([v.probability for v in views])),
        placeholder=placeholder,
        placeholder_reason="model file missing: models/x.keras" if placeholder else None,
        heatmap_method="gradcam",
        target_layer="densenet121/relu",
        views=tuple(views),
        warnings=("image smaller than the model input",),
        synthetic=synthetic,
        created="2024-05-06T07:00:00Z",
    )


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def flat(text: str) -> str:
    """Text with all whitespace collapsed, so that wrapped lines still match."""
    return " ".join(text.split())


def test_pdf_holds_result_and_provenance():
    result = make_result(synthetic=True)
    data = build_report(result, report_id="abc123", now=NOW)
    assert data.startswith(b"%PDF")
    text = flat(pdf_text(data))
    assert "X-ray decision-support report" in text
    for expected in (
        "abc123",
        "2024-05-06 07:08:09 UTC",
        "Fracture",
        "fracture-dn121-quick",
        "2.3.1",
        "densenet121",
        "0123456789ab",
        "0.437",
        "Youden index on the validation split",
        "60.0 %",
        "Demonstration of the pipeline only",
        "synthetic phantoms v1",
        "gradcam",
        "densenet121/relu",
        "image smaller than the model input",
        "inverted MONOCHROME1",
        "Decision support only, not a diagnosis",
        "qualified clinician",
        "no clinical meaning",
    ):
        assert expected in text, expected
    assert "0123456789abc" not in text  # sha256 shown as a 12-character prefix only
    assert result.decision == "fracture" and "Decision fracture" in text


def test_input_check_is_stated_passed_failed_or_absent():
    import dataclasses

    result = make_result(n_views=2)
    text = flat(pdf_text(build_report(result, report_id="abc123", now=NOW)))
    assert "Input check not available for this model" in text
    passed = (("fracture-dn121-quick", 0.8, 1.5),)
    failed = (("fracture-dn121-quick", 3.2, 1.5),)
    views = (dataclasses.replace(result.views[0], input_checks=passed),
             dataclasses.replace(result.views[1], input_checks=failed))
    mixed = dataclasses.replace(result, views=views)
    assert "1 of 2 views are UNLIKE" in flat(pdf_text(build_report(mixed, report_id="abc123", now=NOW)))
    both = dataclasses.replace(result, views=(views[0], dataclasses.replace(views[1], input_checks=passed)))
    assert both.input_check_summary == "all 2 views are like the model's training images (distance 0.80, threshold 1.50)"


def test_the_body_part_row_appears_only_for_a_model_with_a_body_part_head():
    import dataclasses

    result = make_result(n_views=1)
    assert "Body part" not in flat(pdf_text(build_report(result, report_id="abc123", now=NOW)))
    with_part = dataclasses.replace(result, views=(dataclasses.replace(result.views[0],
                                                                       body_part=BodyPartEstimate("msk-x", "wrist", 0.934)),))
    text = flat(pdf_text(build_report(with_part, report_id="abc123", now=NOW)))
    assert "Body part wrist (93%), the model's own estimate" in text


def test_a_models_full_metrics_fit_the_report_as_a_summary():
    """A shipped entry's metrics (per-body-part tables, ROC, calibration, the training record)
    once overflowed a table cell (reportlab LayoutError); the report now states the headline
    figures with their CIs and points to the rest."""
    import dataclasses
    import json

    from conftest import REPO

    metrics = json.loads((REPO / "models" / "msk_abnormality-efficientnetlite0-fast.metrics.json").read_text())
    result = dataclasses.replace(make_result(n_views=2), metrics=metrics)
    text = flat(pdf_text(build_report(result, report_id="abc123", now=NOW)))
    assert "Held-out metrics test split, n = 889; AUC 0.921 [0.901, 0.940]" in text
    assert "All figures: the registry entry's metrics" in text and "per_body_part" not in text


def test_negative_decision_is_reported():
    result = make_result()
    result = AnalysisResult(**{**result.__dict__, "probability": 0.2})
    text = flat(pdf_text(build_report(result, now=NOW)))
    assert "Decision no fracture" in text
    assert "no clinical meaning" not in text  # not synthetic


def test_patient_identifiers_only_on_request():
    result = make_result()
    without = flat(pdf_text(build_report(result, now=NOW)))
    assert "DOE^JANE" not in without and "PID-4711" not in without and "ACC99" not in without
    assert "identifiers were omitted" in without
    with_patient = flat(pdf_text(build_report(result, include_patient=True, now=NOW)))
    for expected in ("DOE^JANE", "PID-4711", "19700101", "WRIST 2 VIEWS", "ACC99"):
        assert expected in with_patient, expected
    assert "identifiers were omitted" not in with_patient


def test_placeholder_watermark_on_every_page():
    result = make_result(2, placeholder=True, size=256)
    data = build_report(result, notes="x " * 400, now=NOW)
    pages = [flat(p.extract_text()) for p in PdfReader(io.BytesIO(data)).pages]
    assert len(pages) >= 2
    assert all(PLACEHOLDER_WATERMARK in page for page in pages)
    assert "model file missing: models/x.keras" in pages[0]


def test_no_watermark_for_a_real_model():
    data = build_report(make_result(2), now=NOW)
    assert PLACEHOLDER_WATERMARK not in flat(pdf_text(data))


def test_user_text_is_escaped_and_shown():
    notes = "Callus <b>& unclear</b> margin < 2 mm\nsecond line"
    data = build_report(
        make_result(),
        notes=notes,
        agreement="disagree",
        clinician="Dr. A & B <ortho>",
        markers=[Marker(0.25, 0.5, "cortex <gap>")],
        now=NOW,
    )
    text = flat(pdf_text(data))
    assert "Callus <b>& unclear</b> margin < 2 mm second line" in text
    assert "Dr. A & B <ortho>" in text
    assert "disagrees" in text
    assert "cortex <gap>" in text and "x 25%, y 50%" in text


def test_multi_view_table_lists_both_files():
    text = flat(pdf_text(build_report(make_result(2), now=NOW)))
    assert "wrist_view1.dcm" in text and "wrist_view2.dcm" in text
    assert "60.0 %" in text and "70.0 %" in text  # per-view probabilities
    assert "65.0 %" in text  # the study probability (mean)
    assert "mean of 2 views" in text


def test_images_are_embedded_and_downscaled():
    result = make_result(1, size=1500)
    reader = PdfReader(io.BytesIO(build_report(result, now=NOW)))
    images = [image for page in reader.pages for image in page.images]
    assert len(images) == 2  # original and overlay
    for image in images:
        assert max(image.image.size) <= 1024


def test_deterministic_except_id_and_date():
    result = make_result(2)
    first = build_report(result, notes="n", report_id="r1", now=NOW)
    assert build_report(result, notes="n", report_id="r1", now=NOW) == first
    assert build_report(result, notes="n", report_id="r2", now=NOW) != first


def test_default_report_id_is_a_fresh_hex_prefix():
    ids = []
    for _ in range(2):
        text = flat(pdf_text(build_report(make_result())))
        match = re.search(r"Report ID ([0-9a-f]{12}) Report date", text)
        assert match, text[:300]
        ids.append(match.group(1))
    assert ids[0] != ids[1]


@pytest.mark.parametrize("kwargs", [{"agreement": "maybe"}, {"intensity": 2.0}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        build_report(make_result(), **kwargs)
