"""What the DICOM outputs take from the images they describe: the source headers.

The Secondary Capture, Encapsulated PDF and Structured Report of a result
(`xray_ai.outputs.dicom_results`) go back into the study their images came from, so they
carry the source's Patient and Study modules (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2 and the
clinical-trial modules, where present) and refer to each source image by its SOP Class and
Instance UID. The XRay keeps only a few of those tags (`metadata['patient']`,
`metadata['study']`), so the header is read again from the file the view was loaded from
(`XRay.filename`, pixel data skipped). A view loaded from bytes has no file to read: its
header is rebuilt from the metadata the loader kept (patient, study, modality, body part),
and it cannot be referenced by UID (the outputs say so).

Also here: what every output shares (the banner text, the manufacturer, the private coding
scheme, new UIDs, value cutting to a VR's length).
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import PersonName

from xray_ai.result import AnalysisResult, ViewResult
from xray_ai.version import __version__

__all__ = ["SourceImage", "read_sources", "copy_patient_and_study", "add_common", "new_uid", "lo",
           "set_character_set", "BANNER", "MANUFACTURER", "PRIVATE_SCHEME", "SYNTHETIC_NOTE", "study_uid_of"]

log = logging.getLogger(__name__)

BANNER = "AI decision support - not for primary diagnosis"
SYNTHETIC_NOTE = "synthetic-data model"
MANUFACTURER = "xray_ai"
# A private coding scheme (PS3.16 8.2: designators beginning "99") for the concepts that have
# no standard code: the registry's condition ids, the decision, the operating point.
PRIVATE_SCHEME = "99XRAYAI"

# Patient (C.7.1.1), Clinical Trial Subject (C.7.1.3), General Study (C.7.2.1), Patient Study
# (C.7.2.2) and Clinical Trial Study (C.7.2.3): copied whole, sequences included.
_PATIENT_STUDY_KEYWORDS = (
    # Patient
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "QualityControlSubject", "ReferencedPatientSequence",
    "ReferencedPatientPhotoSequence", "OtherPatientIDsSequence", "OtherPatientNames", "EthnicGroup",
    "PatientComments", "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
    "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole",
    "ResponsibleOrganization", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    # Clinical Trial Subject
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName", "ClinicalTrialSiteID",
    "ClinicalTrialSiteName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
    # General Study
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence", "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "StudyDescription", "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy", "PhysiciansReadingStudyIdentificationSequence",
    "RequestingServiceCodeSequence", "ReferencedStudySequence", "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientWeight", "PatientSizeCodeSequence", "MedicalAlerts", "Allergies", "SmokingStatus", "PregnancyStatus",
    "LastMenstrualDate", "PatientState", "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID",
    "ServiceEpisodeDescription", "IssuerOfServiceEpisodeIDSequence", "Occupation", "AdditionalPatientHistory",
    "PatientSexNeutered",
    # Clinical Trial Study
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription", "ConsentForClinicalTrialUseSequence",
)
# Type 2 attributes of these modules: present, empty where the source has no value.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")
# metadata['patient'] / metadata['study'] key -> keyword (xray_ai.images.dicom keeps these).
_FROM_METADATA = {("patient", "name"): "PatientName", ("patient", "id"): "PatientID",
                  ("patient", "birth_date"): "PatientBirthDate", ("patient", "sex"): "PatientSex",
                  ("study", "date"): "StudyDate", ("study", "description"): "StudyDescription",
                  ("study", "accession_number"): "AccessionNumber", ("study", "study_uid"): "StudyInstanceUID",
                  ("study", "institution"): "InstitutionName"}


@dataclass(frozen=True)
class SourceImage:
    """One view of the result that came from DICOM, with its header.

    Attributes:
        index: the view's position in `AnalysisResult.views` (0-based).
        view: the view.
        header: the source's attributes (no pixel data): read from its file, or rebuilt from
            the loader's metadata when there is no file (`from_file` False).
        from_file: whether `header` was read from the file; only then does it hold the SOP
            Class and Instance UIDs that the outputs refer to.
    """

    index: int
    view: ViewResult
    header: Dataset
    from_file: bool

    @property
    def referable(self) -> bool:
        return self.from_file and "SOPInstanceUID" in self.header and "SOPClassUID" in self.header

    @property
    def name(self) -> str:
        return self.view.image.name or f"view {self.index + 1}"


def read_sources(result: AnalysisResult) -> list[SourceImage]:
    """The views of `result` that came from DICOM, with their headers, in view order.

    Raises:
        ValueError: no view came from DICOM; the views come from different studies; a
            view's file no longer holds the image that was analysed; a view has no
            StudyInstanceUID.
    """
    sources = []
    for index, view in enumerate(result.views):
        if view.image.metadata.get("format") != "dicom":
            continue
        header = _read_header(view)
        sources.append(SourceImage(index, view, header if header is not None else _from_metadata(view),
                                   header is not None))
    if not sources:
        names = ", ".join(v.image.name or "(unnamed)" for v in result.views) or "no views"
        raise ValueError(f"no view of this result came from DICOM ({names}): DICOM results go back into the "
                         "study of DICOM images, and a PNG or JPEG has none")
    studies = {study_uid_of(s) for s in sources}
    if "" in studies:
        missing = next(s.name for s in sources if not study_uid_of(s))
        raise ValueError(f"{missing}: the DICOM image has no StudyInstanceUID, so its results have no study to go to")
    if len(studies) > 1:
        raise ValueError("the views come from different DICOM studies (StudyInstanceUID "
                         f"{', '.join(sorted(studies))}); results go back into one study: analyse each apart")
    return sources


def study_uid_of(source: SourceImage) -> str:
    return str(source.header.get("StudyInstanceUID") or "").strip()


def _read_header(view: ViewResult) -> Dataset | None:
    """The view's DICOM header from its file, or None when it was not loaded from a file."""
    filename = view.image.filename
    path = Path(filename) if filename else None
    if path is None or not path.is_file():
        log.warning("%s: no file to read the DICOM header from (loaded from bytes); the outputs carry the "
                    "patient and study fields the loader kept and cannot refer to the image by UID",
                    view.image.name or "a view")
        return None
    try:
        header = dcmread(path, stop_before_pixels=True)
        header.decode()  # every text value to str: the outputs are written in UTF-8 where needed
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on a damaged header
        raise ValueError(f"{filename}: cannot read its DICOM header again ({type(exc).__name__}: {exc})") from exc
    rows_cols = view.image.metadata.get("original_size")
    if rows_cols and (header.get("Rows"), header.get("Columns")) != tuple(rows_cols):
        raise ValueError(f"{filename}: the file no longer holds the image that was analysed "
                         f"({header.get('Rows')} x {header.get('Columns')}, not {rows_cols[0]} x {rows_cols[1]})")
    return header


