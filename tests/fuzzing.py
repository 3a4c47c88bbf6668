"""Fuzzing `xray_ai.images.load_image`: seed files of every format, mutations, and the run loop.

Used by tests/test_fuzz_loader.py (a bounded run in CI) and runnable by hand for a longer
campaign::

    python tests/fuzzing.py --iterations 120000 --seed 1 --save-crashes tests/fuzz_regressions

The contract under test (issue 18): for any bytes, `load_image` returns an XRay whose
pixels are 2-D float32, finite and in [0, 1], or raises `ImageLoadError`. Anything else
(another exception type, a BaseException such as pyo3's PanicException, a bad array) is a
finding; its input is kept as a regression file under `tests/fuzz_regressions/`.

Two engines: atheris (coverage-guided libFuzzer, `run_atheris`, in a subprocess because
libFuzzer owns the process) where it is installed, else the seeded mutation loop
(`run_mutations`): byte flips, truncations, insertions, duplications and "interesting"
integers (0, 0xFF.., 0x7F..) written over header fields. Seeds are built at run time:
pydicom's own test files (every transfer syntax it ships, small ones), pydicom-data's
radiographs where installed (cut down to keep iterations fast), the repository's
examples/, and PNG/JPEG/TIFF/BMP/GIF/WebP files made here with Pillow.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import random
import sys
import time
import tracemalloc
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"

# pydicom test files used as seeds: one or more per transfer syntax, all small.
PYDICOM_SEEDS = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_padded.dcm",
    "MR_truncated.dcm", "image_dfl.dcm", "SC_rgb_small_odd.dcm", "SC_ybr_full_422_uncompressed.dcm",
    "SC_rgb_16bit.dcm", "SC_rgb_2frame.dcm", "rtdose_1frame.dcm", "liver_1frame.dcm", "meta_missing_tsyntax.dcm",
    "no_meta.dcm", "badVR.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm", "693_J2KI.dcm", "SC_rgb_gdcm_KY.dcm",
    "SC_rgb_small_odd_jpeg.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm", "JPEG-lossy.dcm",
    "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jls_lossy_line.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm", "MR_small_RLE.dcm",
    "rtdose_rle_1frame.dcm", "SC_rgb_rle_2frame.dcm",
)
MAX_SEED_BYTES = 64 * 1024

INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x00\x80",
               b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x80", b"\x00\x00\x00\x00")


# --------------------------------------------------------------------------- seeds


def _encode(image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def raster_seeds() -> dict[str, bytes]:
    """PNG (8/16-bit gray, RGB, RGBA, LA, palette, 1-bit), JPEG (gray, RGB, progressive, EXIF),
    TIFF (gray, 16-bit, float, two frames), BMP, GIF and WebP, each small."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = (np.add.outer(np.arange(48), np.arange(64)) * 2).astype(np.uint8)
    noise = rng.integers(0, 255, (48, 64), dtype=np.uint8)
    gray = Image.fromarray(np.maximum(ramp, noise // 4))
    rgb = Image.fromarray(np.stack([ramp, noise, 255 - ramp], -1))
    exif = Image.Exif()
    exif[0x0112] = 6
    two = [gray, Image.fromarray(255 - ramp)]
    tiff2 = io.BytesIO()
    two[0].save(tiff2, format="TIFF", save_all=True, append_images=two[1:])
    return {
        "gray8.png": _encode(gray, "PNG"),
        "gray16.png": _encode(Image.fromarray(ramp.astype(np.uint16) * 257), "PNG"),
        "rgb.png": _encode(rgb, "PNG"),
        "rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "la.png": _encode(gray.convert("LA"), "PNG"),
        "palette.png": _encode(rgb.convert("P"), "PNG"),
        "bilevel.png": _encode(gray.convert("1"), "PNG"),
        "gray.jpg": _encode(gray, "JPEG", quality=90),
        "rgb.jpg": _encode(rgb, "JPEG", quality=90),
        "progressive.jpg": _encode(rgb, "JPEG", quality=80, progressive=True),
        "exif.jpg": _encode(gray, "JPEG", exif=exif.tobytes()),
        "gray.tif": _encode(gray, "TIFF"),
        "gray16.tif": _encode(Image.fromarray(ramp.astype(np.uint16) * 257), "TIFF", compression="tiff_deflate"),
        "float.tif": _encode(Image.fromarray(ramp.astype(np.float32) / 255, "F"), "TIFF"),
        "two_frames.tif": tiff2.getvalue(),
        "gray.bmp": _encode(gray, "BMP"),
        "rgb.gif": _encode(rgb.convert("P"), "GIF"),
        "gray.webp": _encode(gray, "WEBP", lossless=True),
    }


def dicom_seeds() -> dict[str, bytes]:
    """pydicom's test files in PYDICOM_SEEDS, pydicom-data's radiographs and examples/*.dcm
    where present; a file above MAX_SEED_BYTES is re-encoded smaller (first rows only)."""
    import pydicom
    from pydicom.data import get_testdata_file

    seeds: dict[str, bytes] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PYDICOM_SEEDS:
            path = get_testdata_file(name)
            if path is not None and Path(path).stat().st_size <= MAX_SEED_BYTES:
                seeds[name] = Path(path).read_bytes()
        for name in ("RG3_UNCR.dcm", "RG1_UNCR.dcm"):
            path = get_testdata_file(name)  # pydicom-data's copy (installed by requirements-dev.txt)
            if path is not None:
                seeds[f"small_{name}"] = _shrunk_dicom(pydicom.dcmread(path))
        for path in sorted((REPO / "examples").glob("*.dcm")):
            seeds[f"examples_{path.name}"] = _shrunk_dicom(pydicom.dcmread(path))
    return seeds


def _shrunk_dicom(ds) -> bytes:
    """The dataset with its image cut to a 64 x 64 corner (uncompressed), so that a mutated
    copy loads in milliseconds; every other attribute (windows, MONOCHROME1, LUTs) kept."""
    from pydicom.uid import ExplicitVRLittleEndian

    arr = ds.pixel_array
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        arr = arr[0]
    step = max(1, arr.shape[0] // 64)
    small = np.ascontiguousarray(arr[::step, ::step][:64, :64])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = small.shape[:2]
    ds.NumberOfFrames = 1 if "NumberOfFrames" in ds else None
    if ds.NumberOfFrames is None:
        del ds.NumberOfFrames
    ds.PixelData = small.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def all_seeds() -> dict[str, bytes]:
    seeds = {**dicom_seeds(), **raster_seeds()}
    for path in sorted((REPO / "examples").glob("*.png")):
        from PIL import Image

        with Image.open(path) as im:
            im.thumbnail((96, 96))
            seeds[f"examples_{path.name}"] = _encode(im, "PNG")
    return seeds


# --------------------------------------------------------------------------- mutations


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits: flip bits, overwrite bytes, write an interesting integer,
    insert or delete a run, duplicate a block, or truncate."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 4))):
        if not buf:
            buf.extend(rng.randbytes(rng.randint(1, 16)))
            continue
        op = rng.randrange(8)
        pos = rng.randrange(len(buf))
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # header fields live near the start: bias there
            pos = min(pos, rng.randrange(min(len(buf), 2048)))
            value = rng.choice(INTERESTING)
            buf[pos:pos + len(value)] = value
        elif op == 3:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 64))
        elif op == 4:
            del buf[pos:pos + rng.randint(1, 64)]
        elif op == 5:
            n = rng.randint(1, 256)
            buf[pos:pos] = buf[rng.randrange(len(buf)):][:n]
        elif op == 6:
            del buf[rng.randint(0, len(buf)):]
        else:
            value = rng.randrange(1 << 16).to_bytes(2, rng.choice(("little", "big")))
            buf[pos:pos + 2] = value
    return bytes(buf)


# --------------------------------------------------------------------------- the check


@dataclass
class Finding:
    kind: str
    message: str
    data: bytes
    seed: str


@dataclass
class Report:
    iterations: int = 0
    seconds: float = 0.0
    refused: int = 0
    loaded: int = 0
    findings: list[Finding] = field(default_factory=list)
    by_type: collections.Counter = field(default_factory=collections.Counter)
    slowest: tuple[float, str, str] = (0.0, "", "")  # seconds, seed, outcome

    def summary(self) -> dict:
        return {
            "iterations": self.iterations, "seconds": round(self.seconds, 1), "refused": self.refused,
            "loaded": self.loaded, "uncaught_by_type": dict(self.by_type),
            "slowest_seconds": round(self.slowest[0], 3), "slowest_seed": self.slowest[1],
            "slowest_outcome": self.slowest[2],
        }


def check_one(data: bytes) -> tuple[str, str | None]:
    """('loaded' | 'refused', None), or (finding kind, message) when the contract is broken."""
    from xray_ai.images import ImageLoadError, load_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xray = load_image(data, "fuzz.dcm")  # .dcm: bare DICOM (no preamble) is tried too
    except ImageLoadError as exc:
        if not str(exc).startswith("fuzz.dcm: "):
            return "BadMessage", str(exc)[:200]
        return "refused", None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - counting exactly what escapes is the point
        return type(exc).__name__, f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:200]}"
    px = xray.pixels
    if not (isinstance(px, np.ndarray) and px.ndim == 2 and px.dtype == np.float32 and px.size > 0):
        return "BadArray", f"pixels {getattr(px, 'shape', None)} {getattr(px, 'dtype', None)}"
    if not np.isfinite(px).all() or px.min() < 0 or px.max() > 1:
        return "BadValues", f"min {np.nanmin(px)}, max {np.nanmax(px)}"
    return "loaded", None


