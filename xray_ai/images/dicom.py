"""DICOM -> gray float32 in [0, 1], bone bright, with the tags that matter (see xray_ai.images.load).

Grayscale pipeline in the order of DICOM PS3.3 C.11 (the grayscale transformation
pipeline of PS3.4 N.2.1): modality LUT (rescale slope/intercept or LUT sequence), then the
VOI LUT or window centre/width (else the image's own range), then MONOCHROME1 inversion
(after the VOI step, so a window keeps its meaning), then scaling to [0, 1]. Compressed
transfer syntaxes are decoded by pydicom's pixel backends with the MIT-licensed plugins the
project ships; see xray_ai.images.load's docstring for the licence decision on JPEG
Lossless. Called by `load_image`; pydicom is imported here only, on first DICOM (it is
slow to import and PNG/JPEG never need it).
"""

from __future__ import annotations

import io
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from xray_ai.images.common import LUMA, ImageLoadError, base_metadata, check_pixels, is_real_colour, min_max

__all__ = ["load_dicom", "looks_like_bare_dicom"]

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

# metadata['patient'] / metadata['study'] key -> DICOM keyword.
_PATIENT_FIELDS = {
    "name": "PatientName",
    "id": "PatientID",
    "birth_date": "PatientBirthDate",
    "sex": "PatientSex",
}
_STUDY_FIELDS = {
    "date": "StudyDate",
    "description": "StudyDescription",
    "accession_number": "AccessionNumber",
    "study_uid": "StudyInstanceUID",
    "institution": "InstitutionName",
}
_LIBJPEG = "pylibjpeg-libjpeg (GPL-3.0, not shipped with xray_ai) or python-gdcm"


def looks_like_bare_dicom(data: bytes, name: str) -> bool:
    """A DICOM stream without the 128-byte preamble: starts with a group 0002 or 0008 tag."""
    suffix = Path(name).suffix.lower() if not name.startswith("<") else ""
    if suffix and suffix not in _DICOM_SUFFIXES:
        return False
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00")


