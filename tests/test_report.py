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
        # as analyze() writes them: the views' image warnings named by file
        warnings=("image smaller than the model input", "wrist_view1.dcm: inverted MONOCHROME1"),
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


# --- scope and finding levels (issue 15) -------------------------------------------------

CT_REASON = ("wrist_view1.dcm: DICOM modality CT (computed tomography) is not a projection radiograph; "
             "the model reads CR and DX radiographs only.")


def _out_of_scope(result: AnalysisResult, *indices: int, reason: str = CT_REASON) -> AnalysisResult:
    import dataclasses

    views = tuple(dataclasses.replace(v, scope_reasons=(reason.replace("wrist_view1", f"wrist_view{i + 1}"),))
                  if i in indices else v for i, v in enumerate(result.views))
    return dataclasses.replace(result, views=views)


def test_a_study_out_of_scope_says_not_assessable_with_its_reasons_and_no_decision():
    result = _out_of_scope(make_result(), 0)
    assert not result.assessable and result.decision == "not assessable"
    text = flat(pdf_text(build_report(result, agreement="agree", report_id="abc123", now=NOW)))
    assert "Not assessable: no view of this study is in the model's scope, so no decision is given" in text  # banner
    assert "Result Not assessable" in text  # the result table
    assert text.count("DICOM modality CT (computed tomography) is not a projection radiograph") >= 2
    assert "Model output 60.0 %, unreliable for these images" in text
    assert "Decision fracture" not in text and "Decision no fracture" not in text
    assert "(fracture)" not in text and "model's decision" not in text
    assert "agrees that the study is not assessable" in text
    assert "No automatic marks" in text and "Solid box" not in text


def test_a_positive_result_still_says_its_decision_and_the_legend():
    result = make_result()
    assert result.assessable and result.is_positive
    text = flat(pdf_text(build_report(result, report_id="abc123", now=NOW)))
    assert "Decision fracture" in text and "Probability 60.0 % (fracture)" in text
    assert "Not assessable" not in text
    assert 'Solid box, "finding"' in text and 'Dotted box, "possible finding"' in text
    assert "probability 60.0 %; finding" in text  # the view's title names its mark


def test_views_out_of_scope_in_an_assessable_study_are_named_and_not_counted():
    import dataclasses

    result = _out_of_scope(make_result(2), 1)
    result = dataclasses.replace(result, probability=result.views[0].probability)  # as analyze() counts
    text = flat(pdf_text(build_report(result, report_id="abc123", now=NOW)))
    assert "Decision fracture" in text and "Not assessable" not in text
    assert "mean of the 1 assessable views of 2" in text
    assert "Views not counted wrist_view2.dcm: DICOM modality CT" in text
    assert "no: not counted" in text and "(out of scope, not counted)" in text


def _overlay_pixels(result: AnalysisResult) -> np.ndarray:
    reader = PdfReader(io.BytesIO(build_report(result, report_id="abc123", now=NOW)))
    images = [np.asarray(image.image.convert("RGB")) for page in reader.pages for image in page.images]
    coloured = [a for a in images if np.ptp(a.astype(int), axis=2).any()]  # the overlay; the original is gray
    assert len(images) == 2 and len(coloured) == 1
    return coloured[0]


def test_the_pdf_overlay_draws_the_box_the_finding_level_calls_for():
    import dataclasses

    positive = make_result()  # 0.60 >= 0.437: a finding
    below = dataclasses.replace(positive, views=(dataclasses.replace(positive.views[0], probability=0.1),),
                                probability=0.1)
    assert positive.finding_level(positive.views[0]) == "finding" and below.finding_level(below.views[0]) is None
    with_box, without = _overlay_pixels(positive), _overlay_pixels(below)
    assert with_box.shape[0] >= 512  # the 128 px image is drawn at display size
    assert np.any(with_box != without)
    # Not assessable: the same heatmap, and no box.
    np.testing.assert_array_equal(_overlay_pixels(_out_of_scope(positive, 0)), without)


# --- fonts, long fields, file names (issue 18) --------------------------------------------


def _with_patient(result: AnalysisResult, **patient) -> AnalysisResult:
    import dataclasses

    view = result.views[0]
    metadata = dict(view.image.metadata, patient=dict(view.image.metadata["patient"], **patient))
    image = XRay(view.image.pixels, metadata, view.image.filename)
    return dataclasses.replace(result, views=(dataclasses.replace(view, image=image), *result.views[1:]))


