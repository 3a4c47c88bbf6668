"""Derive the example radiographs in this folder from pydicom-data (reproducible).

    python examples/make_examples.py            # (re)write the four files
    python examples/make_examples.py --check    # verify the files here match a fresh build

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
"""

from __future__ import annotations

import argparse
import io
import sys
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

TARGET = 512
EXAMPLES = {
    # output stem: (pydicom-data file, patient name, patient id, what it shows)
    "rg3_tibia": ("RG3_UNCR.dcm", "Example^Tibia", "EXAMPLE-RG3",
                  "CR, distal tibia AP, non-ossifying fibroma"),
    "rg1_chest": ("RG1_UNCR.dcm", "Example^Chest", "EXAMPLE-RG1",
                  "CR, chest PA"),
}
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


def build() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for stem, (source, patient_name, patient_id, shows) in EXAMPLES.items():
        dicom = derive_dicom(source, patient_name, patient_id, shows)
        files[f"{stem}.dcm"] = dicom
        files[f"{stem}.png"] = render_png(dicom, f"{stem}.dcm")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files in examples/ instead of writing")
    args = parser.parse_args(argv)
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
