"""DICOM results of one analysis, for the study its images came from.

`write_dicom_results` writes three kinds of object into a folder, all in the source study
(same StudyInstanceUID, the source's Patient and Study modules), each kind in a new series
whose SeriesDescription names the model:

- one Secondary Capture per DICOM view (`dicom_capture`): the overlay at the image's own
  resolution under a burned-in banner ("AI decision support - not for primary diagnosis",
  model id and version, the decision or "not assessable", "synthetic-data model" where true);
  BurnedInAnnotation YES; series 9901, modality OT;
- the PDF report as an Encapsulated PDF (`dicom_pdf`); series 9902, modality DOC;
- a Structured Report (`dicom_sr`): a TID 1500 measurement report with the condition,
  probability, decision, threshold and how it was chosen, scope, body part, measurements,
  the model's id, version and sha256, and a reference to each source image; series 9903.

The objects carry the patient module by necessity (a PACS files them by it); the report's
`include_patient` switch governs only what the PDF prints. pydicom, highdicom, PIL and
reportlab only: no TensorFlow.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset

from xray_ai.outputs.dicom_capture import build_secondary_capture
from xray_ai.outputs.dicom_pdf import build_encapsulated_pdf
from xray_ai.outputs.dicom_source import new_uid, read_sources
from xray_ai.outputs.dicom_sr import build_structured_report
from xray_ai.result import AnalysisResult

__all__ = ["write_dicom_results", "write_dicom_objects", "SC_NAME", "PDF_NAME", "SR_NAME"]

SC_NAME = "xray_ai_sc_view{n}.dcm"  # n: the view's number in the study, from 1
PDF_NAME = "xray_ai_report.dcm"
SR_NAME = "xray_ai_sr.dcm"


def write_dicom_results(result: AnalysisResult, directory: str | os.PathLike, *,
                        report_pdf: bytes | None = None) -> list[Path]:
    """Write the Secondary Captures, the Encapsulated PDF and the Structured Report of `result`.

    Args:
        result: an analysis whose views (some or all) came from DICOM files, all of one study.
        directory: the folder to write into (created if missing). The files are named
            SC_NAME (one per DICOM view), PDF_NAME and SR_NAME; a second call into the same
            folder replaces them. Each file is written whole or not at all.
        report_pdf: the PDF report to encapsulate (`build_report(...)`); None builds one with
            the report's defaults (patient fields not printed). A PDF handed in is marked
            BurnedInAnnotation YES, since it may print them (`write_dicom_objects` takes the
            caller's word instead).

    Returns:
        The paths written: the Secondary Captures in view order, then the PDF, then the SR.

    Raises:
        ValueError: no view came from DICOM, the views come from different studies, a view's
            file changed since it was analysed, or `report_pdf` is not a PDF.
    """
    if report_pdf is None:
        read_sources(result)  # refuse a result without DICOM views before building its report
        from xray_ai.outputs.report import build_report

        return write_dicom_objects(result, directory, build_report(result), pdf_prints_patient=False)
    return write_dicom_objects(result, directory, bytes(report_pdf), pdf_prints_patient=True)


def write_dicom_objects(result: AnalysisResult, directory: str | os.PathLike, report_pdf: bytes, *,
                        pdf_prints_patient: bool) -> list[Path]:
    """`write_dicom_results` with the PDF given and whether it prints patient identifiers
    (the report's `include_patient`), which sets the Encapsulated PDF's BurnedInAnnotation."""
    sources = read_sources(result)
    if not report_pdf.startswith(b"%PDF"):
        raise ValueError(f"report_pdf is not a PDF document (starts with {report_pdf[:8]!r}, not b'%PDF')")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now().replace(microsecond=0)  # local time, as DICOM dates are without a zone offset

    objects: list[tuple[str, Dataset]] = []
    sc_series = new_uid()
    captures = []
    for number, source in enumerate(sources, start=1):
        capture = build_secondary_capture(result, source, sc_series, number, now)
        captures.append(capture)
        objects.append((SC_NAME.format(n=source.index + 1), capture))
    objects.append((PDF_NAME, build_encapsulated_pdf(result, sources, report_pdf, new_uid(), now,
                                                     patient_in_text=pdf_prints_patient)))
    data = result.to_json()
    measurements = data.get("measurements") if isinstance(data.get("measurements"), dict) else None
    per_view = [v.get("measurement") if isinstance(v.get("measurement"), dict) else None
                for v in data.get("views", [])]
    objects.append((SR_NAME, build_structured_report(result, sources, new_uid(), now, measurements=measurements,
                                                     view_measurements=per_view, evidence=captures)))
    return [_save(folder / name, ds) for name, ds in objects]


def _save(path: Path, ds: Dataset) -> Path:
    """Write `ds` as a DICOM file (preamble, file meta) through a temporary file and a rename."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            ds.save_as(stream, enforce_file_format=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