def run_mutations(iterations: int, seed: int = 0, time_limit: float | None = None,
                  seeds: dict[str, bytes] | None = None) -> Report:
    """The seeded mutation loop: `iterations` mutated inputs (or until `time_limit` s)."""
    seeds = seeds or all_seeds()
    names = sorted(seeds)
    rng = random.Random(seed)
    report = Report()
    start = time.perf_counter()
    for i in range(iterations):
        name = names[i % len(names)]
        data = mutate(seeds[name], rng)
        t0 = time.perf_counter()
        outcome, message = check_one(data)
        took = time.perf_counter() - t0
        if took > report.slowest[0]:
            report.slowest = (took, name, outcome)
        report.iterations += 1
        if outcome == "refused":
            report.refused += 1
        elif outcome == "loaded":
            report.loaded += 1
        else:
            report.by_type[outcome] += 1
            report.findings.append(Finding(outcome, message or "", data, name))
        if time_limit is not None and time.perf_counter() - start > time_limit:
            break
    report.seconds = time.perf_counter() - start
    return report


def save_findings(report: Report, directory: Path, limit_per_type: int = 5) -> list[Path]:
    """Keep up to `limit_per_type` inputs of each finding type as regression files."""
    directory.mkdir(parents=True, exist_ok=True)
    kept: collections.Counter = collections.Counter()
    paths = []
    for f in report.findings:
        if kept[f.kind] >= limit_per_type:
            continue
        kept[f.kind] += 1
        digest = hashlib.sha256(f.data).hexdigest()[:12]
        path = directory / f"{f.kind}-{Path(f.seed).stem}-{digest}.bin"
        path.write_bytes(f.data)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- atheris


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def atheris_main(argv: list[str]) -> None:
    """libFuzzer's entry (`python tests/fuzzing.py atheris --summary FILE -- -runs=N CORPUS`).

    A broken contract does not stop the run: it is counted and its input written beside the
    summary, so one run reports every exception type it met. The summary JSON is rewritten
    every 250 inputs and at the end (libFuzzer exits without running Python's atexit).
    """
    import atheris

    summary_path = Path(argv[argv.index("--summary") + 1])
    crash_dir = summary_path.parent / "findings"
    libfuzzer_args = [argv[0], *argv[argv.index("--") + 1:]]
    state = {"iterations": 0, "refused": 0, "loaded": 0, "uncaught_by_type": {}, "slowest_seconds": 0.0,
             "peak_traced_mib": None}

    def write() -> None:
        summary_path.write_text(json.dumps(state))

    with atheris.instrument_imports(include=["xray_ai"]):
        import xray_ai.images.load  # noqa: F401

    def one(data: bytes) -> None:
        t0 = time.perf_counter()
        outcome, message = check_one(data)
        state["slowest_seconds"] = max(state["slowest_seconds"], round(time.perf_counter() - t0, 3))
        state["iterations"] += 1
        if outcome in ("refused", "loaded"):
            state[outcome] += 1
        else:
            state["uncaught_by_type"][outcome] = state["uncaught_by_type"].get(outcome, 0) + 1
            crash_dir.mkdir(parents=True, exist_ok=True)
            (crash_dir / f"{outcome}-{hashlib.sha256(data).hexdigest()[:12]}.bin").write_bytes(data)
        if state["iterations"] % 250 == 0:
            write()

    write()
    atheris.Setup(libfuzzer_args, one)
    try:
        atheris.Fuzz()
    finally:
        write()


