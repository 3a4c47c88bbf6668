"""Dataset readers: a MURA v1.1 layout or class folders on disk -> one DataFrame row per image.

Readers return the columns of `COLUMNS`:

    path        absolute path of the image (str)
    label       0 (negative) or 1 (positive), int
    split       'train', 'valid', 'test' (or 'all' for a folder dataset without splits)
    study_id    the study the image belongs to (MURA: the study folder, relative to the
                dataset root, as the CSVs write it without the trailing slash)
    patient_id  'patientNNNNN' where the path has such an element, else the image stem
    body_part   lowercase MURA part ('wrist', ...) from the `XR_<PART>` folder, or None
    mask_path   `<stem>_mask.png` beside the image if it exists (phantom lesion masks), or None

Splitting by patient, class balance: `xray_ai.training.splits`; the tf.data pipeline that
reads the images: `xray_ai.training.pipeline`. No TensorFlow here.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from xray_ai.phantoms.files import MASK_SUFFIX, is_side_file

__all__ = [
    "COLUMNS",
    "IMAGE_SUFFIXES",
    "MURA_SPLITS",
    "MASK_SUFFIX",
    "LAYOUTS",
    "read_mura",
    "read_folders",
    "read_dataset",
]

COLUMNS = ("path", "label", "split", "study_id", "patient_id", "body_part", "mask_path")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
MURA_SPLITS = ("train", "valid", "test")  # MURA ships train and valid; test is ours
LAYOUTS = ("mura", "folders")
_PATIENT = re.compile(r"^patient\d+$")
_STUDY_LABEL = re.compile(r"_(positive|negative)$")


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in COLUMNS})
    df["label"] = df["label"].astype("int64")
    return df


def _mask_for(image: Path) -> str | None:
    mask = image.with_name(image.stem + MASK_SUFFIX)
    return str(mask) if mask.is_file() else None


def _mura_base(root: Path) -> Path:
    if not root.is_dir():
        raise ValueError(f"{root}: MURA root not found or not a directory")
    if (root / "MURA-v1.1").is_dir():
        return root / "MURA-v1.1"
    if any((root / f"{s}_image_paths.csv").is_file() for s in MURA_SPLITS):
        return root
    raise ValueError(
        f"{root}: not a MURA v1.1 dataset: expected {root / 'MURA-v1.1'}/ or {root / 'train_image_paths.csv'}"
    )


def _mura_path(base: Path, entry: str) -> Path:
    """A CSV path ('MURA-v1.1/train/XR_WRIST/...') -> a path under `base`, however the folder is named."""
    parts = PurePosixPath(entry).parts
    if parts and (parts[0] == base.name or parts[0].lower().startswith("mura")):
        parts = parts[1:]
    return base.joinpath(*parts)


def _read_csv(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise ValueError(f"{path}: MURA CSV not found")
    with path.open(newline="", encoding="utf-8") as fh:
        return [row for row in csv.reader(fh) if row and row[0].strip()]


def _read_mura_split(base: Path, split: str, check_files: bool) -> list[dict[str, Any]]:
    studies_csv = base / f"{split}_labeled_studies.csv"
    labels: dict[str, int] = {}
    for row in _read_csv(studies_csv):
        study = row[0].strip().rstrip("/")
        try:
            label = int(row[1])
        except (IndexError, ValueError):
            raise ValueError(f"{studies_csv}: study {study!r} has no 0/1 label: {row!r}") from None
        if label not in (0, 1):
            raise ValueError(f"{studies_csv}: study {study!r} has label {label}, expected 0 or 1")
        if labels.get(study, label) != label:
            raise ValueError(f"{studies_csv}: study {study!r} is listed with both labels")
        suffix = _STUDY_LABEL.search(study)
        if suffix and int(suffix.group(1) == "positive") != label:
            raise ValueError(
                f"{studies_csv}: study {study!r} is labelled {label} but its folder says {suffix.group(1)}"
            )
        labels[study] = label
    rows, missing, seen = [], [], set()
    images_csv = base / f"{split}_image_paths.csv"
    for row in _read_csv(images_csv):
        entry = row[0].strip()
        study = str(PurePosixPath(entry).parent)
        if study not in labels:
            raise ValueError(f"{images_csv}: image {entry!r} belongs to study {study!r}, "
                             f"which {studies_csv.name} does not label")
        path = _mura_path(base, entry)
        if check_files and not path.is_file():
            missing.append(str(path))
            continue
        parts = PurePosixPath(entry).parts
        patient = next((p for p in parts if _PATIENT.match(p)), PurePosixPath(study).parent.name)
        part = next((p[3:].lower() for p in parts if p.upper().startswith("XR_")), None)
        seen.add(study)
        rows.append({"path": str(path.resolve()), "label": labels[study], "split": split, "study_id": study,
                     "patient_id": patient, "body_part": part, "mask_path": _mask_for(path)})
    if missing:
        raise ValueError(f"{images_csv}: {len(missing)} listed image(s) not found, e.g. {missing[0]}")
    empty = sorted(set(labels) - seen)
    if empty:
        warnings.warn(f"{studies_csv}: {len(empty)} labelled stud(ies) have no images, e.g. {empty[0]}",
                      stacklevel=3)
    return rows


def read_mura(root: str | Path, splits: Sequence[str] | None = None, *, check_files: bool = True) -> pd.DataFrame:
    """Read a MURA v1.1 dataset (Rajpurkar et al., 2017) into one row per image.

    Args:
        root: the folder that contains `MURA-v1.1/`, or that folder itself (renamed is fine:
            the CSVs' leading `MURA-v1.1/` is mapped onto it).
        splits: which splits to read; default every one of `MURA_SPLITS` whose
            `{split}_image_paths.csv` exists (MURA ships train and valid; phantoms add test).
        check_files: refuse the dataset when a listed image is missing on disk.

    Returns:
        DataFrame with `COLUMNS`, in CSV order. The label is the study's label from
        `{split}_labeled_studies.csv`; study_id is the study folder as the CSV writes it
        (without the trailing slash); patient_id the `patientNNNNN` element.

    Raises:
        ValueError: the root is not a MURA dataset, a CSV or a listed image is missing, a
            study's CSV label disagrees with its folder suffix (`_positive`/`_negative`),
            or an image's study has no label. The message names the file or study.
    """
    base = _mura_base(Path(root).expanduser())
    if splits is None:
        splits = [s for s in MURA_SPLITS if (base / f"{s}_image_paths.csv").is_file()]
        if not splits:
            raise ValueError(f"{base}: no {{train,valid,test}}_image_paths.csv found")
    rows = []
    for split in splits:
        rows.extend(_read_mura_split(base, split, check_files))
    if not rows:
        raise ValueError(f"{base}: no images listed in the MURA CSVs for splits {list(splits)}")
    return _frame(rows)


def read_folders(root: str | Path, negative_label: str, positive_label: str,
                 splits: Sequence[str] = ("train", "valid", "test")) -> pd.DataFrame:
    """Read a class-folder dataset: `root/<split>/<label>/**/*.{png,jpg,jpeg,dcm}`.

    A root with none of `splits` as subfolders is read as `root/<label>/...` with
    split 'all' (re-split it with `splits.split_by_patient`). `*_mask.png` files are masks (and `*_heart.png`, `*_thorax.png` outlines),
    not images. Images are found recursively below each class folder, sorted by path.

    patient_id and study_id are the image stem, unless the path below the split holds a
    `patientNNNNN` element: then patient_id is that element and study_id the image's
    folder below it (or the stem when the image lies directly in the patient folder).
    Stems that occur more than once (e.g. '1.jpg' in two folders) would wrongly join
    distinct images into one patient, so those get the path below the root, without
    suffix, and a warning.

    Raises:
        ValueError: the root is missing, or holds neither class folder, or no images.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"{root}: dataset folder not found or not a directory")
    present = [s for s in splits if (root / s).is_dir()]
    layout = [(s, root / s) for s in present] or [("all", root)]
    rows: list[dict[str, Any]] = []
    absent = []
    for split, sdir in layout:
        for label, name in ((0, negative_label), (1, positive_label)):
            cdir = _class_folder(sdir, name)
            if cdir is None:
                absent.append(sdir / name)
                continue
            for path in sorted(cdir.rglob("*")):
                low = path.name.lower()
                if not path.is_file() or is_side_file(low) or path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                rel = path.relative_to(cdir).parts
                patient = next((p for p in rel[:-1] if _PATIENT.match(p)), None)
                if patient is None:
                    study = path.stem
                else:
                    below = rel[rel.index(patient):-1]
                    study = "/".join(below) if len(below) > 1 else f"{patient}/{path.stem}"
                rows.append({"path": str(path), "label": label, "split": split, "study_id": study,
                             "patient_id": patient or path.stem, "body_part": _folder_part(rel),
                             "mask_path": _mask_for(path), "_rel": path.relative_to(root).with_suffix("")})
    if not rows:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ValueError(f"{root}: no images in class folders {negative_label!r}/{positive_label!r} "
                         f"(splits tried: {list(splits)}; subfolders found: {found})")
    if absent:
        warnings.warn(f"{root}: class folder(s) missing: {', '.join(str(a) for a in absent)}", stacklevel=2)
    stems = pd.Series([r["patient_id"] for r in rows])
    dup = set(stems[stems.duplicated(keep=False)])
    clashes = [r for r in rows if r["patient_id"] in dup and not _PATIENT.match(r["patient_id"])]
    if clashes:
        warnings.warn(f"{root}: {len(clashes)} images share a file stem with another image; their "
                      "patient_id/study_id is the path below the root instead", stacklevel=2)
        for r in clashes:
            r["patient_id"] = r["study_id"] = r["_rel"].as_posix()
    return _frame(rows)