def load_dicom(
    data: bytes, name: str, notes: list[str], *, force: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode the first frame of a DICOM file; float64 H x W in [0, 1] and its metadata."""
    try:
        import pydicom
        from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
    except ImportError as exc:  # pragma: no cover - pydicom is a hard requirement
        raise ImageLoadError(name, "DICOM support needs pydicom: pip install pydicom") from exc

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except Exception as exc:  # untrusted input: pydicom raises many types on bad files
        raise ImageLoadError(name, f"unreadable DICOM file (truncated or corrupt): {exc}") from exc

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        hint = (
            "the file appears truncated (image attributes present, Pixel Data missing)"
            if "Rows" in ds
            else "not an image (e.g. a report or presentation state), or a truncated file"
        )
        raise ImageLoadError(name, f"DICOM file has no pixel data (7FE0,0010): {hint}")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageLoadError(name, f"DICOM image without valid Rows/Columns/Number of Frames: {exc}") from exc
    check_pixels(name, cols, rows, max(frames, 1))

    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None:  # no file meta (bare dataset): use the encoding it was read with
        implicit, little = ds.original_encoding
        tsyntax = pydicom.uid.ImplicitVRLittleEndian if implicit else (
            pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = tsyntax
    ts_label = f"'{tsyntax.name}' ({tsyntax})"
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise ImageLoadError(name, f"transfer syntax {ts_label} is not supported: no decoder exists") from exc
    hint = _install_hint(tsyntax)
    if not decoder.is_available:
        raise ImageLoadError(
            name,
            f"cannot decode pixel data in transfer syntax {ts_label}: no decoder installed; "
            f"install {hint or 'a pydicom pixel data plugin'}",
        )
    try:
        arr, decoded = decoder.as_array(ds, index=0)
    except Exception as exc:  # untrusted input: decoders raise many types on bad data
        reason = " ".join(line.strip() for line in str(exc).splitlines()) or type(exc).__name__
        if "less than expected" in str(exc):
            reason = f"truncated pixel data ({reason})"
        extra = ""
        if hint and decoder.missing_dependencies:  # e.g. Pillow present but cannot do 12-bit JPEG
            extra = f"; if the data is intact, {hint} may decode it"
        raise ImageLoadError(name, f"cannot decode {ts_label} pixel data: {reason}{extra}") from exc

    # After decoding: pydicom converts YBR_* to RGB and reports the new interpretation.
    photometric = str(decoded.get("photometric_interpretation") or ds.get("PhotometricInterpretation", ""))
    meta = _dicom_metadata(ds, rows, cols, frames, tsyntax)
    if frames > 1:
        notes.append(f"multi-frame DICOM ({frames} frames): only the first frame is used")

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)  # uint8 or uint16, by the LUT's entry size
        top = np.iinfo(rgb.dtype).max if rgb.dtype.kind in "ui" else 1.0
        gray, voi = (np.asarray(rgb, dtype=np.float64) @ LUMA) / top, "bit_depth"
        meta["colour"] = is_real_colour(rgb)
    elif arr.ndim == 3:  # RGB (pydicom has already converted YBR_* to RGB)
        top = 2 ** int(ds.get("BitsStored") or 8) - 1
        gray, voi = (np.asarray(arr, dtype=np.float64) @ LUMA) / top, "bit_depth"
        meta["colour"] = is_real_colour(arr)
    else:
        gray, voi = _grayscale_pipeline(arr, ds, apply_modality_lut, notes)
        if photometric == "MONOCHROME1":
            gray = 1.0 - gray  # after the VOI step (PS3.3 C.11.6)
    meta["voi_source"] = voi
    return gray, meta


def _install_hint(tsyntax: Any) -> str | None:
    """The package(s) that add a decoder for a compressed transfer syntax."""
    from pydicom import uid

    if tsyntax in uid.JPEGTransferSyntaxes:
        return _LIBJPEG
    if tsyntax in uid.JPEGLSTransferSyntaxes:
        return "pyjpegls"
    if tsyntax in uid.JPEG2000TransferSyntaxes:  # includes HTJ2K
        return "pylibjpeg-openjpeg"
    if tsyntax in uid.RLETransferSyntaxes:
        return "pylibjpeg-rle"
    return None


def _grayscale_pipeline(
    arr: np.ndarray, ds: Any, apply_modality_lut: Any, notes: list[str]
) -> tuple[np.ndarray, str]:
    """Modality LUT then VOI (LUT, window or min/max), scaled to [0, 1]. Returns (image, voi_source)."""
    from pydicom.pixels import apply_voi_lut

    # Keep integer output integer: pydicom indexes a VOI LUT with it.
    values = np.asarray(apply_modality_lut(arr, ds))
    voi_seq = ds.get("VOILUTSequence")
    has_window = all(ds.get(k) not in (None, "") for k in ("WindowCenter", "WindowWidth"))
    if voi_seq or has_window:
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                out = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
                lo, hi = _voi_output_range(ds, apply_voi_lut)
            if hi > lo:
                return (out - lo) / (hi - lo), "voi_lut" if voi_seq else "window"
            notes.append("VOI LUT/window has an empty output range; used the image's minimum and maximum")
        except Exception as exc:  # malformed VOI attributes: fall back rather than refuse the image
            notes.append(f"VOI LUT/window could not be applied ({exc}); used the image's minimum and maximum")
    return min_max(values.astype(np.float64), notes), "min_max"


def _voi_output_range(ds: Any, apply_voi_lut: Any) -> tuple[float, float]:
    """The output range of the VOI step (PS3.3 C.11.2.1), found by probing it.

    A window maps everything far below/above it to its output minimum/maximum; a VOI LUT's
    range is the range of its entries, reached by feeding it every input it covers.
    """
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        entries = int(voi_seq[0].LUTDescriptor[0]) or 65536  # 0 means 2**16 (C.11.2.1.1)
        first = int(voi_seq[0].LUTDescriptor[1])
        probe = np.arange(first - 1, first + entries + 1)
    else:
        probe = np.array([-1e12, 1e12])
    out = np.asarray(apply_voi_lut(probe, ds), dtype=np.float64)
    return float(np.nanmin(out)), float(np.nanmax(out))


def _dicom_metadata(ds: Any, rows: int, cols: int, frames: int, tsyntax: Any) -> dict[str, Any]:
    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return (str(value).strip() or None) if value is not None else None

    def first(keyword: str) -> float | None:
        value = ds.get(keyword)  # DS or multi-valued DS: the first pair is the default
        if not isinstance(value, str) and isinstance(value, Sequence):
            value = value[0] if len(value) else None
        try:
            return None if value is None or value == "" else float(value)
        except (TypeError, ValueError):
            return None

    center, width = first("WindowCenter"), first("WindowWidth")
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        spacing = (float(spacing[0]), float(spacing[1])) if spacing else None
        spacing = spacing if spacing and min(spacing) > 0 else None
    except (TypeError, ValueError, IndexError):
        spacing = None
    meta = base_metadata("dicom", (rows, cols), int(ds.BitsStored) if "BitsStored" in ds else None)
    meta.update(
        photometric_interpretation=text("PhotometricInterpretation"),
        modality=text("Modality"),
        body_part=text("BodyPartExamined"),
        view_position=text("ViewPosition"),
        window=(center, width) if center is not None and width is not None else None,
        modality_lut="lut" if ds.get("ModalityLUTSequence") else (
            "rescale" if "RescaleSlope" in ds and "RescaleIntercept" in ds else None),
        frames=frames,
        transfer_syntax=tsyntax.name,
        pixel_spacing=spacing,
        patient=_fields(ds, _PATIENT_FIELDS),
        study=_fields(ds, _STUDY_FIELDS),
    )
    return meta


def _fields(ds: Any, keywords: dict[str, str]) -> dict[str, str]:
    """All keys as strings ('' when absent), or {} when none of them is present."""
    values = {key: str(ds.get(kw) or "").strip() for key, kw in keywords.items()}
    return values if any(values.values()) else {}