def write_corpus(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in all_seeds().items():
        path = directory / name.replace("/", "_")
        path.write_bytes(data)
        paths.append(path)
    return paths


def run_atheris(iterations: int, work: Path, max_seconds: int = 110) -> dict:
    """A bounded atheris run in a subprocess over the seeds; returns its summary."""
    import subprocess

    corpus = work / "corpus"
    write_corpus(corpus)
    summary = work / "summary.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "atheris", "--summary", str(summary), "--",
           f"-runs={iterations}", f"-max_total_time={max_seconds}", "-max_len=70000", "-rss_limit_mb=4096",
           "-timeout=10", "-print_final_stats=1", str(corpus)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=max_seconds + 120, cwd=REPO)
    result = json.loads(summary.read_text()) if summary.exists() else {}
    result["returncode"] = done.returncode
    result["log_tail"] = (done.stdout + done.stderr)[-3000:]
    result["findings_dir"] = str(work / "findings")
    return result


def peak_memory_mib(data: bytes) -> tuple[float, str]:
    """Peak traced (Python + numpy) memory of one load, in MiB, and its outcome."""
    tracemalloc.start()
    try:
        outcome, message = check_one(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20, outcome if message is None else f"{outcome}: {message}"


def main(argv: list[str]) -> int:
    if argv and argv[0] == "atheris":
        atheris_main(argv)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None)
    parser.add_argument("--save-crashes", type=Path, default=None)
    args = parser.parse_args(argv)
    seeds = all_seeds()
    print(f"{len(seeds)} seeds", file=sys.stderr)
    report = run_mutations(args.iterations, args.seed, args.time_limit, seeds)
    print(json.dumps(report.summary(), indent=2))
    for f in report.findings[:40]:
        print(f"{f.kind:22} {f.seed:36} {f.message[:150]}", file=sys.stderr)
    if args.save_crashes:
        for path in save_findings(report, args.save_crashes):
            print("kept", path, file=sys.stderr)
    return 0 if not report.findings else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main(sys.argv[1:]))
