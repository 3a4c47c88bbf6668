"""A hostile corpus, built here at test time (nothing downloaded): the cases of issue 18.

Each is refused with an ImageLoadError that names the file and the problem, quickly and
within bounded memory, or loads as a sane image with a warning; and the CLI turns a refusal
into exit 2 with one line on stderr.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from conftest import REPO
from xray_ai.images import ImageLoadError, common, load_image
from xray_ai.images import budget

QUICK_S = 3.5  # "no file takes more than about 2 s to refuse": the budget plus a helper restart


def _dicom(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _frame(ds: pydicom.Dataset) -> bytearray:
    return bytearray(next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1))))


def _with_vr(tag: bytes, vr: bytes, new: bytes = b"ZZ") -> bytes:
    data = bytearray(_bytes(_dicom("MR_small.dcm")))
    at = data.index(tag + vr)  # explicit VR little endian: group, element, VR
    data[at + 4:at + 6] = new
    return bytes(data)


def unknown_vr() -> bytes:
    return _with_vr(b"\x28\x00\x10\x00", b"US")  # (0028,0010) Rows


def other_uid_as_transfer_syntax() -> bytes:
    ds = _dicom("MR_small.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.3.4"
    return _bytes(ds)


def modality_lut_without_data() -> bytes:
    ds = _dicom("MR_small.dcm")
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    ds.ModalityLUTSequence = [item]
    return _bytes(ds)


def palette_without_lut() -> bytes:
    ds = _dicom("MR_small.dcm")
    ds.PhotometricInterpretation = "PALETTE COLOR"
    return _bytes(ds)


def rle_with_a_damaged_tail() -> bytes:
    ds = _dicom("MR_small_RLE.dcm")
    frame = _frame(ds)
    ds.PixelData = encapsulate([bytes(frame[: len(frame) - 900])])
    return _bytes(ds)


def jpeg_ls_far_too_short() -> bytes:
    ds = _dicom("JPEGLSNearLossless_16.dcm")
    frame = _frame(ds)
    at = frame.index(b"\xff\xf7")
    frame[at + 5:at + 9] = struct.pack(">HH", 8000, 8000)
    ds.Rows = ds.Columns = 8000
    ds.PixelData = encapsulate([bytes(frame)])
    return _bytes(ds)


def j2k_far_too_short() -> bytes:
    ds = _dicom("JPEG2000.dcm")
    frame = _frame(ds)
    frame[8:16] = struct.pack(">II", 8000, 8000)
    ds.Rows = ds.Columns = 8000
    ds.PixelData = encapsulate([bytes(frame)])
    return _bytes(ds)


def stream_disagrees_with_header() -> bytes:
    ds = _dicom("JPEGLSNearLossless_16.dcm")
    frame = _frame(ds)
    at = frame.index(b"\xff\xf7")
    frame[at + 5:at + 9] = struct.pack(">HH", 60000, 60000)
    ds.PixelData = encapsulate([bytes(frame)])
    return _bytes(ds)


def decoded_size_over_the_limit() -> bytes:
    ds = _dicom("SC_rgb.dcm")  # 3 samples x 32 bits at 8192 x 8192: 768 MiB once decoded
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.Rows = ds.Columns = 8192
    return _bytes(ds)


def jpeg_header_claims_8192() -> bytes:
    data = bytearray(_encode(Image.new("L", (64, 64), 128), "JPEG"))
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", 8192, 8192)
    return bytes(data)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def rgba_zero_png(side: int = 8192) -> bytes:
    """A valid PNG: side x side RGBA zeros, deflate at its best (about 1000:1)."""
    row = b"\x00" + b"\x00" * (side * 4)
    raw = zlib.compress(row * side, 9)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def bytes_exif_orientation() -> bytes:
    """EXIF whose Orientation (0112) is the text "6" where a SHORT belongs."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHI4s", 0x0112, 2, 2, b"6\x00\x00\x00") + struct.pack("<I", 0)
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return _encode(Image.new("L", (16, 8), 100), "JPEG", exif=exif)


REFUSED = [
    ("unknown VR in Rows", unknown_vr, "DICOM attribute Rows is unreadable"),
    ("another UID as transfer syntax", other_uid_as_transfer_syntax, "not a DICOM transfer syntax"),
    ("modality LUT without LUT Data", modality_lut_without_data, "invalid modality LUT"),
    ("palette without a LUT", palette_without_lut, "PALETTE COLOR image without a valid palette"),
    ("RLE with a damaged tail", rle_with_a_damaged_tail, "RLE segment"),
    ("JPEG-LS far too short for its size", jpeg_ls_far_too_short, "far too short"),
    ("JPEG 2000 far too short for its size", j2k_far_too_short, "far too short"),
    ("stream header disagrees with the DICOM header", stream_disagrees_with_header, "damaged file"),
    ("decoded size over MAX_DECODED_BYTES", decoded_size_over_the_limit, "MAX_DECODED_BYTES"),
    ("2.5 KB JPEG whose header says 8192 x 8192", jpeg_header_claims_8192, "truncated or corrupt JPEG"),
]


