"""What predict-batch reads: a folder or a CSV -> the studies to score, each a list of files.

Grouping (README, "Batch analysis"):

- A **folder** is walked recursively (hidden entries and phantom masks and outlines `*_mask.png`, `*_heart.png`, `*_thorax.png` skipped,
  paths sorted). DICOM files (`.dcm`, `.dicom`, or no suffix with the `DICM` marker) are
  grouped by their StudyInstanceUID, read from the header alone, wherever they lie; a DICOM
  file whose header cannot be read, or that has no StudyInstanceUID, is a study of its own
  (so it becomes an error row, or a one-view result, without spoiling its neighbours).
  PNG and JPEG files are grouped by the folder that holds them: a study is a folder, its
  id the folder's path below INPUT (INPUT's own name for the files directly in it).
- A **MURA** root (`MURA-v1.1/` inside, or `{train,valid,test}_image_paths.csv` in it) is
  read from its image-path CSVs: a study is the folder the CSV names, and its id is
  written as MURA's own CSVs write it (`MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive`),
  so rows join with `valid_labeled_studies.csv`. The labels are not needed (nor read).
- A **CSV** lists one file per line with a study column: the file in the first of
  `path`, `file`, `filename`, `image`, `image_path`; the study in the first of `study`,
  `study_id`, `study_uid`, `studyinstanceuid` (header names matched case-insensitively).
  Relative paths are relative to the CSV's folder; studies keep the order of their first line.

Nothing is decoded here: a bad file is found when its study is scored. Standard library
and pydicom only.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from xray_ai.phantoms.files import is_side_file

__all__ = ["Study", "BatchInputError", "find_studies", "RASTER_SUFFIXES", "DICOM_SUFFIXES"]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
MURA_SPLITS = ("train", "valid", "test")
_FILE_COLUMNS = ("path", "file", "filename", "image", "image_path")
_STUDY_COLUMNS = ("study", "study_id", "study_uid", "studyinstanceuid")


class BatchInputError(ValueError):
    """The job cannot run as given: INPUT cannot be read as a list of studies (missing, empty,
    a CSV without its columns), or an option needs what is not installed (--engine ray
    without Ray, --dicom-out without the DICOM writer)."""


@dataclass(frozen=True)
class Study:
    """One study to score.

    Attributes:
        study_id: its key in the output (StudyInstanceUID, folder below INPUT, MURA study, CSV value).
        files: the paths of its views, in view order (str, as the OS opens them: INPUT
            joined with the file's path below it). The views' `file` in the result and the
            error messages name these, as `predict` names the paths it is given.
        names: the same files as the row's `files` lists them: relative to INPUT (or as the
            CSV writes them).
    """

    study_id: str
    files: tuple[str, ...]
    names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"study_id": self.study_id, "files": list(self.files), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Study:
        return cls(str(data["study_id"]), tuple(data["files"]), tuple(data["names"]))


def find_studies(source: str | Path) -> list[Study]:
    """The studies in a folder, a MURA root or a CSV (module docstring), in a stable order.

    Raises:
        BatchInputError: the source is missing, holds no image, or is a CSV without a file
            or study column.
    """
    source = Path(source).expanduser()
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise BatchInputError(f"{source}: INPUT must be a folder or a CSV listing files with a study column")
        studies = _from_csv(source)
    elif source.is_dir():
        mura = _mura_base(source)
        studies = _from_mura(source, mura) if mura is not None else _from_folder(source)
    else:
        raise BatchInputError(f"{source}: no such file or folder")
    if not studies:
        raise BatchInputError(f"{source}: no PNG, JPEG or DICOM files found")
    return studies


def _group(items: Iterable[tuple[str, str, str]]) -> list[Study]:
    """(study id, path, name) triples -> studies, in the order each study first appears."""
    grouped: dict[str, list[tuple[str, str]]] = {}
    for study_id, path, name in items:
        grouped.setdefault(study_id, []).append((path, name))
    return [Study(sid, tuple(p for p, _ in files), tuple(n for _, n in files)) for sid, files in grouped.items()]


# ---------------------------------------------------------------------------- folders


def _walk(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder, f) for f in sorted(files) if not f.startswith("."))
    return found


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:  # DICOM Part 10: a 128-byte preamble, then "DICM"
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _study_uid(path: Path) -> str | None:
    """The StudyInstanceUID from the header alone (no pixel data read); None if unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:  # pydicom raises many types for a damaged header; the decode names the reason later
        return None
    return uid or None


def _from_folder(root: Path) -> list[Study]:
    items = []
    for path in _walk(root):
        name = path.relative_to(root).as_posix()
        lower = path.name.lower()
        if is_side_file(lower):  # a phantom's mask or outline beside its image
            continue
        if path.suffix.lower() in RASTER_SUFFIXES:
            folder = path.parent.relative_to(root).as_posix()
            items.append((root.resolve().name if folder == "." else folder, str(path), name))
        elif _is_dicom(path):
            items.append((_study_uid(path) or name, str(path), name))
    return _group(items)


# ---------------------------------------------------------------------------- MURA


def _mura_base(root: Path) -> Path | None:
    """The folder holding MURA's image-path CSVs, or None when `root` is not a MURA root."""
    for base in (root / "MURA-v1.1", root):
        if any((base / f"{split}_image_paths.csv").is_file() for split in MURA_SPLITS):
            return base
    return None


def _from_mura(root: Path, base: Path) -> list[Study]:
    items = []
    for split in MURA_SPLITS:
        listing = base / f"{split}_image_paths.csv"
        if not listing.is_file():
            continue
        with listing.open(newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if not row or not row[0].strip():
                    continue
                entry = PurePosixPath(row[0].strip())
                parts = entry.parts
                # the CSVs write 'MURA-v1.1/train/...'; the folder may have been renamed
                if parts and (parts[0] == base.name or parts[0].lower().startswith("mura")):
                    parts = parts[1:]
                items.append((str(entry.parent), str(base.joinpath(*parts)), str(entry)))
    return _group(items)


# ---------------------------------------------------------------------------- CSV


def _from_csv(path: Path) -> list[Study]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
        file_col = next((header[c] for c in _FILE_COLUMNS if c in header), None)
        study_col = next((header[c] for c in _STUDY_COLUMNS if c in header), None)
        if file_col is None or study_col is None:
            raise BatchInputError(
                f"{path}: expected a file column ({', '.join(_FILE_COLUMNS)}) and a study column "
                f"({', '.join(_STUDY_COLUMNS)}); the header has {sorted(h for h in header if h)}"
            )
        items = []
        for line, row in enumerate(reader, start=2):
            name, study = (row.get(file_col) or "").strip(), (row.get(study_col) or "").strip()
            if not name and not study:
                continue  # a blank line
            if not name or not study:
                raise BatchInputError(f"{path}, line {line}: a file and a study are both needed")
            file = Path(name).expanduser()
            items.append((study, str(file if file.is_absolute() else path.parent / file), name))
    return _group(items)
