"""What the image readers share: the XRay form, the errors, the input limits and helpers.

`XRay` is the one internal image form (float32 H x W in [0, 1], bone bright);
`ImageLoadError` and `ImageLoadWarning` are what loading raises and warns. The limits
`MAX_FILE_BYTES` and `MAX_PIXELS` live here only and are read at call time, so a
deployment changes them in one place (``xray_ai.images.common.MAX_PIXELS = ...``).
The helpers are used by both readers, `xray_ai.images.raster` (Pillow formats) and
`xray_ai.images.dicom`: `base_metadata` (every metadata key, see
`xray_ai.images.load`), `check_pixels` (the pixel limit, from the header),
`check_decoded_bytes` (the memory limit of one decoded frame, `MAX_DECODED_BYTES`),
`guarded` (a native decoder's call: whatever it raises, a Rust panic included,
becomes an ImageLoadError naming the decoder), `min_max` (scale by the image's own
range) and `LUMA` (RGB -> gray weights). Raster images above `MAX_FULL_PIXELS` are
decoded reduced (`xray_ai.images.raster`).
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
    "check_decoded_bytes",
    "guarded",
    "min_max",
    "MAX_DECODED_BYTES",
    "MAX_FULL_PIXELS",
]

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 8192 * 8192
# What one decoded frame may occupy as the decoder returns it (8192 x 8192 RGBA at 8 bits
# is 256 MiB; 8192 x 8192 x 3 samples at 16 bits 384 MiB).
MAX_DECODED_BYTES = 512 * 1024 * 1024
# A raster image above this many pixels is decoded reduced by a power of two until it fits
# (JPEG by the decoder itself, `Image.draft`; other formats right after decoding,
# `Image.reduce`), and a warning says so; DICOM is always decoded whole.
MAX_FULL_PIXELS = 4096 * 4096
# A compressed DICOM frame (JPEG 2000, JPEG-LS) above LARGE_FRAME_PIXELS whose stream is
# smaller than 1/MAX_COMPRESSION_RATIO of its decoded size is refused as truncated: such a
# codec reaches that only on an empty image, while its decoder would spend seconds filling
# the missing data in (a 3 KB JPEG 2000 stream claiming 8000 x 8000 took 6 s and 1.6 GB).
LARGE_FRAME_PIXELS = 2048 * 2048
MAX_COMPRESSION_RATIO = 1000

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

    @property
    def name(self) -> str | None:
        """The file's name without its folders, for messages and reports (folders often hold
        patient names); None when the image came without one."""
        return self.filename.replace("\\", "/").rsplit("/", 1)[-1] or None if self.filename else None


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


def check_decoded_bytes(name: str, nbytes: int, what: str = "the decoded image") -> None:
    """Refuse, before decoding, an image whose decoded size would exceed `MAX_DECODED_BYTES`."""
    if nbytes > MAX_DECODED_BYTES:
        raise ImageLoadError(
            name,
            f"{what} would take {nbytes / 2**20:,.0f} MiB once decoded, above the limit of "
            f"{MAX_DECODED_BYTES / 2**20:,.0f} MiB (MAX_DECODED_BYTES); refused without decoding",
        )


def guarded(name: str, decoder: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """`call(*args, **kwargs)` for untrusted data: whatever it raises becomes an ImageLoadError
    naming the file and `decoder`.

    That includes what is not an `Exception`: pyo3's PanicException (a Rust decoder's panic,
    e.g. pylibjpeg-rle's) derives from BaseException and would escape every `except
    Exception`, and a MemoryError. KeyboardInterrupt, SystemExit and GeneratorExit pass.
    """
    try:
        return call(*args, **kwargs)
    except ImageLoadError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except MemoryError as exc:
        raise ImageLoadError(name, f"{decoder} ran out of memory decoding this file") from exc
    except BaseException as exc:  # noqa: BLE001 - untrusted input; see the docstring
        detail = " ".join(str(exc).split())[:300] or "no detail"
        panic = type(exc).__name__ == "PanicException"
        what = "crashed (a panic in its native code)" if panic else f"failed ({type(exc).__name__})"
        raise ImageLoadError(name, f"{decoder} {what}: {detail}") from None


def min_max(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """Scale by the finite minimum and maximum to [0, 1]; a single-valued image becomes 0."""
    finite = np.isfinite(values)  # a mask, not a copy of the values: large images stay small
    if finite.any():
        lo = float(np.min(values, where=finite, initial=np.inf))
        hi = float(np.max(values, where=finite, initial=-np.inf))
    else:
        lo = hi = 0.0
    del finite
    if hi <= lo:
        notes.append("image has a single value; it is shown as black")
        return np.zeros(values.shape, dtype=np.float64)
    out = np.subtract(values, lo, dtype=np.float64)
    out /= hi - lo
    return out
