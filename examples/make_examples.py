"""Make the examples in this folder: real radiographs from pydicom-data, synthetic phantoms (reproducible).

    python examples/make_examples.py            # (re)write every file and examples.json
    python examples/make_examples.py --check    # verify the files here match a fresh build
    python examples/make_examples.py --verify   # analyse each phantom with its condition's active model

For each source (pydicom-data's RG3_UNCR.dcm, RG1_UNCR.dcm; MIT licence, originally
NEMA WG04 compressed-image samples) it writes:

* NAME.dcm: the stored pixel values downsampled with area averaging so that the longer
  side is 512 px. Averaging keeps the values in their original domain, so Bits Stored,
  the Photometric Interpretation (MONOCHROME1), the Window Center/Width and the (absent)
  modality rescale stay valid unchanged; an implausible Pixel Spacing (RG1 stores 0\\0)
  is dropped, a real one is scaled. Patient name and ID are replaced, the birth date and
  other IDs removed, and new, deterministic UIDs are issued.
* NAME.png: that DICOM rendered through `xray_ai.load_image` (modality LUT, window,
  MONOCHROME1 inversion), 8-bit gray, bone bright.

For each entry of PHANTOMS it writes phantom_<condition>_<kind>.dcm: a synthetic radiograph
drawn by the project's own generator (`xray_ai.phantoms.generate`, fixed seed, 224 px: the
shipped models' input and the size they were trained at) and written as 8-bit DICOM by the
phantoms' DICOM writer (CR or DX; BodyPartExamined, the view and "synthetic phantom ... not a
patient image" in its tags). Every phantom is one the shipped models may read (in scope: a
projection radiograph of the condition's body part, like their training images);
`--verify` and tests/test_examples.py check that.

examples.json lists every example with the condition it is for (null: any) and the label
the Analyse page shows; the page offers a condition's phantoms first, then the real
radiographs, which are out of scope for the synthetic-data models.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing the package

from xray_ai.images import load_image  # noqa: E402
from xray_ai.phantoms import GENERATOR_VERSION, generate  # noqa: E402
from xray_ai.phantoms.writers import write_image  # noqa: E402  (the phantoms' PNG/DICOM writer)

TARGET = 512
EXAMPLES = {
    # output stem: (pydicom-data file, patient name, patient id, what it shows)
    "rg3_tibia": ("RG3_UNCR.dcm", "Example^Tibia", "EXAMPLE-RG3",
                  "CR, distal tibia AP, non-ossifying fibroma"),
    "rg1_chest": ("RG1_UNCR.dcm", "Example^Chest", "EXAMPLE-RG1",
                  "CR, chest PA"),
}
PHANTOM_SIZE = 224
# output stem: (condition, abnormal, seed, body part or None for the condition's one part).
# The seeds were picked once (2026-12-01) among a few for phantoms the shipped models read
# as drawn, well inside their input checks; the abnormal one is each condition's default.
PHANTOMS = {
    "phantom_msk_abnormality_abnormal": ("msk_abnormality", True, 20262, "wrist"),
    "phantom_msk_abnormality_normal": ("msk_abnormality", False, 20263, "wrist"),
    "phantom_fracture_abnormal": ("fracture", True, 20262, "wrist"),
    "phantom_fracture_subtle": ("fracture", True, 20263, "wrist"),
    "phantom_fracture_normal": ("fracture", False, 20265, "wrist"),
    "phantom_osteoporosis_abnormal": ("osteoporosis", True, 20262, None),
    "phantom_osteoporosis_normal": ("osteoporosis", False, 20263, None),
    "phantom_arthritis_abnormal": ("arthritis", True, 20262, None),
    "phantom_arthritis_normal": ("arthritis", False, 20262, None),
    "phantom_pneumonia_abnormal": ("pneumonia", True, 20261, None),
    "phantom_pneumonia_normal": ("pneumonia", False, 20261, None),
    "phantom_cardiomegaly_abnormal": ("cardiomegaly", True, 20262, None),
    "phantom_cardiomegaly_normal": ("cardiomegaly", False, 20261, None),
}
REAL_LABEL = "real radiograph: out of scope for the synthetic-data models"
MANIFEST = "examples.json"
# Attributes that identify a person, a device or a site; removed from the derived files.
REMOVE = (
    "PatientBirthDate", "OtherPatientIDs", "ReferringPhysicianName", "InstitutionName",
    "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "AccessionNumber",
    "InstanceCreatorUID", "StudyID", "DataSetTrailingPadding",
)


def derive_dicom(source_name: str, patient_name: str, patient_id: str, shows: str) -> bytes:
    """Downsample and de-identify one pydicom-data file; returns the new DICOM file's bytes."""
    path = get_testdata_file(source_name)
    if path is None:
        raise SystemExit(f"{source_name} not found: pip install pydicom-data")
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float32)
    rows, cols = stored.shape
    scale = TARGET / max(rows, cols)
    new_rows, new_cols = round(rows * scale), round(cols * scale)
    small = cv2.resize(stored, (new_cols, new_rows), interpolation=cv2.INTER_AREA)
    small = np.clip(np.rint(small), 0, 2 ** int(ds.BitsStored) - 1).astype(np.uint16)

    for keyword in REMOVE:
        if keyword in ds:
            delattr(ds, keyword)
    spacing = ds.get("PixelSpacing")
    if spacing is not None:
        if min(float(v) for v in spacing) > 0:
            ds.PixelSpacing = [f"{float(v) * rows / new_rows:.6g}" for v in spacing]
        else:
            del ds.PixelSpacing  # 0\0 is not a spacing
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "xray_ai make_examples.py: name/ID replaced, IDs removed"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = (
        f"{source_name} (pydicom-data, NEMA WG04 sample) downsampled from {rows}x{cols} "
        f"to {new_rows}x{new_cols} by area averaging"
    )
    ds.ImageComments = f"xray_ai example ({shows}); de-identified sample, not a clinical case"

    # Deterministic UIDs: the same source always gives the same example.
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid(entropy_srcs=["xray_ai example", keyword, str(ds[keyword].value)]))
    meta = FileMetaDataset()  # fresh: the source's names the tool that wrote it
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta

    ds.Rows, ds.Columns = new_rows, new_cols
    ds.PixelData = small.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def render_png(dicom_bytes: bytes, name: str) -> bytes:
    """The DICOM through xray_ai's own pipeline, as an 8-bit bone-bright PNG."""
    xray = load_image(dicom_bytes, filename=name)
    gray = np.rint(xray.pixels * 255.0).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(gray, mode="L").save(out, format="PNG", optimize=True)
    return out.getvalue()


