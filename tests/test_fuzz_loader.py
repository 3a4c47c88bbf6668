"""Fuzzing the image loader (issue 18): for any bytes, `load_image` gives a sane XRay or an
ImageLoadError, nothing else. Bounded for CI; the engines and seeds are in tests/fuzzing.py.

Budget: `XRAY_AI_FUZZ_ITERATIONS` (default 20,000) for each engine; atheris runs where it
is installed (requirements-dev.txt), the seeded mutation loop always. The figures of the
last run are written to test-artifacts/fuzz-summary.json.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

import fuzzing
from xray_ai.images import ImageLoadError, load_image

ITERATIONS = int(os.environ.get("XRAY_AI_FUZZ_ITERATIONS", "20000"))
# "No file takes more than about 2 s to refuse": the 2 s decode budget (images.budget) plus
# restarting the helper process it kills.
SLOWEST_S = 3.5
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


# Seeds that are refusals themselves: truncated, no Rows, a bad Number of Frames, no preamble nor meta, and JPEG
# Lossless / 12-bit JPEG without the GPL decoder (README, "Images").
REFUSED_SEEDS = {"MR_truncated.dcm", "badVR.dcm", "meta_missing_tsyntax.dcm", "no_meta.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG-lossy.dcm"}


@pytest.fixture(scope="module")
def seeds():
    return fuzzing.all_seeds()


def _record(key: str, value: dict) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "fuzz-summary.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")


def test_seeds_cover_every_supported_format(seeds):
    """Every format and DICOM transfer syntax the loader supports has a seed, and each seed
    itself loads (a seed that is refused would only fuzz the refusal)."""
    import pydicom

    syntaxes, formats = set(), set()
    for name, data in seeds.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                xray = load_image(data, name)
            except ImageLoadError as exc:  # the truncated seed and the JPEG Lossless one without a decoder
                assert name in REFUSED_SEEDS, exc
                continue
        formats.add(xray.metadata["format"])
        if xray.metadata["transfer_syntax"]:
            syntaxes.add(xray.metadata["transfer_syntax"])
    assert {"dicom", "png", "jpeg", "tiff", "bmp", "gif", "webp"} <= formats
    expected = {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian,
                pydicom.uid.ExplicitVRBigEndian, pydicom.uid.DeflatedExplicitVRLittleEndian,
                pydicom.uid.JPEG2000, pydicom.uid.JPEG2000Lossless, pydicom.uid.JPEGBaseline8Bit,
                pydicom.uid.JPEGLSLossless, pydicom.uid.JPEGLSNearLossless, pydicom.uid.RLELossless}
    assert {uid.name for uid in expected} <= syntaxes, sorted(syntaxes)


def test_mutation_loop_finds_nothing_but_refusals_and_sane_images(seeds):
    report = fuzzing.run_mutations(ITERATIONS, seed=2026, time_limit=100, seeds=seeds)
    _record("mutation_loop", report.summary())
    assert report.iterations >= min(ITERATIONS, 5000), report.summary()
    assert report.loaded > 0 and report.refused > 0  # both branches were exercised
    findings = [(f.kind, f.seed, f.message) for f in report.findings[:10]]
    assert not report.findings, findings
    assert report.slowest[0] < SLOWEST_S, report.summary()


@pytest.mark.skipif(not fuzzing.atheris_available(), reason="atheris is not installed")
def test_atheris_finds_nothing_but_refusals_and_sane_images(tmp_path):
    result = fuzzing.run_atheris(ITERATIONS, tmp_path, max_seconds=110)
    tail = result.pop("log_tail")
    _record("atheris", result)
    assert result["returncode"] == 0, tail
    assert result["iterations"] >= min(ITERATIONS, 5000) or "max_total_time" in tail, (result, tail)
    found = sorted(Path(result["findings_dir"]).glob("*")) if Path(result["findings_dir"]).exists() else []
    assert result["uncaught_by_type"] == {} and not found, (result, [p.name for p in found[:10]])
    assert result["slowest_seconds"] < SLOWEST_S, result


def test_the_checker_catches_what_escapes(monkeypatch):
    """The harness would see a broken contract: another exception, a BaseException, a bad array."""
    import numpy as np

    import xray_ai.images as images
    from xray_ai.images import XRay

    class PanicException(BaseException):
        pass

    for raised, kind in ((TypeError("boom"), "TypeError"), (PanicException("rust"), "PanicException")):
        monkeypatch.setattr(images, "load_image", lambda *a, _e=raised, **k: (_ for _ in ()).throw(_e))
        assert fuzzing.check_one(b"x")[0] == kind
    monkeypatch.setattr(images, "load_image", lambda *a, **k: XRay(np.full((2, 2), 2.0, np.float32)))
    assert fuzzing.check_one(b"x")[0] == "BadValues"
    monkeypatch.setattr(images, "load_image", lambda *a, **k: XRay(np.zeros((2, 2, 3), np.float32)))
    assert fuzzing.check_one(b"x")[0] == "BadArray"


REGRESSIONS = sorted(fuzzing.REGRESSIONS.glob("*.bin"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_kept_crashing_inputs_are_refused_cleanly(path):
    """Inputs that once escaped as another exception type (the file name says which) are
    now an ImageLoadError naming the file, or a sane image."""
    outcome, message = fuzzing.check_one(path.read_bytes())
    assert outcome in ("refused", "loaded"), (path.name, outcome, message)


def test_there_are_regression_files():
    kinds = {p.name.split("-")[0] for p in REGRESSIONS}
    assert {"TypeError", "PanicException"} <= kinds, kinds
