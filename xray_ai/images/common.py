"""What the image readers share: the XRay form, the errors, the input limits and helpers.

`XRay` is the one internal image form (float32 H x W in [0, 1], bone bright);
`ImageLoadError` and `ImageLoadWarning` are what loading raises and warns. The limits
`MAX_FILE_BYTES` and `MAX_PIXELS` live here only and are read at call time, so a
deployment changes them in one place (``xray_ai.images.common.MAX_PIXELS = ...``).
The helpers are used by both readers, `xray_ai.images.raster` (Pillow formats) and
`xray_ai.images.dicom`: `base_metadata` (every metadata key, see
`xray_ai.images.load`), `check_pixels` (the pixel limit, from the header),
`min_max` (scale by the image's own range) and `LUMA` (RGB -> gray weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "XRay",
    "ImageLoadError",
    "ImageLoadWarning",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "LUMA",
    "is_real_colour",
    "base_metadata",
    "check_pixels",
    "min_max",
]

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 8192 * 8192

# ITU-R BT.601 luma, the weights Pillow uses for RGB -> L.
LUMA = np.array([0.299, 0.587, 0.114])


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


def base_metadata(fmt: str, size: tuple[int, int], bits: int | None) -> dict[str, Any]:
    """Every metadata key, with the format, original size and bit depth filled in."""
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
        "colour": False,
        "exif_orientation": None,
        "warnings": [],
        "patient": {},
        "study": {},
    }


# A pixel is coloured when its channels spread by more than this (of full scale); an image is
# a real colour image when more than COLOUR_SHARE of its pixels are. Gray stored as RGB (and
# its JPEG chroma noise, a few levels) stays well below; a photograph or a colour-Doppler
# frame is far above; a small coloured marker burned into a radiograph is not enough.
COLOUR_SPREAD = 0.1
COLOUR_SHARE = 0.01


def is_real_colour(rgb: np.ndarray) -> bool:
    """Whether an H x W x 3 image (any scale; float or integer) holds real colour, not gray
    stored in three channels."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3 or rgb.size == 0:
        return False
    top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else max(float(np.nanmax(rgb)), 1.0)
    channels = rgb[..., :3].astype(np.float32)
    spread = (channels.max(axis=-1) - channels.min(axis=-1)) / top
    return bool(np.mean(spread > COLOUR_SPREAD) > COLOUR_SHARE)


def check_pixels(name: str, width: int, height: int, frames: int = 1) -> None:
    """Refuse, before decoding, a header size that is invalid or above `MAX_PIXELS`."""
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


def min_max(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """Scale by the finite minimum and maximum to [0, 1]; a single-valued image becomes 0."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi <= lo:
        notes.append("image has a single value; it is shown as black")
        return np.zeros(values.shape, dtype=np.float64)
    return (values - lo) / (hi - lo)