def _class_folder(split_dir: Path, label: str) -> Path | None:
    """The folder of one class: named as the label, or the same up to case and with '_' or
    '-' for spaces ('no fracture' -> 'no_fracture', 'NORMAL' -> 'normal'), as public sets
    and file systems spell them."""
    exact = split_dir / label
    if exact.is_dir():
        return exact

    def key(name: str) -> str:
        return re.sub(r"[\s_-]+", "_", name.lower())

    wanted = key(label.strip())
    matches = [d for d in sorted(split_dir.iterdir()) if d.is_dir() and key(d.name) == wanted]
    if len(matches) > 1:
        raise ValueError(f"{split_dir}: folders {[d.name for d in matches]} all match the label {label!r}")
    return matches[0] if matches else None


def _folder_part(rel: tuple[str, ...]) -> str | None:
    return next((p[3:].lower() for p in rel[:-1] if p.upper().startswith("XR_")), None)


def read_dataset(layout: str, root: str | Path, negative_label: str, positive_label: str) -> pd.DataFrame:
    """Read a dataset in either layout (`--layout`): `read_mura`, or `read_folders` with the
    condition's two labels as the class-folder names.

    Raises:
        ValueError: an unknown layout, or what the reader raises.
    """
    if layout == "mura":
        return read_mura(root)
    if layout == "folders":
        return read_folders(root, negative_label, positive_label)
    raise ValueError(f"--layout must be mura or folders, got {layout!r}")
