"""Bytes or a path -> XRay: the one internal image form (float32 H x W in [0, 1], bone bright).

`load_image` accepts DICOM, PNG and JPEG (and the other raster formats in
`PIL_FORMATS`), detects the format from the content rather than the file name, and
refuses bad input with an `ImageLoadError` that names the file and the reason.

Limits, checked before anything is decoded:
    * files above `MAX_FILE_BYTES` bytes are refused before they are read whole;
    * images above `MAX_PIXELS` pixels are refused from their header (PNG IHDR, JPEG SOF,
      Pillow's header parse, DICOM Rows x Columns x Number of Frames), so a decompression
      bomb is never decoded. Pillow's own `Image.MAX_IMAGE_PIXELS` is left untouched (it
      is process-wide state shared by Streamlit's threads); our limit is lower than its
      default and is checked first, and Pillow's `DecompressionBombError` is converted
      into an `ImageLoadError` should a deployment raise `MAX_PIXELS` above it.

DICOM grayscale pipeline, in the order of DICOM PS3.3 C.11 ("Look Up Tables and
Presentation States"; the grayscale transformation pipeline of PS3.4 N.2.1):
    1. Modality LUT (C.11.1): Modality LUT Sequence, or Rescale Slope/Intercept
       (`pydicom.pixels.apply_modality_lut`).
    2. VOI LUT (C.11.2): the VOI LUT Sequence if present, else the first Window
       Center/Width pair with its VOI LUT Function (`pydicom.pixels.apply_voi_lut`);
       if neither is present, the image's own minimum and maximum.
    3. MONOCHROME1 inversion (the Presentation LUT of C.11.6 is INVERSE for
       MONOCHROME1), applied after the VOI step so that a window keeps its meaning.
    4. Scaling of the VOI output range to [0, 1], float32.
Colour DICOM (RGB, YBR_* which pydicom converts to RGB, PALETTE COLOR) becomes gray by
ITU-R BT.601 luma. Multi-frame files: only the first frame is decoded, and a warning
says so.

Compressed transfer syntaxes are decoded by pydicom's pixel backends. The project ships
only permissively licensed decoders: pylibjpeg with pylibjpeg-openjpeg (JPEG 2000,
HTJ2K; MIT), pylibjpeg-rle (RLE; MIT), pyjpegls (JPEG-LS; MIT), and Pillow (baseline
8-bit JPEG, JPEG 2000). JPEG Lossless (Process 14) and 12-bit JPEG Extended need
`pylibjpeg-libjpeg`, which is GPL-3.0; we deliberately do not ship it so that xray_ai
stays free of copyleft obligations. A site that accepts the GPL can `pip install
pylibjpeg-libjpeg` (or `python-gdcm`, BSD) and those files then load with no code change;
without it, such a file is refused with an error that names the transfer syntax and
the package to install.

PNG/JPEG: EXIF orientation is applied; 1-, 8- and 16-bit gray, RGB, RGBA, LA, palette
and CMYK become gray (alpha is composited over black) and are scaled by their true bit
depth (a 16-bit PNG by 65535).

Metadata keys (all present for every format; None or empty where not applicable):
    format, original_size, bits, photometric_interpretation, modality, body_part,
    view_position, window, voi_source, modality_lut, frames, transfer_syntax,
    pixel_spacing, mode, exif_orientation, warnings, patient, study.
Patient identifiers live only in `metadata['patient']`.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "XRay",
    "ImageLoadError",
    "ImageLoadWarning",
    "load_image",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "PIL_FORMATS",
]

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 8192 * 8192

# Pillow formats we accept: plain raster formats only. Restricting Image.open keeps
# Pillow away from plugins that shell out (EPS runs Ghostscript) or that we never test.
PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# ITU-R BT.601 luma, the weights Pillow uses for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114])




class ImageLoadError(ValueError):
    """An image could not be loaded; the message names the file and the reason."""

    def __init__(self, filename: str | None, reason: str):
        self.filename = filename or "<bytes>"
        self.reason = reason
        super().__init__(f"{self.filename}: {reason}")


class ImageLoadWarning(UserWarning):
    """A recoverable oddity in an image (also listed in `metadata['warnings']`)."""


@dataclass(frozen=True)
class XRay:
    """A radiograph in the internal form.

    Attributes:
        pixels: float32 array H x W in [0, 1]; display-ready (bone bright).
        metadata: source format, original size, DICOM tags that matter, warnings.
        filename: the name the image came with, for messages and reports.
    """

    pixels: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    filename: str | None = None

    @property
    def warnings(self) -> list[str]:
        return list(self.metadata.get("warnings", []))


def load_image(source: bytes | str | Path | BinaryIO, filename: str | None = None) -> XRay:
    """Load a DICOM, PNG or JPEG radiograph into the internal form.

    Args:
        source: the file's bytes, a path (str or Path), or a binary file object such as
            Streamlit's UploadedFile.
        filename: the name to report; defaults to the path, or the file object's `name`.

    Returns:
        XRay whose `pixels` is a C-contiguous float32 array of shape (H, W) with values in
        [0, 1] and no NaN, bone bright; `metadata` as listed in the module docstring;
        `filename` the reported name.

    Raises:
        ImageLoadError: empty, truncated, oversized or unreadable file, not an image,
            DICOM without pixel data, too many pixels, or no decoder for the transfer
            syntax. The message is "NAME: reason".
        TypeError: `source` is none of the accepted types.
    """
    data, name = _read_source(source, filename)
    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    notes: list[str] = []
    if data[128:132] == b"DICM":
        pixels, meta = _dicom().load_dicom(data, name, notes, force=False)
    else:
        loaded = _load_pil(data, name, notes)
        if loaded is not None:
            pixels, meta = loaded
        elif _dicom().looks_like_bare_dicom(data, name):
            pixels, meta = _dicom().load_dicom(data, name, notes, force=True)
        else:
            raise ImageLoadError(
                name,
                f"not a supported image ({len(data):,} bytes): no DICOM 'DICM' marker at byte 128 "
                f"and not a {', '.join(PIL_FORMATS)} file",
            )
    if not np.all(np.isfinite(pixels)):
        notes.append("non-finite pixel values (NaN/inf) were set to 0")
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)
    pixels = np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32)
    meta["warnings"] = notes
    for note in notes:
        warnings.warn(f"{name}: {note}", ImageLoadWarning, stacklevel=2)
    return XRay(pixels=pixels, metadata=meta, filename=name)


def _dicom():
    """The DICOM reader (xray_ai.dicom), imported on first use so PNG/JPEG never load pydicom."""
    from xray_ai.images import dicom

    return dicom


# --------------------------------------------------------------------------- input


def _read_source(source: Any, filename: str | None) -> tuple[bytes, str]:
    """Return (bytes, display name); never reads more than MAX_FILE_BYTES + 1 bytes."""
    limit = MAX_FILE_BYTES
    too_big = f"file is larger than the limit of {limit:,} bytes (MAX_FILE_BYTES)"
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = filename or "<bytes>"
        if len(source) > limit:
            raise ImageLoadError(name, f"{too_big}: {len(source):,} bytes")
        return bytes(source), name
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = filename or str(source)
        try:
            if path.is_dir():
                raise ImageLoadError(name, "is a directory, not an image file")
            size = path.stat().st_size
            if size > limit:
                raise ImageLoadError(name, f"{too_big}: {size:,} bytes")
            with path.open("rb") as fh:
                data = fh.read(limit + 1)  # bounded even for special files
        except FileNotFoundError as exc:
            raise ImageLoadError(name, "file not found") from exc
        except OSError as exc:
            raise ImageLoadError(name, f"cannot read file: {exc.strerror or exc}") from exc
    elif hasattr(source, "read"):
        name = filename or str(getattr(source, "name", "") or "<stream>")
        data = source.read(limit + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"{name}: file object must be opened in binary mode")
    else:
        kind = type(source).__name__
        raise TypeError(f"load_image expects bytes, a path or a binary file object, not {kind}")
    if len(data) > limit:
        raise ImageLoadError(name, too_big)
    return bytes(data), name


def _base_metadata(fmt: str, size: tuple[int, int], bits: int | None) -> dict[str, Any]:
    return {
        "format": fmt,
        "original_size": size,
        "bits": bits,
        "photometric_interpretation": None,
        "modality": None,
        "body_part": None,
        "view_position": None,
        "window": None,
        "voi_source": None,
        "modality_lut": None,
        "frames": 1,
        "transfer_syntax": None,
        "pixel_spacing": None,
        "mode": None,
        "exif_orientation": None,
        "warnings": [],
        "patient": {},
        "study": {},
    }


def _check_pixels(name: str, width: int, height: int, frames: int = 1) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, f"invalid image size {width} x {height} in the header")
    total = width * height * frames
    if total > MAX_PIXELS:
        what = f"{width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
        raise ImageLoadError(
            name,
            f"image is {what} = {total:,} pixels, above the limit of {MAX_PIXELS:,} (MAX_PIXELS); "
            "refused without decoding",
        )


# --------------------------------------------------------------------------- PNG / JPEG


def _sniff_size(data: bytes, name: str) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or JPEG SOF header, without Pillow; None if unknown."""
    if data.startswith(_PNG_MAGIC):
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise ImageLoadError(name, "truncated or corrupt PNG: no IHDR header")
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 <= len(data) and data[i] == 0xFF:
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
                i += 2
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def _load_pil(data: bytes, name: str, notes: list[str]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Decode with Pillow; None when Pillow does not recognise the content."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    size = _sniff_size(data, name)
    if size is not None:
        _check_pixels(name, *size)  # our own check, before Pillow parses anything
    try:
        im = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"refused without decoding: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageLoadError(name, f"corrupt image header: {exc}") from exc
    with im:
        fmt = (im.format or "image").lower()
        _check_pixels(name, *im.size)
        frames = int(getattr(im, "n_frames", 1) or 1)
        png_bits = data[24] if fmt == "png" else None
        try:
            im.load()
            orientation = im.getexif().get(0x0112)
            upright = ImageOps.exif_transpose(im)
            gray, bits = _pil_to_gray(upright, png_bits, notes)
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise ImageLoadError(name, f"truncated or corrupt {fmt.upper()} image: {exc}") from exc
        meta = _base_metadata(fmt, (gray.shape[0], gray.shape[1]), bits)
        meta.update(mode=im.mode, frames=frames, voi_source="bit_depth",
                    exif_orientation=int(orientation) if orientation else None)
    if frames > 1:
        notes.append(f"{fmt.upper()} has {frames} frames; only the first is used")
    return gray, meta


def _pil_to_gray(im: Any, png_bits: int | None, notes: list[str]) -> tuple[np.ndarray, int]:
    """Pillow image -> (float64 H x W in [0, 1], bit depth used for scaling)."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float64) / 65535.0, 16
    if mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        if png_bits == 16 or (arr.size and arr.min() >= 0 and arr.max() <= 65535):
            return arr / 65535.0, 16
        notes.append("32-bit integer image scaled by its own minimum and maximum")
        return _min_max(arr, notes), 32
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            return arr, 32
        notes.append("floating-point image scaled by its own minimum and maximum")
        return _min_max(arr, notes), 32
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float64) / 255.0, 1
    if mode == "L":
        return np.asarray(im, dtype=np.float64) / 255.0, png_bits or 8
    if png_bits == 16:
        notes.append("16-bit colour PNG: Pillow decodes it with 8 bits per channel")
    if mode in ("LA", "La", "PA", "P", "RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
        # Transparent areas become black (no signal), not white.
        return (rgba[..., :3] @ _LUMA) * rgba[..., 3], 8
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    return rgb @ _LUMA, 8


def _min_max(values: np.ndarray, notes: list[str]) -> np.ndarray:
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi <= lo:
        notes.append("image has a single value; it is shown as black")
        return np.zeros(values.shape, dtype=np.float64)
    return (values - lo) / (hi - lo)
