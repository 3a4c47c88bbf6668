"""DICOM results (xray_ai.outputs.dicom_results): Secondary Capture, Encapsulated PDF and SR.

Each object is written, read back with pydicom and checked field by field against the result
it came from, and validated by independent tools where installed: dicom3tools' `dciodvfy`
(the IOD checker) and DCMTK's `dsrdump` and `dcm2pdf` (CI installs both, .ci/install-browser.sh).
Results are built by hand from real images (pydicom-data's RG3 CR and RG1 chest), so no
model is needed; one test runs `predict --dicom-out` end to end on the tiny model.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from xray_ai.images import load_image
from xray_ai.outputs.dicom_capture import banner_lines
from xray_ai.outputs.dicom_results import PDF_NAME, SR_NAME, write_dicom_results
from xray_ai.outputs.dicom_source import BANNER, read_sources
from xray_ai.outputs.overlay import render_overlay
from xray_ai.result import PLACEHOLDER_WATERMARK, AnalysisResult, ViewResult

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def data_file(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available (pip install pydicom-data)")
    return path


@pytest.fixture(scope="module")
def rg3():
    return load_image(data_file("RG3_UNCR.dcm"))


@pytest.fixture(scope="module")
def rg3_header():
    return pydicom.dcmread(data_file("RG3_UNCR.dcm"), stop_before_pixels=True)


def _heatmap(size: int = 7) -> np.ndarray:
    heat = np.zeros((size, size), np.float32)
    heat[2:4, 3:5] = 1.0
    return heat


def make_result(images, probabilities, *, scope=None, placeholder=False, synthetic=True, threshold=0.5,
                condition="fracture") -> AnalysisResult:
    scope = scope or [()] * len(images)
    views = tuple(ViewResult(image=img, probability=p, heatmap=_heatmap(), scope_reasons=tuple(s))
                  for img, p, s in zip(images, probabilities, scope))
    counted = [v.probability for v in views if v.assessable] or [v.probability for v in views]
    return AnalysisResult(
        condition=condition, condition_name="Fracture", positive_label="fracture", negative_label="no fracture",
        model_id="fracture-test-model", model_version="9.9.9", architecture="mobilenetv2", profile="fast",
        sha256="ab" * 32, trained_on="synthetic phantoms (test)", intended_use="tests only", threshold=threshold,
        threshold_method="Youden's J on the validation split (test)", probability=float(np.mean(counted)),
        placeholder=placeholder, placeholder_reason="file missing" if placeholder else None,
        heatmap_method="gradcam", target_layer="out_relu", views=views, synthetic=synthetic,
        created="2026-12-01T00:00:00+00:00", high_sensitivity_threshold=0.3)


def content_items(ds):
    """Every SR content item, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def concept(item) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


def texts(ds, meaning: str) -> list[str]:
    return [i.TextValue for i in content_items(ds) if i.ValueType == "TEXT" and concept(i) == meaning]


def numbers(ds, meaning: str) -> list[float]:
    return [float(i.MeasuredValueSequence[0].NumericValue) for i in content_items(ds)
            if i.ValueType == "NUM" and concept(i) == meaning]


