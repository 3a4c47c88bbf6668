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

__all__ = ["PIL_FORMATS", "load_raster"]

# Pillow formats we accept: plain raster formats only. Restricting Image.open keeps
# Pillow away from plugins that shell out (EPS runs Ghostscript) or that we never test.
PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_raster(data: bytes, name: str, notes: list[str]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Decode with Pillow; None when Pillow does not recognise the content.

    Every Pillow call on the data runs inside `guarded` (whatever a plugin raises, Pillow's
    TIFF plugin's TypeError included, becomes an ImageLoadError); the header's size must fit
    `MAX_PIXELS` and `MAX_DECODED_BYTES`, and a PNG or Huffman-coded JPEG far too short for
    the size its header claims is refused as truncated before decoding. An image above
    `MAX_FULL_PIXELS` is decoded reduced (see `_reduced`).
    """
    from PIL import Image, UnidentifiedImageError

    size = _sniff_size(data, name)
    if size is not None:
        check_pixels(name, *size)  # our own check, before Pillow parses anything
        _check_plausible_length(data, name, *size)
    try:
        im = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"refused without decoding: {exc}") from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - untrusted input: a plugin may raise anything
        if isinstance(exc, MemoryError):
            raise ImageLoadError(name, "not enough memory to read the image header") from exc
        raise ImageLoadError(name, f"corrupt image header: {_short(exc)}") from None
    with im:
        fmt = (im.format or "image").lower()
        check_pixels(name, *im.size)
        check_decoded_bytes(name, im.size[0] * im.size[1] * _bytes_per_pixel(im.mode))
        frames = guarded(name, f"Pillow's {fmt.upper()} reader", lambda: int(getattr(im, "n_frames", 1) or 1))
        png_bits = data[24] if fmt == "png" else None
        header_w, header_h = im.size
        try:
            scale = guarded(name, f"Pillow's {fmt.upper()} decoder", _reduced, im, notes)
            orientation = _orientation(im, notes)
            upright = guarded(name, "EXIF orientation", _transposed, scale[0], orientation)
            gray, bits, colour = _pil_to_gray(upright, png_bits, notes)
        except ImageLoadError as exc:
            raise ImageLoadError(name, f"truncated or corrupt {fmt.upper()} image: {exc.reason}") from exc
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - e.g. numpy on a mode Pillow half-decoded
            raise ImageLoadError(name, f"truncated or corrupt {fmt.upper()} image: {_short(exc)}") from None
        if scale[1] > 1:  # the size the header gives, turned upright as the pixels are
            size = (header_w, header_h) if orientation in (5, 6, 7, 8) else (header_h, header_w)
        else:
            size = (gray.shape[0], gray.shape[1])
        meta = base_metadata(fmt, size, bits)
        meta.update(mode=im.mode, frames=frames, voi_source="bit_depth", colour=colour,
                    exif_orientation=orientation)
    if frames > 1:
        notes.append(f"{fmt.upper()} has {frames} frames; only the first is used")
    return gray, meta


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


# Bytes per pixel of Pillow's decoded modes (what `load` allocates).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 4, "RGBA": 4, "RGBa": 4, "CMYK": 4,
               "YCbCr": 4, "LAB": 4, "HSV": 4, "I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def _bytes_per_pixel(mode: str) -> int:
    return _MODE_BYTES.get(mode, 4)


def _check_plausible_length(data: bytes, name: str, width: int, height: int) -> None:
    """Refuse a PNG or JPEG far too short for the size its header claims: it cannot hold the
    image, so it is truncated (Pillow would fill the rest with gray and say nothing).

    The bounds are the formats' own: deflate cannot compress beyond about 1032:1, so a PNG's
    data is at least raw / 1032 bytes; a Huffman-coded JPEG spends at least one bit on every
    8 x 8 block. Both are taken with a margin (raw / 1200; 1 bit per 4 blocks); arithmetic-coded
    JPEG has no such floor and is not checked.
    """
    if data.startswith(_PNG_MAGIC) and len(data) >= 29:
        bit_depth, colour_type = data[24], data[25]
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour_type, 1)
        raw = height * (1 + (width * channels * max(bit_depth, 1) + 7) // 8)
        floor = raw // 1200
        what = "PNG"
    elif data.startswith(b"\xff\xd8") and _jpeg_is_huffman(data):
        floor = ((width + 7) // 8) * ((height + 7) // 8) // 32
        what = "JPEG"
    else:
        return
    if len(data) < floor:
        raise ImageLoadError(
            name,
            f"truncated or corrupt {what}: its header says {width} x {height} pixels, which needs at least "
            f"{floor:,} bytes of image data, but the file has {len(data):,} bytes",
        )


def _jpeg_is_huffman(data: bytes) -> bool:
    """Whether the JPEG's frame header (SOF) is a Huffman-coded one (not arithmetic: SOF9-15)."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker <= 0xC7
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return False


def _reduced(im: Any, notes: list[str]) -> tuple[Any, int]:
    """Decode `im`; above MAX_FULL_PIXELS, reduced by the smallest power of two that fits:
    a JPEG by its decoder (`draft`: it never holds the full raster), any other format right
    after decoding (`reduce`, box averaging), so that converting it costs a quarter or less.
    Returns (image, factor)."""
    from xray_ai.images import common

    width, height = im.size
    factor = 1
    while (width // factor) * (height // factor) > common.MAX_FULL_PIXELS and factor < 64:
        factor *= 2
    if factor > 1 and im.format == "JPEG":
        im.draft(im.mode, (max(1, width // factor), max(1, height // factor)))
    im.load()
    if factor > 1:
        got = max(1, round(width / im.size[0])) if im.size[0] else 1
        if got < factor:
            im = im.reduce(factor // got)
        notes.append(f"image is {width} x {height} pixels, above {common.MAX_FULL_PIXELS:,} (MAX_FULL_PIXELS): "
                     f"decoded at 1/{factor} of its size, {im.size[0]} x {im.size[1]}")
    return im, factor


def _orientation(im: Any, notes: list[str]) -> int | None:
    """The EXIF orientation (1-8), or None; a malformed value is ignored with a warning."""
    try:
        value = im.getexif().get(0x0112)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a damaged EXIF block must not lose the image
        notes.append(f"EXIF data is unreadable ({_short(exc)}); orientation not applied")
        return None
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8:
        return value
    notes.append(f"EXIF orientation {str(value)[:20]!r} is not 1-8; not applied")
    return None


def _transposed(im: Any, orientation: int | None) -> Any:
    """`im` turned upright by its EXIF orientation (ImageOps.exif_transpose's table)."""
    from PIL import Image

    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation or 1)
    return im.transpose(method) if method is not None else im


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


# Above this many pixels a raster image is converted with Pillow's integer conversions and
# float32 (about 5 bytes per pixel at the peak instead of about 100 for RGBA in float64).
_LIGHT_PIXELS = 2048 * 2048


def _pil_to_gray(im: Any, png_bits: int | None, notes: list[str]) -> tuple[np.ndarray, int, bool]:
    """Pillow image -> (float H x W in [0, 1], bit depth used for scaling, whether it held
    real colour rather than gray in three channels).

    Integer gray (1-, 8- and 16-bit) is divided in float32 straight from Pillow's buffer: the
    same values as dividing in float64 and rounding (checked for every 8- and 16-bit value),
    without the float64 copy, which cost as much as the PNG's decode (predict-batch, issue 22)."""
    mode = im.mode
    if im.size[0] * im.size[1] > _LIGHT_PIXELS and mode not in ("I", "F"):
        return _pil_to_gray_light(im, png_bits, notes)
    if mode.startswith("I;16"):
        return _scaled(np.asarray(im), 65535), 16, False
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
        return _scaled(np.asarray(im.convert("L")), 255), 1, False
    if mode == "L":
        return _scaled(np.asarray(im), 255), png_bits or 8, False
    if png_bits == 16:
        notes.append("16-bit colour PNG: Pillow decodes it with 8 bits per channel")
    if mode in ("LA", "La", "PA", "P", "RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
        # Transparent areas become black (no signal), not white.
        visible = rgba[..., :3] * (rgba[..., 3:] > 0)
        return (rgba[..., :3] @ LUMA) * rgba[..., 3], 8, is_real_colour(visible)
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    return rgb @ LUMA, 8, is_real_colour(rgb)


def _scaled(values: np.ndarray, top: int) -> np.ndarray:
    """Unsigned integers / top as float32 (correctly rounded: float32 division)."""
    return np.divide(values, np.float32(top), dtype=np.float32)


def _pil_to_gray_light(im: Any, png_bits: int | None, notes: list[str]) -> tuple[np.ndarray, int, bool]:
    """`_pil_to_gray` for large images, bounded in memory: float32, Pillow's own RGB -> L
    (BT.601 luma, rounded to 8 bits), and the colour check on a subsample."""
    mode = im.mode
    if mode.startswith("I;16"):
        out = np.asarray(im, dtype=np.float32)
        out *= np.float32(1 / 65535)
        return out, 16, False
    if mode in ("1", "L"):
        out = np.asarray(im.convert("L") if mode == "1" else im, dtype=np.float32)
        out *= np.float32(1 / 255)
        return out, (1 if mode == "1" else png_bits or 8), False
    if png_bits == 16:
        notes.append("16-bit colour PNG: Pillow decodes it with 8 bits per channel")
    step = max(1, int(np.ceil(np.sqrt(im.size[0] * im.size[1] / _LIGHT_PIXELS))))
    if mode in ("LA", "La", "PA", "P", "RGBA", "RGBa"):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        sample = np.asarray(rgba)[::step, ::step]
        colour = is_real_colour(sample[..., :3] * (sample[..., 3:] > 0))
        out = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32)
        del rgba
        out *= alpha
        out *= np.float32(1 / (255 * 255))
        return out, 8, colour
    rgb = im.convert("RGB")
    colour = is_real_colour(np.asarray(rgb)[::step, ::step])
    out = np.asarray(rgb.convert("L"), dtype=np.float32)
    out *= np.float32(1 / 255)
    return out, 8, colour
