"""The result as a DICOM Structured Report: a TID 1500 Measurement Report (highdicom).

Content tree (PS3.16 TID 1500, in a Comprehensive SR document):

    Imaging Measurement Report
      language en-US; observer: the model as a device (TID 1004: name = model id,
          model name = id and version, serial number = the model file's sha256)
      procedure reported: Plain radiography
      Image Library: each source image (TID 1600)
      Imaging Measurements
        group "study" (TID 1501): finding type = the condition; algorithm = model id,
            version and parameters (sha256, threshold and how it was chosen, training data);
            Probability (DCM 122157) and the threshold(s) as NUM; the condition Present /
            Absent / Indeterminate (not assessable), assessable, probability reliable,
            placeholder and synthetic-data model as CODE; study measurements where the
            result has them; then TEXT items: decision, how the threshold was chosen, every
            scope reason, intended use, the disclaimer
        one group per view: its probability, assessable, scope reasons, body part (DICOM
            BodyPartExamined as a finding site where CID 4031 names it, and as text; the
            model's own estimate as text), finding level, its measurements, and the
            source image it was measured on

A measurement model's figures (cardiomegaly: `ctr`, `cardiac_width_px`, `thoracic_width_px`)
are NUM items in both groups: the study's means and each view's own reading, the ratio
unitless, the widths in pixels (UCUM {pixels}: the image's pixels, whatever their spacing).
No standard concept names the radiographic cardiothoracic ratio (LOINC's cardiothoracic area
and circumference ratios are fetal echocardiography measures), so they too are 99XRAYAI codes.

TID 1500 and 1501 are extensible templates: the TEXT items after a group's coded content are
extensions, with concept names from the private scheme 99XRAYAI (declared in the Coding Scheme
Identification Sequence), as are the condition and the operating point, which have no
standard code.
"""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Sequence
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from xray_ai.outputs.dicom_source import (MANUFACTURER, PRIVATE_SCHEME, SYNTHETIC_NOTE, SourceImage, add_common,
                                          copy_patient_and_study, lo, set_character_set)
from xray_ai.result import DISCLAIMER, AnalysisResult

__all__ = ["build_structured_report", "SR_SERIES_NUMBER", "private_code"]

SR_SERIES_NUMBER = 9903
_UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
_PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
_RATIO_KEYS = ("ctr", "ratio")
# code values of the known measurements: an SH holds 16 characters and `thoracic_width_px` has 17
_MEASUREMENT_CODES = {"ctr": "ctr", "cardiac_width_px": "cardiac-width", "thoracic_width_px": "thoracic-width"}


def private_code(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(lo(value, 16), PRIVATE_SCHEME, lo(meaning))


_DECISION = private_code("decision", "Decision at the operating point")
_THRESHOLD = private_code("threshold", "Decision threshold (operating point)")
_HIGH_SENS = private_code("threshold-hs", "High-sensitivity threshold")
_THRESHOLD_METHOD = private_code("threshold-how", "How the threshold was chosen")
_ASSESSABLE = private_code("assessable", "In the model's scope (assessable)")
_RELIABLE = private_code("reliable", "Probability reliable")
_PLACEHOLDER = private_code("placeholder", "Untrained placeholder model")
_SYNTHETIC = private_code("synthetic", "Model trained on synthetic data")
_SCOPE_REASON = private_code("scope-reason", "Reason the image is out of scope")
_BODY_PART = private_code("body-part", "Body Part Examined (DICOM)")
_BODY_ESTIMATE = private_code("body-estimate", "Body part, the model's own estimate")
_FINDING_LEVEL = private_code("finding-level", "Automatic mark on the view")
_INTENDED_USE = private_code("intended-use", "Intended use of the model")
_DISCLAIMER = private_code("disclaimer", "Disclaimer")
_SOURCE_NOTE = private_code("source-image", "Source image")


def build_structured_report(result: AnalysisResult, sources: Sequence[SourceImage], series_uid: str,
                            now: _dt.datetime, *, measurements: dict[str, Any] | None = None,
                            view_measurements: Sequence[dict[str, Any] | None] = (),
                            evidence: Sequence[Dataset] = ()) -> Dataset:
    """The Comprehensive SR object of `result` (not yet written).

    Args:
        sources: the result's DICOM views with their headers (dicom_source.read_sources).
        measurements: the study's measurements (name -> number); None: the result's own
            (`AnalysisResult.measurements`, None for a classifier).
        view_measurements: per view (indexed like `result.views`), its measurements; where
            missing or None, the view's own reading (`ViewResult.measurement`) if it has one.
        evidence: other objects of this study to list as evidence when no source image can be
            referred to (a view loaded from bytes): the Secondary Captures.
    """
    referable = [s for s in sources if s.referable]
    library = [_evidence_copy(s.header) for s in referable]
    if measurements is None:
        measurements = result.measurements
    groups = [_study_group(result, referable, measurements or {})]
    for source in sources:
        extra = view_measurements[source.index] if source.index < len(view_measurements) else None
        if extra is None and source.view.measurement is not None:  # its numbers; the lines' places are skipped
            extra = source.view.measurement.to_json()
        groups.append(_view_group(result, source, extra or {}))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[result.model_id, result.model_version, result.sha256 or ""]),
        name=lo(result.model_id), manufacturer_name=MANUFACTURER,
        model_name=lo(f"{result.model_id} {result.model_version}"),
        serial_number=result.sha256 or None)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.PlainRadiography,
        imaging_measurements=groups,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")),
    )
    if library:  # TID 1600, before the measurements (the template's order is significant)
        content = report[0].ContentSequence
        at = next(i for i, item in enumerate(content) if item.ConceptNameCodeSequence[0].CodeValue == "126010")
        content.insert(at, _image_library(library))
    cited = library or [_evidence_copy(e) for e in evidence]
    if not cited:
        raise ValueError("the structured report needs at least one image of the study to cite as evidence")
    sr = hd.sr.ComprehensiveSR(
        evidence=cited, content=report[0], series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False,
        series_description=lo(f"AI findings {result.model_id} {result.model_version}"),
    )
    copy_patient_and_study(sr, sources[0].header)
    sop_uid = sr.SOPInstanceUID
    add_common(sr, result, sr.SOPClassUID, series_uid, modality="SR", series_number=SR_SERIES_NUMBER,
               series_description=f"AI findings {result.model_id} {result.model_version}", now=now)
    sr.SOPInstanceUID = sop_uid  # the one highdicom wrote into the file meta
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "xray_ai concepts"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    set_character_set(sr)
    return sr