def assert_valid_iod(path: Path) -> None:
    """dicom3tools' dciodvfy finds no error (warnings are allowed: our private coding
    scheme 99XRAYAI is, by design, a term it does not know)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert not errors, f"{path.name}: {errors}"


@pytest.fixture(scope="module")
def positive(rg3, tmp_path_factory):
    result = make_result([rg3], [0.81])
    folder = tmp_path_factory.mktemp("positive")
    return result, write_dicom_results(result, folder)


def test_three_kinds_of_object_in_the_source_study(positive, rg3_header):
    result, paths = positive
    assert [p.name for p in paths] == ["xray_ai_sc_view1.dcm", PDF_NAME, SR_NAME]
    objects = [pydicom.dcmread(p) for p in paths]
    assert [str(o.SOPClassUID) for o in objects] == [SC_CLASS, PDF_CLASS, SR_CLASS]
    assert [o.Modality for o in objects] == ["OT", "DOC", "SR"]
    series = {o.SeriesInstanceUID for o in objects}
    instances = {o.SOPInstanceUID for o in objects}
    assert len(series) == 3 and rg3_header.SeriesInstanceUID not in series
    assert len(instances) == 3 and rg3_header.SOPInstanceUID not in instances
    for o in objects:
        assert o.StudyInstanceUID == rg3_header.StudyInstanceUID
        assert o.file_meta.MediaStorageSOPInstanceUID == o.SOPInstanceUID
        assert "fracture-test-model" in o.SeriesDescription
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "AccessionNumber", "StudyID", "StudyDescription"):
            assert o.get(keyword) == rg3_header.get(keyword), (o.Modality, keyword)


def test_every_object_passes_dciodvfy(positive):
    for path in positive[1]:
        assert_valid_iod(path)


def test_secondary_capture_is_the_overlay_at_full_resolution_under_a_banner(positive, rg3, rg3_header):
    result, paths = positive
    sc = pydicom.dcmread(paths[0])
    assert sc.BurnedInAnnotation == "YES" and list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3 and sc.BitsStored == 8
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == rg3_header.SOPInstanceUID
    pixels = sc.pixel_array
    height, width = rg3.pixels.shape
    banner = pixels.shape[0] - height
    assert pixels.shape[1] == width and 40 < banner < height // 4
    # the image part is exactly the overlay (with its finding box: 0.81 is above the threshold)
    expected = render_overlay(rg3.pixels, _heatmap(), 0.5, finding="finding")
    assert np.array_equal(pixels[banner:], expected)
    strip = pixels[:banner]
    yellow = (strip[..., 0] > 200) & (strip[..., 1] > 150) & (strip[..., 2] < 80)
    assert yellow[: banner // 4].any(), "the first banner line (the notice) is drawn in yellow"
    assert (strip.max(axis=2) > 200).mean() > 0.01, "the banner holds text"


def test_banner_lines_say_what_the_issue_asks(rg3):
    result = make_result([rg3], [0.81])
    lines = [text for text, _ in banner_lines(result, read_sources(result)[0])]
    assert lines[0] == BANNER == "AI decision support - not for primary diagnosis"
    assert "fracture-test-model" in lines[1] and "9.9.9" in lines[1] and "synthetic-data model" in lines[1]
    assert "Fracture: fracture" in lines[2] and "threshold 0.50" in lines[2]
    real = dataclasses.replace(result, synthetic=False)
    assert "synthetic" not in " ".join(t for t, _ in banner_lines(
        real, read_sources(real)[0]))


def test_a_study_that_is_not_assessable_says_so_and_gets_no_colour(rg3, tmp_path):
    reason = "RG3_UNCR.dcm: unlike the images fracture-test-model was trained on (test)."
    result = make_result([rg3], [0.9], scope=[(reason,)])
    paths = write_dicom_results(result, tmp_path)
    pixels = pydicom.dcmread(paths[0]).pixel_array
    banner = pixels.shape[0] - rg3.pixels.shape[0]
    image = pixels[banner:]
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
    lines = [t for t, _ in banner_lines(result, read_sources(result)[0])]
    assert lines[2] == "Fracture: not assessable"
    sr = pydicom.dcmread(paths[2])
    assert texts(sr, "Decision at the operating point") == ["not assessable"]
    assert reason in texts(sr, "Reason the image is out of scope")
    presence = [i.ConceptCodeSequence[0].CodeMeaning for i in content_items(sr)
                if i.ValueType == "CODE" and concept(i) == "Fracture"]
    assert presence == ["Indeterminate"]
    assert_valid_iod(paths[2])


def test_a_placeholder_carries_the_watermark_in_the_banner_and_the_sr(rg3):
    result = make_result([rg3], [0.9], placeholder=True)
    lines = [t for t, _ in banner_lines(result, read_sources(result)[0])]
    assert lines[-1] == PLACEHOLDER_WATERMARK


def test_encapsulated_pdf_holds_the_report_byte_for_byte(positive, tmp_path, rg3):
    pypdf = pytest.importorskip("pypdf")
    result, paths = positive
    doc = pydicom.dcmread(paths[1])
    assert doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    pdf = bytes(doc.EncapsulatedDocument)[: doc.EncapsulatedDocumentLength]
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF")
    text = "".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    assert "fracture-test-model" in text and "omitted from this report" in text
    assert doc.BurnedInAnnotation == "NO"  # the default report prints no patient fields
    if shutil.which("dcm2pdf"):  # DCMTK reads it back to the same PDF
        out = tmp_path / "back.pdf"
        subprocess.run(["dcm2pdf", str(paths[1]), str(out)], check=True, capture_output=True, timeout=60)
        assert out.read_bytes().rstrip(b"\0") == pdf
    given = write_dicom_results(result, tmp_path / "given", report_pdf=pdf)
    assert pydicom.dcmread(given[1]).BurnedInAnnotation == "YES"  # a PDF handed in may print them


def test_structured_report_holds_the_result_and_its_provenance(positive, rg3_header):
    result, paths = positive
    sr = pydicom.dcmread(paths[2])
    root = concept(sr)
    assert root == "Imaging Measurement Report" and sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert numbers(sr, "Probability")[0] == pytest.approx(0.81, abs=1e-9)
    assert numbers(sr, "Decision threshold (operating point)") == [pytest.approx(0.5)]
    assert numbers(sr, "High-sensitivity threshold") == [pytest.approx(0.3)]
    assert texts(sr, "Decision at the operating point") == ["fracture"]
    assert texts(sr, "How the threshold was chosen") == [result.threshold_method]
    assert texts(sr, "Body Part Examined (DICOM)") == ["EXTREMITY"]
    sites = [i.ConceptCodeSequence[0].CodeMeaning for i in content_items(sr) if concept(i) == "Finding Site"]
    assert sites == ["Extremity"]
    assert texts(sr, "Algorithm Name") == ["fracture-test-model"] and texts(sr, "Algorithm Version") == ["9.9.9"]
    assert texts(sr, "Device Observer Serial Number") == ["ab" * 32]
    assert any(t.startswith("sha256 " + "ab" * 32) for t in texts(sr, "Algorithm Parameters"))
    presence = [i.ConceptCodeSequence[0].CodeMeaning for i in content_items(sr)
                if i.ValueType == "CODE" and concept(i) == "Fracture"]
    assert presence == ["Present"]
    referenced = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in content_items(sr)
                  if i.ValueType == "IMAGE"}
    assert referenced == {rg3_header.SOPInstanceUID}
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == rg3_header.SOPInstanceUID
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99XRAYAI"
    if shutil.which("dsrdump"):  # DCMTK's SR reader parses the document
        dump = subprocess.run(["dsrdump", str(paths[2])], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0 and "Imaging Measurement Report" in dump.stdout, dump.stderr


def test_measurements_of_a_measurement_model_become_num_items(rg3, tmp_path):
    result = make_result([rg3], [0.7])

    class Measured(AnalysisResult):
        def to_json(self):
            data = super().to_json()
            data["measurements"] = {"ctr": 0.56, "cardiac_width_px": 612, "thoracic_width_px": 1093}
            return data

    measured = Measured(**{f.name: getattr(result, f.name) for f in dataclasses.fields(AnalysisResult)})
    sr = pydicom.dcmread(write_dicom_results(measured, tmp_path)[2])
    assert numbers(sr, "ctr") == [pytest.approx(0.56)]
    assert numbers(sr, "cardiac width px") == [612.0] and numbers(sr, "thoracic width px") == [1093.0]
    units = {concept(i): i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
             for i in content_items(sr) if i.ValueType == "NUM"}
    assert units["ctr"] == "1" and units["cardiac width px"] == "{pixels}"


def test_two_views_give_two_captures_one_series_and_a_group_each(rg3, tmp_path):
    other = load_image(data_file("RG3_J2KR.dcm"))  # the same image, JPEG 2000: same study
    result = make_result([rg3, other], [0.2, 0.4])
    paths = write_dicom_results(result, tmp_path)
    assert [p.name for p in paths] == ["xray_ai_sc_view1.dcm", "xray_ai_sc_view2.dcm", PDF_NAME, SR_NAME]
    sc1, sc2 = (pydicom.dcmread(p) for p in paths[:2])
    assert sc1.SeriesInstanceUID == sc2.SeriesInstanceUID and [sc1.InstanceNumber, sc2.InstanceNumber] == [1, 2]
    sr = pydicom.dcmread(paths[3])
    assert numbers(sr, "Probability") == [pytest.approx(0.3), pytest.approx(0.2), pytest.approx(0.4)]


def test_only_dicom_views_get_a_capture(rg3, tmp_path):
    from PIL import Image

    png = tmp_path / "view.png"
    Image.fromarray(np.full((300, 300), 128, np.uint8)).save(png)
    result = make_result([load_image(png), rg3], [0.2, 0.6])
    paths = write_dicom_results(result, tmp_path / "out")
    assert [p.name for p in paths] == ["xray_ai_sc_view2.dcm", PDF_NAME, SR_NAME]


def test_refusals_name_the_problem(rg3, tmp_path):
    from PIL import Image

    png = tmp_path / "only.png"
    Image.fromarray(np.full((300, 300), 128, np.uint8)).save(png)
    with pytest.raises(ValueError, match=r"no view of this result came from DICOM \(only.png\)"):
        write_dicom_results(make_result([load_image(png)], [0.5]), tmp_path / "a")
    chest = load_image(data_file("RG1_UNCR.dcm"))
    with pytest.raises(ValueError, match="different DICOM studies"):
        write_dicom_results(make_result([rg3, chest], [0.5, 0.5]), tmp_path / "b")
    with pytest.raises(ValueError, match="not a PDF document"):
        write_dicom_results(make_result([rg3], [0.5]), tmp_path / "c", report_pdf=b"<html>")
    assert not (tmp_path / "a").exists() and not list((tmp_path / "c").glob("*.dcm"))


def test_a_file_changed_since_the_analysis_is_refused_by_name(tmp_path):
    copy = tmp_path / "changing.dcm"
    shutil.copy(data_file("RG3_UNCR.dcm"), copy)
    result = make_result([load_image(copy)], [0.5])
    shutil.copy(data_file("RG1_UNCR.dcm"), copy)
    with pytest.raises(ValueError, match=r"changing\.dcm: the file no longer holds the image"):
        write_dicom_results(result, tmp_path / "out")


def test_an_image_loaded_from_bytes_still_goes_back_into_its_study(tmp_path, caplog):
    data = Path(data_file("RG3_UNCR.dcm")).read_bytes()
    result = make_result([load_image(data, filename="upload.dcm")], [0.7])
    with caplog.at_level(logging.WARNING, logger="xray_ai.outputs.dicom_source"):
        paths = write_dicom_results(result, tmp_path)
    assert "no file to read the DICOM header from" in caplog.text
    sc, _, sr = (pydicom.dcmread(p) for p in paths)
    assert sc.StudyInstanceUID == sr.StudyInstanceUID == "1.3.6.1.4.1.5962.1.2.11.20040826185059.5457"
    assert sr.PatientID == "11RG3" and "SourceImageSequence" not in sc
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sc.SOPInstanceUID
    assert any("not referable by UID" in t for t in texts(sr, "Source image"))
    for path in paths:
        assert_valid_iod(path)


def test_a_patient_name_outside_ascii_is_written_in_utf8(tmp_path):
    ds = pydicom.dcmread(data_file("RG3_UNCR.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    source = tmp_path / "latin1.dcm"
    ds.save_as(source)
    paths = write_dicom_results(make_result([load_image(source)], [0.5]), tmp_path / "out")
    for path in paths:
        back = pydicom.dcmread(path)
        assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "Müller^Jürgen"
        assert_valid_iod(path)


def test_predict_dicom_out_end_to_end(tiny_registry, tmp_path, capsys):
    from xray_ai.cli import main

    out = tmp_path / "dicom"
    code = main(["predict", data_file("RG3_UNCR.dcm"), "--condition", "fracture", "--dicom-out", str(out),
                 "--include-patient", "--registry", str(tiny_registry), "--json"])
    assert code == 0, capsys.readouterr().err
    paths = sorted(out.glob("*.dcm"))
    assert [p.name for p in paths] == ["xray_ai_report.dcm", "xray_ai_sc_view1.dcm", "xray_ai_sr.dcm"]
    assert pydicom.dcmread(out / PDF_NAME).BurnedInAnnotation == "YES"  # --include-patient prints them
    assert texts(pydicom.dcmread(out / SR_NAME), "Algorithm Name") == ["tiny-test"]

    png = tmp_path / "view.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(png)
    capsys.readouterr()
    code = main(["predict", str(png), "--condition", "fracture", "--dicom-out", str(tmp_path / "none"),
                 "--registry", str(tiny_registry)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "view.png" in err[0] and "came from DICOM" in err[0]
