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

This module reads the source and dispatches on the content; the readers are
`xray_ai.images.raster` (Pillow formats) and `xray_ai.images.dicom`, and what they
share (XRay, the errors, the limits, the metadata schema) is `xray_ai.images.common`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from xray_ai.images import common
from xray_ai.images.common import ImageLoadError, ImageLoadWarning, XRay
from xray_ai.images.dicom import load_dicom, looks_like_bare_dicom
from xray_ai.images.raster import PIL_FORMATS, load_raster

__all__ = ["load_image"]


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
    try:
        pixels, meta = _decode(data, name, notes)
    except ImageLoadError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except MemoryError as exc:
        raise ImageLoadError(name, "not enough memory to decode this file") from exc
    except BaseException as exc:  # noqa: BLE001 - the last line of defence: bytes are untrusted
        detail = " ".join(str(exc).split())[:300] or "no detail"
        raise ImageLoadError(name, f"unreadable or damaged file ({type(exc).__name__}: {detail})") from None
    pixels = np.asarray(pixels)
    if not pixels.flags.writeable or pixels.dtype.kind != "f":
        pixels = np.array(pixels, dtype=np.float64)
    if not np.all(np.isfinite(pixels)):
        notes.append("non-finite pixel values (NaN/inf) were set to 0")
        np.nan_to_num(pixels, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(pixels, 0.0, 1.0, out=pixels)  # in place: the readers' arrays are their own
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ImageLoadError(name, f"decoded to an array of shape {pixels.shape}, not a 2-D image")
    meta["warnings"] = notes
    for note in notes:
        warnings.warn(f"{name}: {note}", ImageLoadWarning, stacklevel=2)
    return XRay(pixels=pixels, metadata=meta, filename=name)


def _decode(data: bytes, name: str, notes: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Dispatch on the content: DICOM (with or without preamble) or a Pillow format."""
    if data[128:132] == b"DICM":
        pixels, meta = load_dicom(data, name, notes, force=False)
    else:
        loaded = load_raster(data, name, notes)
        if loaded is not None:
            pixels, meta = loaded
        elif looks_like_bare_dicom(data, name):
            pixels, meta = load_dicom(data, name, notes, force=True)
        else:
            raise ImageLoadError(
                name,
                f"not a supported image ({len(data):,} bytes): no DICOM 'DICM' marker at byte 128 "
                f"and not a {', '.join(PIL_FORMATS)} file",
            )
    return pixels, meta


# --------------------------------------------------------------------------- input


def _read_source(source: Any, filename: str | None) -> tuple[bytes, str]:
    """Return (bytes, display name); never reads more than MAX_FILE_BYTES + 1 bytes."""
    limit = common.MAX_FILE_BYTES  # read at call time: the one place to change it
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
