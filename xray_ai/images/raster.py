"""Raster images (PNG, JPEG, TIFF, BMP, GIF, WebP) -> gray float in [0, 1], via Pillow.

The pixel limit is checked from the header before Pillow parses anything: our own
PNG IHDR / JPEG SOF sniff, then Pillow's header parse; Pillow's process-wide
`Image.MAX_IMAGE_PIXELS` is left alone and its `DecompressionBombError` becomes an
`ImageLoadError`. Only the formats in `PIL_FORMATS` are opened. EXIF orientation is
applied; 1-, 8- and 16-bit gray, RGB, RGBA, LA, palette and CMYK become gray (alpha is
composited over black) and are scaled by their true bit depth (a 16-bit PNG by 65535).
Called by `xray_ai.images.load.load_image`; Pillow is imported on first use.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np

from xray_ai.images.common import LUMA, ImageLoadError, base_metadata, check_pixels, is_real_colour, min_max

__all__ = ["PIL_FORMATS", "load_raster"]

# Pillow formats we accept: plain raster formats only. Restricting Image.open keeps
# Pillow away from plugins that shell out (EPS runs Ghostscript) or that we never test.
PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_raster(data: bytes, name: str, notes: list[str]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Decode with Pillow; None when Pillow does not recognise the content."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    size = _sniff_size(data, name)
    if size is not None:
        check_pixels(name, *size)  # our own check, before Pillow parses anything
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
        check_pixels(name, *im.size)
        frames = int(getattr(im, "n_frames", 1) or 1)
        png_bits = data[24] if fmt == "png" else None
        try:
            im.load()
            orientation = im.getexif().get(0x0112)
            upright = ImageOps.exif_transpose(im)
            gray, bits, colour = _pil_to_gray(upright, png_bits, notes)
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise ImageLoadError(name, f"truncated or corrupt {fmt.upper()} image: {exc}") from exc
        meta = base_metadata(fmt, (gray.shape[0], gray.shape[1]), bits)
        meta.update(mode=im.mode, frames=frames, voi_source="bit_depth", colour=colour,
                    exif_orientation=int(orientation) if orientation else None)
    if frames > 1:
        notes.append(f"{fmt.upper()} has {frames} frames; only the first is used")
    return gray, meta


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


def _pil_to_gray(im: Any, png_bits: int | None, notes: list[str]) -> tuple[np.ndarray, int, bool]:
    """Pillow image -> (float64 H x W in [0, 1], bit depth used for scaling, whether it held
    real colour rather than gray in three channels)."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float64) / 65535.0, 16, False
    if mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        if png_bits == 16 or (arr.size and arr.min() >= 0 and arr.max() <= 65535):
            return arr / 65535.0, 16, False
        notes.append("32-bit integer image scaled by its own minimum and maximum")
        return min_max(arr, notes), 32, False
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            return arr, 32, False
        notes.append("floating-point image scaled by its own minimum and maximum")
        return min_max(arr, notes), 32, False
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float64) / 255.0, 1, False
    if mode == "L":
        return np.asarray(im, dtype=np.float64) / 255.0, png_bits or 8, False
    if png_bits == 16:
        notes.append("16-bit colour PNG: Pillow decodes it with 8 bits per channel")
    if mode in ("LA", "La", "PA", "P", "RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
        # Transparent areas become black (no signal), not white.
        visible = rgba[..., :3] * (rgba[..., 3:] > 0)
        return (rgba[..., :3] @ LUMA) * rgba[..., 3], 8, is_real_colour(visible)
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    return rgb @ LUMA, 8, is_real_colour(rgb)