def _from_metadata(view: ViewResult) -> Dataset:
    meta = view.image.metadata
    header = Dataset()
    for (group, key), keyword in _FROM_METADATA.items():
        value = (meta.get(group) or {}).get(key)
        if value:
            setattr(header, keyword, value)
    for key, keyword in (("modality", "Modality"), ("body_part", "BodyPartExamined"),
                         ("view_position", "ViewPosition")):
        if meta.get(key):
            setattr(header, keyword, meta[key])
    return header


def copy_patient_and_study(target: Dataset, source: Dataset) -> None:
    """Copy the source's Patient, Study and clinical-trial modules into `target` (whole
    elements, sequences included; person names re-made from text so that they are written
    in the target's character set); the Type 2 ones present even when empty."""
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword not in source:
            continue
        element = copy.deepcopy(source[keyword])
        if element.VR == "PN":
            values = element.value if element.VM > 1 else [element.value]
            made = [PersonName(str(v)) for v in values if v is not None]
            element.value = made if element.VM > 1 else (made[0] if made else "")
        target[keyword] = element
    for keyword in _TYPE2:
        if keyword not in target:
            setattr(target, keyword, "")


def add_common(target: Dataset, result: AnalysisResult, sop_class_uid: str, series_uid: str, *,
               modality: str, series_number: int, series_description: str, now: _dt.datetime) -> str:
    """General Series / Equipment / SOP Common attributes every output shares; returns the
    new SOP Instance UID."""
    sop_uid = new_uid()
    target.SOPClassUID = sop_class_uid
    target.SOPInstanceUID = sop_uid
    target.InstanceCreationDate = now.strftime("%Y%m%d")
    target.InstanceCreationTime = now.strftime("%H%M%S")
    target.Modality = modality
    target.SeriesInstanceUID = series_uid
    target.SeriesNumber = series_number
    target.SeriesDescription = lo(series_description)
    target.SeriesDate = now.strftime("%Y%m%d")
    target.SeriesTime = now.strftime("%H%M%S")
    target.Manufacturer = MANUFACTURER
    target.ManufacturerModelName = lo(result.model_id)
    target.SoftwareVersions = [lo(f"xray_ai {__version__}"), lo(f"model {result.model_version}")]
    target.ContentDate = now.strftime("%Y%m%d")
    target.ContentTime = now.strftime("%H%M%S")
    return sop_uid


def set_character_set(target: Dataset) -> None:
    """ISO_IR 192 (UTF-8) where any text value is not ASCII; none (the default repertoire) otherwise."""
    def texts(ds: Dataset):
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    yield from texts(item)
            elif element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and element.value is not None:
                values = element.value if element.VM > 1 else [element.value]
                yield from (str(v) for v in values)

    if any(not text.isascii() for text in texts(target)):
        target.SpecificCharacterSet = "ISO_IR 192"


def new_uid() -> str:
    return generate_uid()


def lo(text: str, limit: int = 64) -> str:
    """A value cut to a VR's maximum length (LO and SH: 64 and 16 characters)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