def make_phantom(stem: str) -> tuple[bytes, dict]:
    """One phantom as DICOM bytes, and its examples.json entry."""
    condition, abnormal, seed, part = PHANTOMS[stem]
    phantom = generate(condition, abnormal=abnormal, seed=seed, size=PHANTOM_SIZE, body_part=part)
    meta = {"seed": seed, "patient": f"PHANTOM-{seed}", "study": stem, "body_part": phantom.body_part,
            "view": phantom.view}
    # The writer derives the UIDs from the path it is given: a bare name keeps them the same
    # wherever the checkout lives.
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        path = write_image(Path(stem), phantom.image, 8, "dicom", meta)
        data = path.read_bytes()
    what = f"abnormal ({phantom.finding.replace('_', ' ')}, severity {phantom.severity:.2f})" if abnormal else "normal"
    entry = {
        "file": path.name, "condition": condition, "kind": "phantom",
        "label": f"synthetic phantom: {phantom.body_part} {phantom.view}, {what}",
        "abnormal": abnormal, "seed": seed, "size": PHANTOM_SIZE, "body_part": phantom.body_part,
        "view": phantom.view, "finding": phantom.finding, "severity": round(phantom.severity, 3),
        "generator": GENERATOR_VERSION,
    }
    return data, entry


def build() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    entries = []
    for stem in PHANTOMS:
        data, entry = make_phantom(stem)
        files[entry["file"]] = data
        entries.append(entry)
    for stem, (source, patient_name, patient_id, shows) in EXAMPLES.items():
        dicom = derive_dicom(source, patient_name, patient_id, shows)
        files[f"{stem}.dcm"] = dicom
        files[f"{stem}.png"] = render_png(dicom, f"{stem}.dcm")
        entries.append({"file": f"{stem}.dcm", "condition": None, "kind": "real",
                        "label": f"{REAL_LABEL} ({shows})", "source": f"pydicom-data {source}"})
    manifest = {
        "about": "The Analyse page's examples (examples/README.md). condition: the condition a phantom "
                 "was drawn for; null: offered for every condition. Written by make_examples.py.",
        "examples": entries,
    }
    files[MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode()
    return files


def verify() -> int:
    """Analyse every phantom with its condition's active model: each must be in scope (input
    check not flagged, body part right) and read as drawn. Returns the number that are not."""
    from xray_ai import ModelManager, analyze

    manager, bad = ModelManager(), 0
    for stem in PHANTOMS:
        data, entry = make_phantom(stem)
        result = analyze(load_image(data, filename=entry["file"]), entry["condition"], manager=manager)
        view = result.views[0]
        expected = result.positive_label if entry["abnormal"] else result.negative_label
        ok = result.assessable and not view.unlike_training_data
        bad += not ok
        print(f"{entry['file']}: {'in scope' if ok else 'OUT OF SCOPE'}; {result.decision} "
              f"({result.probability:.3f}; drawn {expected}); mark {result.finding_level(view)}"
              + "".join(f"\n  {r}" for r in view.scope_reasons))
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files in examples/ instead of writing")
    parser.add_argument("--verify", action="store_true", help="analyse each phantom with its condition's active model")
    args = parser.parse_args(argv)
    if args.verify:
        return 1 if verify() else 0
    files = build()
    if args.check:
        stale = [n for n, data in files.items() if not (HERE / n).is_file() or (HERE / n).read_bytes() != data]
        for n in stale:
            print(f"differs from a fresh build: examples/{n}", file=sys.stderr)
        return 1 if stale else 0
    for n, data in files.items():
        (HERE / n).write_bytes(data)
        print(f"wrote examples/{n} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
