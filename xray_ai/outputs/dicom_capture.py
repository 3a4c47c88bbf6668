"""Secondary Capture of one view: the overlay with a burned-in banner, as a DICOM image.

The overlay is `view_overlay.view_overlay` at the image's own resolution (what `predict
--heatmap` writes), with the automatic mark the result's finding level calls for (for a
measurement model, the heart and thorax outlines and the two diameters) and the
placeholder watermark where the model is a placeholder. A view out of the model's scope gets
no colour layer (its map means nothing there). Above the image a black strip is added, the
banner, so that no pixel of the radiograph is covered:

    AI decision support - not for primary diagnosis
    model MODEL_ID version VERSION [- synthetic-data model]
    CONDITION: DECISION (probability P, threshold T)   |   CONDITION: not assessable
        (a measurement model: CONDITION: DECISION (CTR R, rule: CTR > 0.50; calibrated probability P))
    view I of N: ...  (a measurement model: its CTR and widths)
    [PLACEHOLDER MODEL - NOT A DIAGNOSTIC RESULT]

The image is written as RGB, 8 bits, uncompressed, with BurnedInAnnotation YES, ImageType
DERIVED\\SECONDARY and a Source Image Sequence that names the radiograph it was made from
(PS3.3 A.8.1, Secondary Capture Image IOD).
"""

from __future__ import annotations

import datetime as _dt
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from xray_ai.outputs.measurement_display import CTR_RULE_SHORT, study_ctr, view_ctr_text
from xray_ai.outputs.dicom_source import (BANNER, MANUFACTURER, SYNTHETIC_NOTE, SourceImage, add_common,
                                          copy_patient_and_study, lo, set_character_set)
from xray_ai.outputs.view_overlay import view_overlay
from xray_ai.result import PLACEHOLDER_WATERMARK, AnalysisResult

__all__ = ["banner_lines", "render_capture", "build_secondary_capture", "SC_SERIES_NUMBER"]

SC_SERIES_NUMBER = 9901
# BodyPartExamined values (PS3.16 CID 4031) of paired structures, which General Series'
# Laterality is conditional on
_PAIRED_PARTS = frozenset({
    "ANKLE", "ARM", "BREAST", "CLAVICLE", "ELBOW", "EXTREMITY", "FEMUR", "FIBULA", "FINGER", "FOOT", "FOREARM",
    "HAND", "HEEL", "HIP", "HUMERUS", "KNEE", "LEG", "LOWER LIMB", "LOWERLIMB", "SCAPULA", "SHOULDER", "THUMB",
    "TIBIA", "TOE", "UPPER LIMB", "UPRLIMB", "WRIST",
})
_INTENSITY = 0.5  # the overlay's default intensity (app, CLI and report)
_WHITE, _YELLOW, _RED = (255, 255, 255), (255, 214, 0), (255, 70, 70)


def banner_lines(result: AnalysisResult, source: SourceImage) -> list[tuple[str, tuple[int, int, int]]]:
    """The banner's lines and their colours, top to bottom."""
    model = f"model {result.model_id} version {result.model_version}"
    if result.synthetic:
        model += f" - {SYNTHETIC_NOTE}"
    measured = result.kind == "measurement"
    if result.assessable and measured:
        ctr = study_ctr(result)
        said = (f"{result.condition_name}: {result.decision} (CTR {'not measured' if ctr is None else f'{ctr:.2f}'}, "
                f"{CTR_RULE_SHORT}; calibrated probability {result.probability:.2f})")
    elif result.assessable:
        said = (f"{result.condition_name}: {result.decision} (probability {result.probability:.2f}, "
                f"threshold {result.threshold:.2f})")
    else:
        said = f"{result.condition_name}: {result.decision}"
    view = source.view
    count = len(result.views)
    if not view.assessable:
        about = f"view {source.index + 1} of {count}: out of the model's scope, not counted"
    else:
        # a measurement's mark is its outlines, not a finding box: its figure says it all
        level = None if measured else result.finding_level(view)
        figure = view_ctr_text(view) if measured else f"probability {view.probability:.2f}"
        about = f"view {source.index + 1} of {count}: {figure}" + (f", {level}" if level else "")
    lines = [(BANNER, _YELLOW), (model, _WHITE), (said, _WHITE), (about, _WHITE)]
    if result.placeholder:
        lines.append((PLACEHOLDER_WATERMARK, _RED))
    return lines


