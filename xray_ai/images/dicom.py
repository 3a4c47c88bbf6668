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

from xray_ai.images.common import (
    LUMA,
    ImageLoadError,
    base_metadata,
    check_decoded_bytes,
    check_pixels,
    guarded,
    is_real_colour,
    min_max,
)
from xray_ai.images.dicom_checks import (
    attribute,
    budgeted,
    check_codestream,
    checked_array,
    decode_with_budget,
    image_attributes,
    transfer_syntax,
)

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
    """Decode the first frame of a DICOM file; float64 H x W in [0, 1] and its metadata.

    Untrusted input: every attribute the pipeline reads is validated (`_image_attributes`),
    the compressed stream's own header is checked against them before a native decoder
    sees it (`dicom_checks.check_codestream`), every decoder call is guarded (`common.guarded`: a Rust
    panic or a MemoryError becomes an ImageLoadError naming the decoder), and the decoded
    array must have the shape the header promised.
    """
    try:
        import pydicom
        from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
    except ImportError as exc:  # pragma: no cover - pydicom is a hard requirement
        raise ImageLoadError(name, "DICOM support needs pydicom: pip install pydicom") from exc

    try:
        ds = guarded(name, "pydicom's file reader", pydicom.dcmread, io.BytesIO(data), force=force)
    except ImageLoadError as exc:
        raise ImageLoadError(name, f"unreadable DICOM file (truncated or corrupt): {exc.reason}") from exc

    has_pixels = attribute(ds, name, lambda: any(
        k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")), "Pixel Data")
    if not has_pixels:
        hint = (
            "the file appears truncated (image attributes present, Pixel Data missing)"
            if "Rows" in ds
            else "not an image (e.g. a report or presentation state), or a truncated file"
        )
        raise ImageLoadError(name, f"DICOM file has no pixel data (7FE0,0010): {hint}")
    attrs = image_attributes(ds, name)
    rows, cols, frames = attrs["rows"], attrs["cols"], attrs["frames"]
    check_pixels(name, cols, rows, max(frames, 1))
    check_decoded_bytes(name, rows * cols * attrs["samples"] * max(attrs["bits_allocated"] // 8, 1),
                        "one frame")

    tsyntax = transfer_syntax(ds, name)
    ts_label = f"'{tsyntax.name}' ({tsyntax})"
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise ImageLoadError(name, f"transfer syntax {ts_label} is not supported: no decoder exists") from exc
    except Exception as exc:  # a malformed UID string
        raise ImageLoadError(name, f"invalid transfer syntax UID {str(tsyntax)[:64]!r}") from exc
    hint = _install_hint(tsyntax)
    if not decoder.is_available:
        raise ImageLoadError(
            name,
            f"cannot decode pixel data in transfer syntax {ts_label}: no decoder installed; "
            f"install {hint or 'a pydicom pixel data plugin'}",
        )
    if tsyntax.is_encapsulated:
        check_codestream(ds, name, tsyntax, attrs)
    try:
        if budgeted(tsyntax):  # decoders that can run for seconds on a damaged stream
            arr, decoded = decode_with_budget(data, name, force, tsyntax, rows * cols * attrs["samples"])
        else:
            arr, decoded = guarded(name, f"the {tsyntax.name} decoder", decoder.as_array, ds, index=0)
    except ImageLoadError as exc:
        reason = exc.reason
        if "less than expected" in reason:
            reason = f"truncated pixel data ({reason})"
        extra = ""
        if hint and decoder.missing_dependencies and "stopped after" not in reason:  # e.g. Pillow present but
            # unable to do 12-bit JPEG
            extra = f"; if the data is intact, {hint} may decode it"
        raise ImageLoadError(name, f"cannot decode {ts_label} pixel data: {reason}{extra}") from exc
    arr = checked_array(arr, name, attrs)

    # After decoding: pydicom converts YBR_* to RGB and reports the new interpretation.
    photometric = str(decoded.get("photometric_interpretation") or attrs["photometric"])
    meta = _dicom_metadata(ds, rows, cols, frames, tsyntax, notes)
    if frames > 1:
        notes.append(f"multi-frame DICOM ({frames} frames): only the first frame is used")

    if photometric == "PALETTE COLOR":
        try:
            rgb = guarded(name, "the palette lookup", apply_color_lut, arr, ds)  # uint8 or uint16
        except ImageLoadError as exc:
            raise ImageLoadError(name, f"PALETTE COLOR image without a valid palette: {exc.reason}") from exc
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[:2] != arr.shape[:2] or rgb.dtype.kind not in "uif":
            raise ImageLoadError(name, f"PALETTE COLOR lookup gave an array of shape {rgb.shape}, not H x W x 3")
        top = np.iinfo(rgb.dtype).max if rgb.dtype.kind in "ui" else 1.0
        gray, voi = (np.asarray(rgb, dtype=np.float64) @ LUMA) / top, "bit_depth"
        meta["colour"] = is_real_colour(rgb)
    elif arr.ndim == 3:  # RGB (pydicom has already converted YBR_* to RGB)
        top = 2 ** attrs["bits_stored"] - 1
        gray, voi = (np.asarray(arr, dtype=np.float64) @ LUMA) / top, "bit_depth"
        meta["colour"] = is_real_colour(arr)
    else:
        gray, voi = _grayscale_pipeline(arr, ds, apply_modality_lut, notes, name)
        if photometric == "MONOCHROME1":
            np.subtract(1.0, gray, out=gray)  # after the VOI step (PS3.3 C.11.6)
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
    arr: np.ndarray, ds: Any, apply_modality_lut: Any, notes: list[str], name: str = "<bytes>"
) -> tuple[np.ndarray, str]:
    """Modality LUT then VOI (LUT, window or min/max), scaled to [0, 1]. Returns (image, voi_source).

    A modality LUT that cannot be applied (a LUT sequence without LUT Data, a rescale slope
    that is not a number) refuses the file: the values would mean something else. A VOI
    step that cannot be applied falls back to the image's own range, with a warning.
    """
    from pydicom.pixels import apply_voi_lut

    # Keep integer output integer: pydicom indexes a VOI LUT with it.
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.asarray(guarded(name, "the modality LUT", apply_modality_lut, arr, ds))
    except ImageLoadError as exc:
        raise ImageLoadError(name, f"invalid modality LUT or rescale slope/intercept: {exc.reason}") from exc
    if values.shape != arr.shape or values.dtype.kind not in "uifb":
        raise ImageLoadError(name, f"the modality LUT gave an array of shape {values.shape}, not {arr.shape}")
    try:
        voi_seq = ds.get("VOILUTSequence")
        has_window = all(ds.get(k) not in (None, "") for k in ("WindowCenter", "WindowWidth"))
    except Exception as exc:  # a malformed VOI attribute: read lazily, so it raises here
        notes.append(f"VOI LUT/window attributes are unreadable ({_short(exc)}); used the image's minimum and maximum")
        voi_seq, has_window = None, False
    if voi_seq or has_window:
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                out = np.array(guarded(name, "the VOI LUT", apply_voi_lut, values, ds), dtype=np.float64)
                lo, hi = _voi_output_range(ds, apply_voi_lut)
            if out.shape != values.shape:
                raise ValueError(f"the VOI step gave shape {out.shape}")
            if hi > lo and np.isfinite(lo) and np.isfinite(hi):
                out -= lo  # in place: the same arithmetic as (out - lo) / (hi - lo), one array
                out /= hi - lo
                return out, "voi_lut" if voi_seq else "window"
            notes.append("VOI LUT/window has an empty output range; used the image's minimum and maximum")
        except (ImageLoadError, Exception) as exc:  # malformed VOI attributes: fall back rather than refuse
            reason = exc.reason if isinstance(exc, ImageLoadError) else _short(exc)
            notes.append(f"VOI LUT/window could not be applied ({reason}); used the image's minimum and maximum")
    return min_max(values.astype(np.float64), notes), "min_max"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return text or type(exc).__name__


def _voi_output_range(ds: Any, apply_voi_lut: Any) -> tuple[float, float]:
    """The output range of the VOI step (PS3.3 C.11.2.1), found by probing it.

    A window maps everything far below/above it to its output minimum/maximum; a VOI LUT's
    range is the range of its entries, reached by feeding it every input it covers.
    """
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        entries = int(voi_seq[0].LUTDescriptor[0]) or 65536  # 0 means 2**16 (C.11.2.1.1)
        first = int(voi_seq[0].LUTDescriptor[1])
        if not 0 < entries <= 65536 or not -65536 <= first <= 65535:
            raise ValueError(f"VOI LUT Descriptor {entries}, {first} is out of range")
        probe = np.arange(first - 1, first + entries + 1)
    else:
        probe = np.array([-1e12, 1e12])
    out = np.asarray(apply_voi_lut(probe, ds), dtype=np.float64)
    return float(np.nanmin(out)), float(np.nanmax(out))


def _dicom_metadata(ds: Any, rows: int, cols: int, frames: int, tsyntax: Any,
                   notes: list[str] | None = None) -> dict[str, Any]:
    """The tags that matter; a tag whose value cannot be read is left out (None), with a note."""
    unreadable: list[str] = []

    def get(keyword: str) -> Any:
        try:
            return ds.get(keyword)
        except Exception:  # pydicom converts lazily: a damaged value raises on first access
            unreadable.append(keyword)
            return None

    def has(keyword: str) -> bool:
        try:
            return keyword in ds
        except Exception:
            return False

    def text(keyword: str) -> str | None:
        value = get(keyword)
        try:
            return (str(value).strip() or None) if value is not None else None
        except Exception:
            unreadable.append(keyword)
            return None

    def first(keyword: str) -> float | None:
        value = get(keyword)  # DS or multi-valued DS: the first pair is the default
        try:
            if not isinstance(value, str) and isinstance(value, Sequence):
                value = value[0] if len(value) else None
            number = None if value is None or value == "" else float(value)
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        return number if number is None or np.isfinite(number) else None

    center, width = first("WindowCenter"), first("WindowWidth")
    spacing = get("PixelSpacing") or get("ImagerPixelSpacing")
    try:
        spacing = (float(spacing[0]), float(spacing[1])) if spacing else None
        spacing = spacing if spacing and min(spacing) > 0 and all(np.isfinite(spacing)) else None
    except (TypeError, ValueError, IndexError, OverflowError):
        spacing = None
    bits = get("BitsStored") if has("BitsStored") else None
    try:
        bits = int(bits) if bits is not None else None
    except (TypeError, ValueError):
        bits = None
    meta = base_metadata("dicom", (rows, cols), bits)
    meta.update(
        photometric_interpretation=text("PhotometricInterpretation"),
        modality=text("Modality"),
        body_part=text("BodyPartExamined"),
        view_position=text("ViewPosition"),
        window=(center, width) if center is not None and width is not None else None,
        modality_lut="lut" if get("ModalityLUTSequence") else (
            "rescale" if has("RescaleSlope") and has("RescaleIntercept") else None),
        frames=frames,
        transfer_syntax=tsyntax.name,
        pixel_spacing=spacing,
        patient=_fields(ds, _PATIENT_FIELDS, unreadable),
        study=_fields(ds, _STUDY_FIELDS, unreadable),
    )
    if unreadable and notes is not None:
        notes.append(f"unreadable DICOM attribute(s) ignored: {', '.join(sorted(set(unreadable)))}")
    return meta


def _fields(ds: Any, keywords: dict[str, str], unreadable: list[str] | None = None) -> dict[str, str]:
    """All keys as strings ('' when absent or unreadable), or {} when none of them is present."""
    values = {}
    for key, kw in keywords.items():
        try:
            values[key] = str(ds.get(kw) or "").strip()
        except Exception:  # e.g. a name in an unknown character set
            values[key] = ""
            if unreadable is not None:
                unreadable.append(kw)
    return values if any(values.values()) else {}
