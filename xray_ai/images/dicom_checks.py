"""The checks a DICOM file passes before and after a native decoder sees it.

Untrusted input: `image_attributes` validates every attribute the pipeline reads (pydicom
converts values lazily, so a damaged one raises on first access: `attribute` turns that
into an ImageLoadError naming it); `check_codestream` holds the compressed frame's own
header to the DICOM header and refuses a frame far too short for its size, and checks an
RLE frame's segments; `checked_array` holds the decoded array to the header's shape.
JPEG-LS and JPEG 2000 decode in the budgeted helper process (`xray_ai.images.budget`).
Used by `xray_ai.images.dicom`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xray_ai.images import common
from xray_ai.images.common import ImageLoadError, guarded

__all__ = ["attribute", "image_attributes", "transfer_syntax", "check_codestream", "checked_array", "budgeted",
           "decode_with_budget"]

# The values the pipeline reads, with their allowed ranges (PS3.3 C.7.6.3).
_BITS_ALLOCATED = (1, 8, 16, 32, 64)
_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422",
                "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT", "XYB")


def attribute(ds: Any, name: str, read: Any, what: str) -> Any:
    """Read one attribute (pydicom converts values lazily, so a bad value raises only here)."""
    try:
        return guarded(name, "pydicom", read)
    except ImageLoadError as exc:
        raise ImageLoadError(name, f"DICOM attribute {what} is unreadable: {exc.reason}") from exc


def _integer(ds: Any, name: str, keyword: str, lo: int, hi: int, default: int | None = None) -> int:
    def read() -> Any:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else default
        return value

    value = attribute(ds, name, read, keyword)
    if value is None:
        raise ImageLoadError(name, f"DICOM image without {keyword}")
    try:
        number = int(value)
        exact = float(value) == number
    except (TypeError, ValueError, OverflowError):
        raise ImageLoadError(name, f"DICOM attribute {keyword} is not a number: {str(value)[:40]!r}") from None
    if not exact or not lo <= number <= hi:
        raise ImageLoadError(name, f"DICOM attribute {keyword} is {str(value)[:40]}, not an integer in [{lo}, {hi}]")
    return number


def image_attributes(ds: Any, name: str) -> dict[str, Any]:
    """Rows, Columns, Number of Frames, Samples per Pixel, Bits Allocated/Stored, Pixel
    Representation and Photometric Interpretation, each validated; ImageLoadError names the
    attribute that is missing or out of range."""
    rows = _integer(ds, name, "Rows", 1, 65535)
    cols = _integer(ds, name, "Columns", 1, 65535)
    frames = _integer(ds, name, "NumberOfFrames", 1, 2**31 - 1, default=1)
    samples = _integer(ds, name, "SamplesPerPixel", 1, 4, default=1)
    if samples not in (1, 3):
        raise ImageLoadError(name, f"DICOM attribute SamplesPerPixel is {samples}; 1 (gray) or 3 (colour) expected")
    floats = attribute(ds, name, lambda: "FloatPixelData" in ds or "DoubleFloatPixelData" in ds, "Pixel Data")
    allocated = _integer(ds, name, "BitsAllocated", 1, 64, default=32 if floats else None)
    if allocated not in _BITS_ALLOCATED:
        raise ImageLoadError(name, f"DICOM attribute BitsAllocated is {allocated}; one of 1, 8, 16, 32, 64 expected")
    stored = _integer(ds, name, "BitsStored", 1, allocated, default=allocated)
    _integer(ds, name, "PixelRepresentation", 0, 1, default=0)
    photometric = attribute(ds, name, lambda: str(ds.get("PhotometricInterpretation") or "").strip().upper(),
                             "PhotometricInterpretation")
    if photometric not in _PHOTOMETRIC:
        raise ImageLoadError(name, f"DICOM attribute PhotometricInterpretation is {photometric[:32]!r}, "
                                   "not a known interpretation")
    if (samples == 1) != (photometric in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")):
        raise ImageLoadError(name, f"DICOM image has SamplesPerPixel {samples} but PhotometricInterpretation "
                                   f"{photometric}")
    if samples == 3:
        _integer(ds, name, "PlanarConfiguration", 0, 1, default=0)
    return {"rows": rows, "cols": cols, "frames": frames, "samples": samples, "bits_allocated": allocated,
            "bits_stored": stored, "photometric": photometric}


def transfer_syntax(ds: Any, name: str) -> Any:
    import pydicom

    tsyntax = attribute(ds, name, lambda: ds.file_meta.get("TransferSyntaxUID"), "TransferSyntaxUID")
    if tsyntax is None:  # no file meta (bare dataset): use the encoding it was read with
        implicit, little = ds.original_encoding
        tsyntax = pydicom.uid.ImplicitVRLittleEndian if implicit else (
            pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = tsyntax
    tsyntax = pydicom.uid.UID(str(tsyntax).strip("\x00 "))
    if not tsyntax.is_valid or not tsyntax.is_transfer_syntax:
        raise ImageLoadError(name, f"transfer syntax {str(tsyntax)[:64]!r} is not a DICOM transfer syntax; "
                                   "no decoder exists")
    ds.file_meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _first_frame(ds: Any, name: str, frames: int) -> bytes:
    from pydicom.encaps import generate_frames

    def read() -> bytes:
        return next(generate_frames(ds.PixelData, number_of_frames=frames))

    try:
        return guarded(name, "pydicom's encapsulation reader", read)
    except ImageLoadError as exc:
        raise ImageLoadError(name, f"encapsulated pixel data is damaged or truncated: {exc.reason}") from exc


def check_codestream(ds: Any, name: str, tsyntax: Any, attrs: dict[str, Any]) -> None:
    """Before a native decoder runs: the compressed frame's own header must describe the
    image the DICOM header describes (a mutated JPEG-LS header that claims 60000 x 60000
    otherwise keeps CharLS busy for seconds), and an RLE frame's segments must be complete."""
    from pydicom import uid

    frame = _first_frame(ds, name, attrs["frames"])
    if not frame:
        raise ImageLoadError(name, "encapsulated pixel data holds an empty frame (truncated file)")
    rows, cols, samples = attrs["rows"], attrs["cols"], attrs["samples"]
    header: tuple[int, int, int] | None = None
    if tsyntax in uid.RLETransferSyntaxes:
        _check_rle(frame, name, attrs)
        return
    if frame[:2] == b"\xff\xd8":
        from pydicom.pixels.utils import _get_jpg_parameters

        params = _get_jpg_parameters(frame)
        if not params.get("height") and not params.get("width"):
            raise ImageLoadError(name, "JPEG pixel data has no frame header (SOF): damaged or truncated")
        header = (int(params.get("height") or 0), int(params.get("width") or 0), int(params.get("components") or 0))
        if not 2 <= int(params.get("precision") or 0) <= 16:
            raise ImageLoadError(name, f"JPEG pixel data has precision {params.get('precision')}, not 2-16 bits")
    elif frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 42:  # J2K codestream: SOC, SIZ
        import struct

        xsiz, ysiz, xo, yo = struct.unpack(">IIII", frame[8:24])
        csiz = struct.unpack(">H", frame[40:42])[0]
        header = (ysiz - yo, xsiz - xo, csiz)
    decoded = rows * cols * samples * max(attrs["bits_allocated"] // 8, 1)
    if frame[:2] == b"\xff\xd8" and _huffman_jpeg(frame):
        floor = ((cols + 7) // 8) * ((rows + 7) // 8) // 32  # >= 1 bit per 8 x 8 block, with a margin
    elif rows * cols > common.LARGE_FRAME_PIXELS:
        floor = decoded // common.MAX_COMPRESSION_RATIO
    else:
        floor = 0
    if len(frame) < floor:
        raise ImageLoadError(
            name,
            f"compressed frame of {len(frame):,} bytes is far too short for a {cols} x {rows} image "
            f"(at least {floor:,} bytes expected): truncated or damaged pixel data",
        )
    if header is None:
        return
    h, w, c = header
    # a JPEG with height 0 defines it later (DNL); J2K and JPEG-LS must match exactly
    if (h not in (0, rows)) or w != cols or c != samples:
        raise ImageLoadError(
            name,
            f"pixel data stream says {w} x {h} with {c} component(s), the DICOM header {cols} x {rows} with "
            f"{samples}: damaged file",
        )


def budgeted(tsyntax: Any) -> bool:
    """JPEG-LS (CharLS) and JPEG 2000 (OpenJPEG) decode in the budgeted helper (images.budget)."""
    from pydicom import uid

    return tsyntax in uid.JPEGLSTransferSyntaxes or tsyntax in uid.JPEG2000TransferSyntaxes


def decode_with_budget(data: bytes, name: str, force: bool, tsyntax: Any, pixels: int) -> tuple[Any, dict]:
    from xray_ai.images import budget

    seconds = budget.budget_for(pixels)
    try:
        return budget.decode_with_budget(data, force, str(tsyntax), seconds)
    except TimeoutError:
        raise ImageLoadError(name, f"the {tsyntax.name} decoder was stopped after {seconds:.1f} s (the decode "
                                   "budget for this image size): damaged pixel data") from None
    except RuntimeError as exc:
        raise ImageLoadError(name, " ".join(str(exc).split())[:500]) from None


def _huffman_jpeg(frame: bytes) -> bool:
    from xray_ai.images.raster import _jpeg_is_huffman

    return _jpeg_is_huffman(frame)


def _check_rle(frame: bytes, name: str, attrs: dict[str, Any]) -> None:
    """An RLE frame (PS3.5 G.3): a 64-byte header of segment offsets, one segment per byte
    of each sample; each segment must decode to exactly Rows x Columns bytes."""
    import struct

    if len(frame) < 64:
        raise ImageLoadError(name, f"RLE frame of {len(frame)} bytes is shorter than its 64-byte header (truncated)")
    count, *offsets = struct.unpack("<16I", frame[:64])
    expected = attrs["samples"] * max(attrs["bits_allocated"] // 8, 1)
    if count != expected:
        raise ImageLoadError(name, f"RLE header lists {count} segments, the image needs {expected}: damaged file")
    offsets = offsets[:count] + [len(frame)]
    if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ImageLoadError(name, f"RLE segment offsets {offsets[:-1]} are not increasing within the "
                                   f"{len(frame):,}-byte frame: damaged or truncated")
    from rle.utils import decode_segment  # pylibjpeg-rle (MIT), the decoder pydicom uses

    want = attrs["rows"] * attrs["cols"]
    for i, (a, b) in enumerate(zip(offsets, offsets[1:])):
        try:
            got = len(guarded(name, "the RLE decoder", decode_segment, frame[a:b]))
        except ImageLoadError as exc:
            raise ImageLoadError(name, f"RLE segment {i + 1} of {count} is truncated or damaged: {exc.reason}") from exc
        if got < want:
            raise ImageLoadError(name, f"RLE segment {i + 1} of {count} decodes to {got:,} bytes, "
                                       f"{want:,} expected: truncated or damaged pixel data")


def checked_array(arr: Any, name: str, attrs: dict[str, Any]) -> np.ndarray:
    arr = np.asarray(arr)
    rows, cols, samples = attrs["rows"], attrs["cols"], attrs["samples"]
    want = (rows, cols) if samples == 1 else (rows, cols, samples)
    if arr.shape != want or arr.dtype.kind not in "uifb":
        raise ImageLoadError(name, f"decoded pixel data has shape {arr.shape} ({arr.dtype}), the header says {want}")
    return arr