def render_capture(result: AnalysisResult, source: SourceImage) -> np.ndarray:
    """The Secondary Capture's pixels: uint8 (H + banner) x W x 3, RGB; the image part is the
    overlay at the view's own resolution, unscaled."""
    view = source.view
    # no colour layer on a view out of scope: the capture has no caption to call it unreliable
    overlay = view_overlay(result, view, intensity=_INTENSITY, show_heatmap=view.assessable)
    return np.concatenate([_banner(banner_lines(result, source), overlay.shape[1]), overlay], axis=0)


def build_secondary_capture(result: AnalysisResult, source: SourceImage, series_uid: str, instance_number: int,
                            now: _dt.datetime) -> Dataset:
    """The Secondary Capture Image Storage object of one view (not yet written)."""
    pixels = render_capture(result, source)
    ds = Dataset()
    copy_patient_and_study(ds, source.header)
    add_common(ds, result, SecondaryCaptureImageStorage, series_uid, modality="OT",
               series_number=SC_SERIES_NUMBER, now=now,
               series_description=f"AI overlay {result.model_id} {result.model_version}")
    ds.ConversionType = "WSD"  # workstation: made by software from another image
    ds.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    ds.SecondaryCaptureDeviceManufacturerModelName = lo(result.model_id)
    ds.SecondaryCaptureDeviceSoftwareVersions = lo(result.model_version)
    ds.DateOfSecondaryCapture = now.strftime("%Y%m%d")
    ds.TimeOfSecondaryCapture = now.strftime("%H%M%S")
    ds.InstanceNumber = instance_number
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.DerivationDescription = lo(
        f"{result.heatmap_method} heatmap overlay and AI result banner by {result.model_id}; "
        f"{BANNER}", 1024)
    ds.ImageComments = lo(f"{BANNER}. Decision: {result.decision}.", 10240)
    orientation = source.header.get("PatientOrientation")
    ds.PatientOrientation = orientation if orientation else ""
    if source.header.get("BodyPartExamined"):  # General Series; ViewPosition is not in the SC IOD
        ds.BodyPartExamined = source.header.BodyPartExamined
        # Type 2C, for a paired part only (a chest has none): the source's value, or empty (unknown)
        if source.header.get("Laterality"):
            ds.Laterality = source.header.Laterality
        elif str(ds.BodyPartExamined).upper() in _PAIRED_PARTS:
            ds.Laterality = ""
    if source.referable:
        ref = Dataset()
        ref.ReferencedSOPClassUID = source.header.SOPClassUID
        ref.ReferencedSOPInstanceUID = source.header.SOPInstanceUID
        ds.SourceImageSequence = [ref]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    set_character_set(ds)
    ds.file_meta = _file_meta(ds)
    return ds


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _banner(lines: list[tuple[str, tuple[int, int, int]]], width: int) -> np.ndarray:
    """A black strip `width` px wide holding `lines`, each in its colour. The font is 1/36 of
    the width (9 to 64 px), made smaller until the longest line fits."""
    size = max(9, min(64, width // 36))
    font = _font(size)
    longest = max(lines, key=lambda line: _text_width(font, line[0]))[0]
    while size > 9 and _text_width(font, longest) > width - 2 * _margin(size):
        size -= 1
        font = _font(size)
    step = int(round(size * 1.35))
    margin = _margin(size)
    strip = Image.new("RGB", (width, step * len(lines) + 2 * margin), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for i, (text, colour) in enumerate(lines):
        draw.text((margin, margin + i * step), text, fill=colour, font=font)
    return np.asarray(strip, dtype=np.uint8)


def _margin(size: int) -> int:
    return max(2, size // 2)


def _text_width(font, text: str) -> float:
    return float(font.getlength(text))


@lru_cache(maxsize=64)
def _font(size: int):
    """DejaVu Sans Bold (the report's font), else Pillow's built-in font at that size."""
    from xray_ai.outputs.report_layout import report_fonts

    files = report_fonts()["files"]
    for path in files[1:2] + files[:1]:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)