def _embedded_fonts(data: bytes) -> set[str]:
    fonts = set()
    for page in PdfReader(io.BytesIO(data)).pages:
        for font in page["/Resources"]["/Font"].values():
            fonts.add(str(font.get_object()["/BaseFont"]))
    return fonts


@pytest.mark.parametrize("name", ["Иванов^Пётр", "ΠΑΠΑΔΟΠΟΥΛΟΣ^Νίκος", "محمد^علي", "王^小明", "山田^太郎", "김^민준"])
def test_any_patient_name_is_drawn_in_a_font_that_has_its_glyphs(name):
    from xray_ai.outputs.report_layout import FONT, report_fonts, unsupported_characters

    fonts = report_fonts()
    assert fonts["regular"] == FONT, "no Unicode TrueType font found (DejaVu Sans: fonts-dejavu-core or matplotlib)"
    cjk = any(0x2E80 <= ord(c) <= 0xD7AF for c in name)
    if cjk and not fonts["cjk"]:
        pytest.skip("no CJK fallback font installed (fonts-wqy-zenhei; .ci/install-browser.sh installs it)")
    assert unsupported_characters(name) == []  # every character has a glyph: no empty boxes
    data = build_report(_with_patient(make_result(), name=name), include_patient=True, report_id="abc123", now=NOW)
    embedded = _embedded_fonts(data)
    assert any("DejaVuSans" in f for f in embedded), embedded  # a subset of the TrueType font, not Helvetica
    if cjk:  # the fallback's subset is embedded too (WenQuanYi Zen Hei or Droid Sans Fallback)
        assert any("DejaVu" not in f and "Helvetica" not in f for f in embedded), embedded
    assert set(name) - {"^"} <= set(pdf_text(data))  # (a reader may reorder right-to-left text)


def test_a_character_no_font_has_becomes_a_replacement_mark():
    from xray_ai.outputs.report_layout import escape_markup, unsupported_characters

    odd = "\U0001D11E"  # MUSICAL SYMBOL G CLEF: in neither DejaVu Sans nor the CJK fallback
    assert unsupported_characters(f"a{odd}") == [odd]
    assert "\ufffd" in escape_markup(f"a{odd}") and odd not in escape_markup(f"a{odd}")


@pytest.mark.parametrize("field", ["patient", "description", "notes", "reason", "filename"])
def test_very_long_fields_never_break_the_layout(field):
    """5,000 characters (a DICOM text field, a note, a reason, a file name) with patient
    identifiers on: the PDF is built; a table cell is cut with an ellipsis."""
    import dataclasses

    long = ("Lorem ipsum dolor sit amet " * 190)[:5000]
    result, notes = make_result(placeholder=field == "reason"), None
    if field == "patient":
        result = _with_patient(result, name=long.replace(" ", ""))  # one 5,000-character word
    elif field == "description":
        view = result.views[0]
        metadata = dict(view.image.metadata, study=dict(view.image.metadata["study"], description=long))
        result = dataclasses.replace(result, views=(dataclasses.replace(
            view, image=XRay(view.image.pixels, metadata, view.image.filename)),))
    elif field == "notes":
        notes = long * 3
    elif field == "reason":
        result = dataclasses.replace(result, placeholder_reason=long)
    else:
        view = result.views[0]
        result = dataclasses.replace(result, views=(dataclasses.replace(
            view, image=XRay(view.image.pixels, view.image.metadata, "x" * 5000 + ".dcm")),))
    data = build_report(result, include_patient=True, notes=notes, report_id="abc123", now=NOW)
    assert data.startswith(b"%PDF")
    text = flat(pdf_text(data))
    if field in ("patient", "description"):  # a table cell: cut, and it says so
        assert re.search(r"… \(cut: [\d,]+ characters\)", text), text[:400]


def test_the_report_names_views_by_file_name_not_path():
    import dataclasses

    result = make_result(2)
    views = tuple(dataclasses.replace(v, image=XRay(v.image.pixels, v.image.metadata,
                                                    f"/home/DOE_JANE_1970/scans/wrist_view{i + 1}.dcm"))
                  for i, v in enumerate(result.views))
    result = dataclasses.replace(result, views=views)
    data = build_report(result, markers=[Marker(0.5, 0.5, "here", 0)], report_id="abc123", now=NOW)
    text = flat(pdf_text(data))
    marker_line = text[text.index("1. here"):][:80] if "1. here" in text else text[text.index("here") - 60:][:120]
    assert "view 1 (wrist_view1.dcm)" in marker_line
    assert "wrist_view2.dcm" in text and "/home/" not in text and "DOE_JANE" not in text  # nowhere in the PDF
