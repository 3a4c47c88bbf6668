"""Tests for xray_ai.images: DICOM pipeline, PNG/JPEG conversion, limits and refusals.

Real files come from pydicom's test data and pydicom-data (no downloads); the rest is
built here: synthetic DICOM datasets, hand-made PNG headers, EXIF-rotated JPEGs.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

from xray_ai.images import ImageLoadError, ImageLoadWarning, XRay, load_image
from xray_ai.images import common  # the limits live here

REPO = Path(__file__).resolve().parents[1]
METADATA_KEYS = {
    "format", "original_size", "bits", "photometric_interpretation", "modality", "body_part",
    "view_position", "window", "voi_source", "frames", "transfer_syntax", "warnings", "patient", "study",
}


# --------------------------------------------------------------------------- helpers


def data_file(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return path


def assert_valid(xray: XRay) -> None:
    """The invariants every loaded image must satisfy."""
    px = xray.pixels
    assert isinstance(px, np.ndarray)
    assert px.dtype == np.float32
    assert px.ndim == 2 and px.size > 0
    assert not np.isnan(px).any()
    assert px.min() >= 0.0 and px.max() <= 1.0
    assert METADATA_KEYS <= set(xray.metadata)
    assert isinstance(xray.metadata["warnings"], list)


def load_quiet(source, filename=None) -> XRay:
    """load_image with its ImageLoadWarnings captured (they are asserted via metadata)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageLoadWarning)
        return load_image(source, filename)


