"""The PDF report as a DICOM Encapsulated PDF (PS3.3 A.45.1), filed in the source study.

The object carries the source's Patient and Study modules by necessity: that is how a PACS
files it in the study. Whether the PDF's own text prints the patient fields is the report's
`include_patient` switch, and nothing else; BurnedInAnnotation says which (YES when the PDF
may print them: always for a PDF handed in, whose content this module cannot see).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from xray_ai.outputs.dicom_source import (MANUFACTURER, PRIVATE_SCHEME, SourceImage, add_common,
                                          copy_patient_and_study, lo, set_character_set)
from xray_ai.result import AnalysisResult

__all__ = ["build_encapsulated_pdf", "PDF_SERIES_NUMBER"]

PDF_SERIES_NUMBER = 9902


def build_encapsulated_pdf(result: AnalysisResult, sources: Sequence[SourceImage], pdf: bytes, series_uid: str,
                           now: _dt.datetime, *, patient_in_text: bool) -> Dataset:
    """The Encapsulated PDF Storage object of the report `pdf` (not yet written).

    Args:
        patient_in_text: whether the PDF may print patient identifiers (BurnedInAnnotation).

    Raises:
        ValueError: `pdf` is not a PDF document.
    """
    if not pdf.startswith(b"%PDF"):
        raise ValueError(f"the report is not a PDF document (starts with {pdf[:8]!r}, not b'%PDF')")
    ds = Dataset()
    copy_patient_and_study(ds, sources[0].header)
    add_common(ds, result, EncapsulatedPDFStorage, series_uid, modality="DOC", series_number=PDF_SERIES_NUMBER,
               now=now, series_description=f"AI report {result.model_id} {result.model_version}")
    ds.ConversionType = "WSD"
    ds.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES" if patient_in_text else "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = lo(f"AI decision support report: {result.condition_name}")
    concept = Dataset()
    concept.CodeValue = "report"
    concept.CodingSchemeDesignator = PRIVATE_SCHEME
    concept.CodeMeaning = "AI decision-support report"
    ds.ConceptNameCodeSequence = [concept]
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "xray_ai concepts"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    ds.CodingSchemeIdentificationSequence = [scheme]
    references = []
    for source in sources:
        if source.referable:
            ref = Dataset()
            ref.ReferencedSOPClassUID = source.header.SOPClassUID
            ref.ReferencedSOPInstanceUID = source.header.SOPInstanceUID
            references.append(ref)
    if references:
        ds.SourceInstanceSequence = references
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    # An OB value has even length: a PDF of odd length gets one NUL byte, which the length
    # above tells a reader to drop.
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    set_character_set(ds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