def _study_group(result: AnalysisResult, referable: Sequence[SourceImage],
                 measurements: dict[str, Any]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    parameters = [f"sha256 {result.sha256 or 'not recorded'}", f"architecture {result.architecture}",
                  f"threshold {result.threshold:.6g}: {result.threshold_method}",
                  f"trained on {result.trained_on}", f"heatmap {result.heatmap_method}, backend {result.backend}"]
    if result.members:
        parameters.append(f"ensemble of {', '.join(result.members)}")
    algorithm = hd.sr.AlgorithmIdentification(name=lo(result.model_id), version=lo(result.model_version),
                                              parameters=parameters, manufacturer=MANUFACTURER)
    numbers = [_num(codes.DCM.Probability, result.probability, _UNITLESS),
               _num(_THRESHOLD, result.threshold, _UNITLESS)]
    if result.high_sensitivity_threshold is not None:
        numbers.append(_num(_HIGH_SENS, result.high_sensitivity_threshold, _UNITLESS))
    numbers += _measurements(measurements)
    presence = (codes.SCT.Indeterminate if not result.assessable
                else codes.SCT.Present if result.is_positive else codes.SCT.Absent)
    evaluations = [
        hd.sr.QualitativeEvaluation(_condition(result), presence),
        hd.sr.QualitativeEvaluation(_ASSESSABLE, _yes_no(result.assessable)),
        hd.sr.QualitativeEvaluation(_RELIABLE, _yes_no(result.assessable and not result.placeholder)),
        hd.sr.QualitativeEvaluation(_PLACEHOLDER, _yes_no(result.placeholder)),
        hd.sr.QualitativeEvaluation(_SYNTHETIC, _yes_no(result.synthetic)),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=lo(f"study: {result.condition}")),
        finding_type=_condition(result), algorithm_id=algorithm, measurements=numbers,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(s.header.SOPClassUID, s.header.SOPInstanceUID)
                       for s in referable] or None,
    )
    texts = [(_DECISION, result.decision), (_THRESHOLD_METHOD, result.threshold_method)]
    texts += [(_SCOPE_REASON, reason) for reason in result.scope_reasons]
    if result.synthetic:
        texts.append((_SYNTHETIC, f"{SYNTHETIC_NOTE}: {result.trained_on}"))
    texts += [(_INTENDED_USE, result.intended_use), (_DISCLAIMER, DISCLAIMER)]
    _append_texts(group, texts)
    return group


def _view_group(result: AnalysisResult, source: SourceImage,
                measurements: dict[str, Any]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    view = source.view
    body_part = str(source.header.get("BodyPartExamined") or view.image.metadata.get("body_part") or "").strip()
    site = _anatomic_code(body_part)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=lo(f"view {source.index + 1}")),
        finding_type=_condition(result),
        finding_sites=[hd.sr.FindingSite(site)] if site is not None else None,
        measurements=[_num(codes.DCM.Probability, view.probability, _UNITLESS)] + _measurements(measurements),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(_ASSESSABLE, _yes_no(view.assessable))],
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.header.SOPClassUID,
                                                            source.header.SOPInstanceUID)]
        if source.referable else None,
    )
    texts = [(_SCOPE_REASON, reason) for reason in view.scope_reasons]
    if body_part:
        texts.append((_BODY_PART, body_part))
    if view.body_part is not None:
        texts.append((_BODY_ESTIMATE, f"{view.body_part.part} ({view.body_part.probability:.0%}, "
                                      f"from {view.body_part.model_id})"))
    texts.append((_FINDING_LEVEL, result.finding_level(view) or "none"))
    if not source.referable:
        texts.append((_SOURCE_NOTE, f"{source.name}: loaded without its file, so not referable by UID"))
    _append_texts(group, texts)
    return group