@pytest.mark.parametrize("case, build, reason", REFUSED, ids=[c[0] for c in REFUSED])
def test_hostile_files_are_refused_quickly_naming_file_and_problem(case, build, reason):
    data = build()
    start = time.perf_counter()
    with pytest.raises(ImageLoadError) as info:
        load_image(data, "hostile.dcm")
    assert time.perf_counter() - start < QUICK_S
    assert str(info.value).startswith("hostile.dcm: ") and reason in str(info.value), str(info.value)


def test_an_unknown_vr_in_a_tag_that_does_not_matter_loads_with_a_warning():
    with pytest.warns(UserWarning, match="unreadable DICOM attribute"):
        xray = load_image(_with_vr(b"\x10\x00\x10\x00", b"PN"), "name.dcm")  # (0010,0010) Patient's Name
    assert xray.pixels.shape == (64, 64)


def test_a_malformed_exif_orientation_loads_with_a_warning():
    with pytest.warns(UserWarning, match="EXIF orientation"):
        xray = load_image(bytes_exif_orientation(), "exif.jpg")
    assert xray.pixels.shape == (8, 16) and xray.metadata["exif_orientation"] is None


def test_a_decoder_that_runs_too_long_is_stopped_at_the_budget():
    damaged = (REPO / "tests" / "fuzz_regressions").glob("Slow-*.bin")
    data = next(damaged).read_bytes()  # a 64 x 64 JPEG-LS that keeps CharLS busy for about 5 s
    start = time.perf_counter()
    with pytest.raises(ImageLoadError, match="stopped after 2.0 s"):
        load_image(data, "slow.dcm")
    assert time.perf_counter() - start < QUICK_S
    # and the helper is back for the next file
    assert load_image(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")).pixels.shape == (64, 64)


def test_the_budgeted_helper_decodes_exactly_as_in_process():
    from pydicom.pixels import get_decoder

    for name in ("MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm"):
        ds = _dicom(name)
        here, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=0)
        there, _ = budget.decode_with_budget(_bytes(ds), False, str(ds.file_meta.TransferSyntaxUID), 30)
        assert here.dtype == there.dtype and np.array_equal(here, there), name


class PanicException(BaseException):
    """What pyo3 raises for a Rust panic: a BaseException, not an Exception."""


def test_a_native_panic_becomes_an_image_load_error_but_ctrl_c_does_not(monkeypatch):
    import rle.utils

    data = _bytes(_dicom("MR_small_RLE.dcm"))

    def panic(*args, **kwargs):
        raise PanicException("index out of bounds: the len is 8192 but the index is 8192")

    monkeypatch.setattr(rle.utils, "decode_segment", panic)
    with pytest.raises(ImageLoadError, match="the RLE decoder crashed \\(a panic in its native code\\)"):
        load_image(data, "panic.dcm")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rle.utils, "decode_segment", interrupt)
    with pytest.raises(KeyboardInterrupt):
        load_image(data, "panic.dcm")


_PEAK = """
import resource, sys, warnings
sys.path.insert(0, {repo!r})
from xray_ai.images import load_image
data = open({path!r}, "rb").read()
import PIL.Image, pydicom, numpy  # imports before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    xray = load_image(data, "bomb.png")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import json
print(json.dumps({{"shape": list(xray.pixels.shape), "peak_mib": (after - before) // 1024,
                  "warnings": [str(w.message) for w in seen]}}))
"""


def test_an_rgba_zero_png_at_the_pixel_limit_stays_within_bounded_memory(tmp_path):
    """8192 x 8192 RGBA of zeros (261 KB): once 3.1 GB (5.9 GB measured here); now decoded, reduced to 4096 x 4096
    (MAX_FULL_PIXELS) and converted in float32: about 630 MiB above the interpreter's baseline, bounded at 800."""
    path = tmp_path / "bomb.png"
    path.write_bytes(rgba_zero_png())
    assert path.stat().st_size < 300_000
    done = subprocess.run([sys.executable, "-c", _PEAK.format(repo=str(REPO), path=str(path))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import json

    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["shape"] == [4096, 4096] and any("decoded at 1/2" in w for w in out["warnings"]), out
    assert out["peak_mib"] < 800, out


def test_the_cli_refuses_a_hostile_file_with_exit_2_and_one_line(tmp_path):
    path = tmp_path / "hostile.dcm"
    path.write_bytes(rle_with_a_damaged_tail())
    done = subprocess.run([sys.executable, "-m", "xray_ai", "predict", str(path), "--condition", "fracture"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "RLE segment" in lines[0]


def test_limits_are_stated_in_one_place():
    assert common.MAX_PIXELS == 8192 * 8192 and common.MAX_DECODED_BYTES == 512 * 2**20
    assert common.MAX_FULL_PIXELS == 4096 * 4096 and budget.DECODE_BUDGET_SECONDS == 2.0