def make_dicom(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    pixel_data: bool = True,
    **tags,
) -> bytes:
    """A minimal CR DICOM file (explicit VR little endian) holding `pixels` (uint16 or int16)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Test^Synthetic"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if pixel_data:
        ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid-looking PNG whose IHDR claims width x height, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


@pytest.fixture(scope="module")
def rg3() -> XRay:
    return load_image(data_file("RG3_UNCR.dcm"))


# --------------------------------------------------------------------------- real DICOM


def test_rg3_monochrome1_matches_pydicom_pipeline(rg3):
    """Modality LUT -> window -> MONOCHROME1 inversion, as pydicom computes it."""
    ds = pydicom.dcmread(data_file("RG3_UNCR.dcm"))
    reference = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    inverted = reference.max() - reference
    assert_valid(rg3)
    assert rg3.pixels.shape == (1760, 1760)
    r = np.corrcoef(rg3.pixels.ravel(), inverted.ravel())[0, 1]
    assert r > 0.9
    # Not inverting would be the classic MONOCHROME1 bug: bone would come out dark.
    assert np.corrcoef(rg3.pixels.ravel(), reference.ravel())[0, 1] < -0.9


def test_rg3_metadata(rg3):
    meta = rg3.metadata
    assert meta["format"] == "dicom"
    assert meta["original_size"] == (1760, 1760)
    assert meta["bits"] == 10
    assert meta["photometric_interpretation"] == "MONOCHROME1"
    assert (meta["modality"], meta["body_part"], meta["view_position"]) == ("CR", "EXTREMITY", "AP")
    assert meta["window"] == (550.0, 1024.0)
    assert meta["voi_source"] == "window"
    assert meta["frames"] == 1
    assert meta["transfer_syntax"] == "Explicit VR Little Endian"
    assert meta["warnings"] == []
    assert meta["patient"] == {"name": "CompressedSamples^RG3", "id": "11RG3", "birth_date": "19790408", "sex": "F"}
    assert meta["study"]["description"] == "Non-ossifying fibroma of distal tibia"
    assert meta["study"]["study_uid"].startswith("1.3.6.1.4.1.5962")
    assert rg3.filename.endswith("RG3_UNCR.dcm")


def test_rg3_jpeg2000_lossless_equals_uncompressed(rg3):
    j2k = load_image(data_file("RG3_J2KR.dcm"))
    assert_valid(j2k)
    assert j2k.metadata["transfer_syntax"] == "JPEG 2000 Image Compression (Lossless Only)"
    np.testing.assert_array_equal(j2k.pixels, rg3.pixels)


def test_rg3_jpeg2000_lossy_close_to_uncompressed(rg3):
    lossy = load_image(data_file("RG3_J2KI.dcm"))
    assert_valid(lossy)
    assert np.abs(lossy.pixels - rg3.pixels).mean() < 0.005


# name, voi_source, modality_lut, frames, expected shape
DICOM_CASES = [
    ("vlut_04.dcm", "voi_lut", None, 1, (512, 512)),
    ("mlut_18.dcm", "min_max", "lut", 1, (512, 512)),
    ("CT_small.dcm", "min_max", "rescale", 1, (128, 128)),
    ("MR_small.dcm", "window", None, 1, (64, 64)),
    ("MR_small_RLE.dcm", "window", None, 1, (64, 64)),
    ("MR_small_jpeg_ls_lossless.dcm", "window", None, 1, (64, 64)),
    ("MR_small_jp2klossless.dcm", "window", None, 1, (64, 64)),
    ("MR_small_bigendian.dcm", "window", None, 1, (64, 64)),
    ("JPEGLSNearLossless_16.dcm", "min_max", None, 1, (50, 10)),
    ("emri_small.dcm", "min_max", None, 10, (64, 64)),
    ("emri_small_RLE.dcm", "min_max", None, 10, (64, 64)),
    ("US1_UNCR.dcm", "bit_depth", None, 1, (480, 640)),  # RGB ultrasound -> gray
    ("SC_rgb_jpeg_dcmtk.dcm", "bit_depth", None, 1, (100, 100)),  # YBR baseline JPEG
    ("OBXXXX1A_rle_2frame.dcm", "bit_depth", None, 2, (600, 800)),  # palette colour, RLE
]


@pytest.mark.parametrize("name, voi_source, modality_lut, frames, shape", DICOM_CASES)
def test_dicom_table(name, voi_source, modality_lut, frames, shape):
    xray = load_quiet(data_file(name))
    assert_valid(xray)
    meta = xray.metadata
    assert xray.pixels.shape == shape == meta["original_size"]
    assert meta["format"] == "dicom"
    assert meta["voi_source"] == voi_source
    assert meta["modality_lut"] == modality_lut
    assert meta["frames"] == frames
    multi_frame_warnings = [w for w in meta["warnings"] if "multi-frame" in w]
    assert len(multi_frame_warnings) == (1 if frames > 1 else 0)
    assert xray.pixels.max() > xray.pixels.min()  # a real image, not a blank


@pytest.mark.parametrize(
    "reference, variants",
    [
        ("MR_small.dcm", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                          "MR_small_bigendian.dcm"]),
        ("emri_small.dcm", ["emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm",
                            "emri_small_jpeg_2k_lossless.dcm", "emri_small_big_endian.dcm"]),
        ("US1_UNCR.dcm", ["US1_J2KR.dcm"]),
    ],
)
def test_lossless_syntaxes_decode_identically(reference, variants):
    expected = load_quiet(data_file(reference)).pixels
    for name in variants:
        np.testing.assert_allclose(load_quiet(data_file(name)).pixels, expected, atol=1e-6, err_msg=name)


def test_multiframe_warns():
    with pytest.warns(ImageLoadWarning, match="10 frames"):
        xray = load_image(data_file("emri_small.dcm"))
    assert xray.warnings == ["multi-frame DICOM (10 frames): only the first frame is used"]
    ds = pydicom.dcmread(data_file("emri_small.dcm"))
    first = ds.pixel_array[0].astype(np.float64)
    expected = (first - first.min()) / (first.max() - first.min())
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6)


def test_voi_lut_sequence_is_applied():
    ds = pydicom.dcmread(data_file("vlut_04.dcm"))
    out = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = (out - lut.min()) / (lut.max() - lut.min())
    np.testing.assert_allclose(load_image(data_file("vlut_04.dcm")).pixels, expected, atol=1e-6)


def test_modality_lut_sequence_is_applied():
    ds = pydicom.dcmread(data_file("mlut_18.dcm"))
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = (values - values.min()) / (values.max() - values.min())
    xray = load_image(data_file("mlut_18.dcm"))
    assert xray.metadata["modality_lut"] == "lut"
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6)


# --------------------------------------------------------------------------- synthetic DICOM

STORED = np.array([[0, 50], [100, 150]], dtype=np.uint16)
# Rescale 2x - 100 gives [-100, 0, 100, 200]; window 100/101 (LINEAR, PS3.3 C.11.2.1.2.1):
# <= 49.5 -> 0, > 149.5 -> 1, else (x - 99.5) / 100 + 0.5.
WINDOWED = np.array([[0.0, 0.0], [0.505, 1.0]])
MIN_MAX = np.array([[0.0, 1 / 3], [2 / 3, 1.0]])


@pytest.mark.parametrize(
    "photometric, tags, expected, voi_source",
    [
        ("MONOCHROME2", {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 100, "WindowWidth": 101},
         WINDOWED, "window"),
        ("MONOCHROME1", {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 100, "WindowWidth": 101},
         1.0 - WINDOWED, "window"),
        ("MONOCHROME2", {}, MIN_MAX, "min_max"),
        ("MONOCHROME1", {}, 1.0 - MIN_MAX, "min_max"),
        ("MONOCHROME2", {"RescaleSlope": 2, "RescaleIntercept": -100}, MIN_MAX, "min_max"),
        ("MONOCHROME2", {"WindowCenter": 50, "WindowWidth": 0}, MIN_MAX, "min_max"),  # invalid width
    ],
)
def test_synthetic_pipeline_values(photometric, tags, expected, voi_source):
    xray = load_quiet(make_dicom(STORED, photometric, **tags), "synthetic.dcm")
    assert_valid(xray)
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6)
    assert xray.metadata["voi_source"] == voi_source
    assert xray.metadata["photometric_interpretation"] == photometric
    if tags.get("WindowWidth") == 0:
        assert any("could not be applied" in w for w in xray.warnings)


def test_signed_pixels_with_window():
    stored = np.array([[-1000, -500], [0, 1000]], dtype=np.int16)
    xray = load_image(make_dicom(stored, WindowCenter=0, WindowWidth=1001), "signed.dcm")
    assert_valid(xray)
    # Window [-500.5, 499.5]: -1000 below, 1000 above, -500 at its bottom, 0 just past the middle.
    np.testing.assert_allclose(xray.pixels, [[0.0, 0.0005], [0.5005, 1.0]], atol=1e-5)


def test_bare_dicom_without_preamble_loads_when_named_dcm():
    data = Path(data_file("MR_small.dcm")).read_bytes()
    bare = data[132:]  # no preamble, no 'DICM': starts at the (0002,0000) element
    expected = load_image(data).pixels
    np.testing.assert_array_equal(load_image(bare, "bare.dcm").pixels, expected)
    with pytest.raises(ImageLoadError, match="not a supported image"):
        load_image(bare, "bare.txt")


def test_constant_dicom_is_black_with_warning():
    xray = load_quiet(make_dicom(np.full((4, 4), 7, dtype=np.uint16)), "flat.dcm")
    assert_valid(xray)
    assert xray.pixels.max() == 0.0
    assert any("single value" in w for w in xray.warnings)


# --------------------------------------------------------------------------- refusals


def _truncated_rg3_pixels() -> tuple[bytes, str]:
    data = Path(data_file("RG3_UNCR.dcm")).read_bytes()
    return data[: len(data) // 2], "rg3_half.dcm"


def _truncated_rg3_header() -> tuple[bytes, str]:
    data = Path(data_file("RG3_UNCR.dcm")).read_bytes()
    return data[:1200], "rg3_header.dcm"


def _truncated_png() -> tuple[bytes, str]:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)))
    return data[: len(data) // 2], "cut.png"


def _truncated_jpeg() -> tuple[bytes, str]:
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)), "JPEG")
    return data[: len(data) // 2], "cut.jpg"


REFUSALS = [
    ("empty", lambda: (b"", "empty.png"), "empty file"),
    ("random bytes", lambda: (np.random.default_rng(0).bytes(4096), "noise.bin"), "not a supported image"),
    ("text named .dcm", lambda: (b"patient: anonymous\nthis is not DICOM\n" * 20, "notes.dcm"), "not a supported image"),
    ("DICOM without pixel data", lambda: (make_dicom(STORED, pixel_data=False), "nopix.dcm"), "no pixel data"),
    ("truncated DICOM pixel data", _truncated_rg3_pixels, "truncated pixel data"),
    ("truncated DICOM header", _truncated_rg3_header, "truncated"),
    ("pydicom MR_truncated", lambda: (Path(data_file("MR_truncated.dcm")).read_bytes(), "MR_truncated.dcm"),
     "truncated pixel data"),
    ("truncated PNG", _truncated_png, "truncated or corrupt PNG"),
    ("truncated JPEG", _truncated_jpeg, "truncated or corrupt JPEG"),
    ("PNG bomb", lambda: (png_bomb(), "bomb.png"), "30000 x 30000 = 900,000,000 pixels"),
    ("DICOM bomb", lambda: (make_dicom(STORED, Rows=60000, Columns=60000), "bomb.dcm"), "60000 x 60000"),
]


@pytest.mark.parametrize("case, build, reason", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(case, build, reason):
    data, name = build()
    with pytest.raises(ImageLoadError) as info:
        load_image(data, name)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.filename == name
    assert str(err).startswith(f"{name}: ")
    assert reason in str(err)


def test_png_bomb_is_refused_before_pillow_parses_it(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("Pillow was asked to open a decompression bomb")

    monkeypatch.setattr(Image, "open", fail)
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError, match="refused without decoding"):
        load_image(png_bomb(), "bomb.png")
    assert Image.MAX_IMAGE_PIXELS == limit_before  # Pillow's global limit is left alone


def test_pixel_limit_applies_to_every_format_before_decoding(monkeypatch):
    jpeg = encode(Image.new("L", (20, 20), 128), "JPEG")
    bmp = encode(Image.new("L", (20, 20), 128), "BMP")
    monkeypatch.setattr(common, "MAX_PIXELS", 100)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded despite the limit"))
    for data, name in ((jpeg, "big.jpg"), (bmp, "big.bmp")):
        with pytest.raises(ImageLoadError, match="20 x 20 = 400 pixels"):
            load_image(data, name)


def test_dicom_pixel_limit_counts_frames_and_skips_decoding(monkeypatch):
    monkeypatch.setattr(common, "MAX_PIXELS", 64 * 64 * 5)
    decoder = type(get_decoder(ExplicitVRLittleEndian))
    monkeypatch.setattr(decoder, "as_array", lambda *a, **k: pytest.fail("decoded despite the limit"))
    with pytest.raises(ImageLoadError, match="64 x 64 x 10 frames"):
        load_image(data_file("emri_small.dcm"))


@pytest.mark.parametrize(
    "name, syntax",
    [
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG Lossless"),  # no decoder installed at all
        ("JPEG-lossy.dcm", "JPEG Extended"),  # Pillow present, but it cannot do 12-bit JPEG
    ],
)
def test_jpeg_without_libjpeg_names_the_package(name, syntax):
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder (pylibjpeg-libjpeg or gdcm) is installed here")
    with pytest.raises(ImageLoadError) as info:
        load_image(data_file(name))
    message = str(info.value)
    assert syntax in message
    assert "pylibjpeg-libjpeg" in message and "GPL" in message


@pytest.mark.parametrize("as_path", [False, True])
def test_file_over_byte_limit(monkeypatch, tmp_path, as_path):
    data = encode(Image.new("L", (64, 64), 10))
    monkeypatch.setattr(common, "MAX_FILE_BYTES", len(data) - 1)
    source = tmp_path / "big.png"
    source.write_bytes(data)
    with pytest.raises(ImageLoadError, match="MAX_FILE_BYTES"):
        load_image(source if as_path else data, None if as_path else "big.png")
    monkeypatch.setattr(common, "MAX_FILE_BYTES", len(data))
    assert load_image(source if as_path else data).pixels.shape == (64, 64)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "absent.dcm")
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_wrong_source_type_is_a_type_error():
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- PNG / JPEG


def _rgba() -> Image.Image:
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 255, 255, 255)  # opaque white
    arr[0, 1] = (255, 255, 255, 0)  # transparent white -> black
    arr[1, 0] = (255, 0, 0, 255)  # opaque red -> luma 0.299
    arr[1, 1] = (255, 255, 255, 51)  # 20 % white -> 0.2
    return Image.fromarray(arr, "RGBA")


def _palette() -> Image.Image:
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, 1 pure blue
    im.putpixel((1, 0), 1)
    return im


RASTER_CASES = [
    # name, image bytes, expected pixels, bits, format
    ("8-bit gray", lambda: encode(Image.fromarray(np.array([[0, 51], [204, 255]], np.uint8))),
     [[0.0, 0.2], [0.8, 1.0]], 8, "png"),
    ("16-bit gray", lambda: encode(Image.fromarray(np.array([[0, 257], [32768, 65535]], np.uint16))),
     [[0.0, 257 / 65535], [32768 / 65535, 1.0]], 16, "png"),
    ("RGBA over black", lambda: encode(_rgba()), [[1.0, 0.0], [0.299, 0.2]], 8, "png"),
    ("LA", lambda: encode(Image.fromarray(np.array([[[200, 255], [200, 0]]], np.uint8), "LA")),
     [[200 / 255, 0.0]], 8, "png"),
    ("palette", lambda: encode(_palette()), [[0.0, 0.114]], 8, "png"),
    ("1-bit", lambda: encode(Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")), [[0.0, 1.0]], 1, "png"),
    ("RGB JPEG", lambda: encode(Image.new("RGB", (8, 8), (0, 255, 0)), "JPEG", quality=100), [[0.587] * 8] * 8, 8,
     "jpeg"),
    ("CMYK JPEG", lambda: encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG", quality=100), [[1.0] * 8] * 8, 8,
     "jpeg"),
    ("float TIFF", lambda: encode(Image.fromarray(np.array([[0.0, 0.25]], np.float32), "F"), "TIFF"),
     [[0.0, 0.25]], 32, "tiff"),
]


@pytest.mark.parametrize("case, build, expected, bits, fmt", RASTER_CASES, ids=[c[0] for c in RASTER_CASES])
def test_raster_table(case, build, expected, bits, fmt):
    xray = load_image(build(), f"image.{fmt}")
    assert_valid(xray)
    np.testing.assert_allclose(xray.pixels, np.asarray(expected), atol=2.5 / 255)
    meta = xray.metadata
    assert meta["format"] == fmt
    assert meta["bits"] == bits
    assert meta["original_size"] == xray.pixels.shape
    assert meta["voi_source"] == "bit_depth"
    assert meta["patient"] == {} and meta["study"] == {}
    assert meta["warnings"] == []


def test_16bit_colour_png_warns_about_8_bit_decoding():
    import cv2

    ok, data = cv2.imencode(".png", np.full((4, 4, 3), 40000, np.uint16))
    assert ok
    with pytest.warns(ImageLoadWarning, match="16-bit colour PNG"):
        xray = load_image(data.tobytes(), "colour16.png")
    assert_valid(xray)
    np.testing.assert_allclose(xray.pixels, 40000 / 65535, atol=1 / 255)


def test_exif_rotated_jpeg_is_turned_upright():
    arr = np.zeros((20, 40), dtype=np.uint8)  # 40 wide, 20 high, as stored
    arr[:6, :6] = 255  # bright block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    xray = load_image(encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95), "rotated.jpg")
    assert_valid(xray)
    assert xray.pixels.shape == (40, 20)  # width and height swap
    assert xray.metadata["exif_orientation"] == 6
    assert xray.pixels[:6, -6:].mean() > 0.8  # stored top-left is now top-right
    assert xray.pixels[:6, :6].mean() < 0.2


def test_multiframe_gif_uses_first_frame():
    frames = [Image.new("L", (4, 4), v) for v in (255, 0)]
    data = io.BytesIO()
    frames[0].save(data, "GIF", save_all=True, append_images=frames[1:])
    xray = load_quiet(data.getvalue(), "anim.gif")
    assert_valid(xray)
    assert xray.metadata["frames"] == 2
    assert xray.pixels.min() > 0.9
    assert any("2 frames" in w for w in xray.warnings)


# --------------------------------------------------------------------------- sources, examples, imports


@pytest.mark.parametrize("fixture", ["dicom", "png"])
def test_bytes_path_and_file_object_agree(tmp_path, fixture):
    if fixture == "dicom":
        data = Path(data_file("MR_small.dcm")).read_bytes()
    else:
        data = encode(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4))
    path = tmp_path / f"image.{fixture}"
    path.write_bytes(data)
    from_bytes = load_image(data, path.name)
    from_path = load_image(path)
    from_str = load_image(str(path))
    with path.open("rb") as fh:
        from_file = load_image(fh)
    for other in (from_path, from_str, from_file):
        np.testing.assert_array_equal(other.pixels, from_bytes.pixels)
        assert other.metadata == from_bytes.metadata
    assert from_path.filename == str(path)
    assert from_bytes.filename == "image." + fixture
    assert load_image(data).filename == "<bytes>"


@pytest.mark.parametrize("stem, body_part", [("rg3_tibia", "EXTREMITY"), ("rg1_chest", "CHEST")])
def test_examples_are_deidentified_and_render_like_their_png(stem, body_part):
    dcm, png = REPO / "examples" / f"{stem}.dcm", REPO / "examples" / f"{stem}.png"
    assert dcm.stat().st_size < 1_000_000 and png.stat().st_size < 1_000_000
    xray = load_image(dcm)
    assert_valid(xray)
    assert max(xray.pixels.shape) == 512
    meta = xray.metadata
    assert meta["photometric_interpretation"] == "MONOCHROME1"
    assert meta["body_part"] == body_part
    assert meta["patient"]["name"].startswith("Example^")
    assert meta["patient"]["id"].startswith("EXAMPLE-")
    assert meta["patient"]["birth_date"] == ""
    rendered = np.asarray(Image.open(png))
    assert rendered.dtype == np.uint8 and rendered.shape == xray.pixels.shape
    np.testing.assert_array_equal(rendered, np.rint(xray.pixels * 255).astype(np.uint8))
    png_xray = load_image(png)
    assert png_xray.metadata["format"] == "png"
    np.testing.assert_allclose(png_xray.pixels, xray.pixels, atol=0.5 / 255 + 1e-6)


def test_import_stays_light():
    code = (
        "import sys, xray_ai.images.load as m\n"
        "heavy = [n for n in ('tensorflow', 'keras', 'streamlit', 'pydicom') if n in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import io; from PIL import Image\n"
        "b = io.BytesIO(); Image.new('L', (4, 4)).save(b, 'PNG')\n"
        "m.load_image(b.getvalue())\n"
        "assert 'pydicom' not in sys.modules, 'PNG loading imported pydicom'\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