def _append_texts(group: hd.sr.MeasurementsAndQualitativeEvaluations, texts) -> None:
    container = group[0]
    for name, value in texts:
        container.ContentSequence.append(
            hd.sr.TextContentItem(name=name, value=str(value), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))


def _num(name, value: float, unit) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit)


def _measurements(values: dict[str, Any]) -> list[hd.sr.Measurement]:
    """A result's measurements (e.g. ctr, cardiac_width_px): numbers only, NUM items with a
    private concept named by the key; a ratio is unitless, a `_px` length in pixels."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        unit = _PIXELS if key.endswith("_px") else _UNITLESS
        code = _MEASUREMENT_CODES.get(key, key)
        out.append(_num(private_code(code, key.replace("_", " ")), float(value), unit))
    return out


def _condition(result: AnalysisResult) -> hd.sr.CodedConcept:
    return private_code(result.condition, result.condition_name)


def _yes_no(flag: bool):
    return codes.SCT.Yes if flag else codes.SCT.No


def _anatomic_code(body_part: str):
    """The CID 4031 (Common Anatomic Region) concept a BodyPartExamined value names, or None."""
    key = "".join(ch for ch in body_part.upper() if ch.isalnum())
    if not key:
        return None
    return next((code for name, code in codes.cid4031.concepts.items() if name.upper() == key), None)


def _image_library(headers: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """Image Library (TID 1600): one group per modality, one IMAGE item per source image with
    the descriptors its header holds (TID 1602/1603: patient orientation, pixel spacing).

    Built here rather than by highdicom's ImageLibrary, which demands ImagerPixelSpacing and
    PatientOrientation of every radiograph, and many CR images carry neither."""
    contains, acquisition = hd.sr.RelationshipTypeValues.CONTAINS, hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=contains)
    library.ContentSequence = hd.sr.ContentSequence()
    by_modality: dict[str, list[Dataset]] = {}
    for header in headers:
        by_modality.setdefault(str(header.get("Modality") or ""), []).append(header)
    for modality, members in by_modality.items():
        group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=contains)
        group.ContentSequence = hd.sr.ContentSequence()
        coded = _modality_code(modality)
        if coded is not None:
            group.ContentSequence.append(hd.sr.CodeContentItem(name=codes.DCM.Modality, value=coded,
                                                               relationship_type=acquisition))
        for header in members:
            item = hd.sr.ImageContentItem(name=hd.sr.CodedConcept("260753009", "SCT", "Source"),
                                          referenced_sop_class_uid=header.SOPClassUID,
                                          referenced_sop_instance_uid=header.SOPInstanceUID,
                                          relationship_type=contains)
            descriptors = _image_descriptors(header)
            if descriptors:
                item.ContentSequence = hd.sr.ContentSequence(descriptors)
            group.ContentSequence.append(item)
        library.ContentSequence.append(group)
    return library


def _image_descriptors(header: Dataset) -> list:
    acquisition = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    out: list = []
    orientation = header.get("PatientOrientation")
    if orientation is not None and not isinstance(orientation, str) and len(orientation) == 2:
        out += [hd.sr.TextContentItem(name=codes.DCM.PatientOrientationRow, value=str(orientation[0]),
                                      relationship_type=acquisition),
                hd.sr.TextContentItem(name=codes.DCM.PatientOrientationColumn, value=str(orientation[1]),
                                      relationship_type=acquisition)]
    spacing = header.get("PixelSpacing") or header.get("ImagerPixelSpacing")
    try:
        row, column = float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError, IndexError):
        return out
    out += [hd.sr.NumContentItem(name=codes.DCM.HorizontalPixelSpacing, value=column, unit=codes.UCUM.Millimeter,
                                 relationship_type=acquisition),
            hd.sr.NumContentItem(name=codes.DCM.VerticalPixelSpacing, value=row, unit=codes.UCUM.Millimeter,
                                 relationship_type=acquisition)]
    return out


def _modality_code(modality: str):
    """The CID 29 (Acquisition Modality) concept of a Modality value, or None."""
    return next((c for c in codes.cid29.concepts.values() if c.value == modality), None)


def _evidence_copy(header: Dataset) -> Dataset:
    """A copy of a header that highdicom can cite: its Type 2 patient and study attributes
    present (highdicom reads them as attributes)."""
    ds = copy.deepcopy(header)
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "StudyDate", "StudyTime", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds
