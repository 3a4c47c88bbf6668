"""Dataset writers (MURA v1.1 and class-folder layouts), gallery, shortcut check, CLI.

Masks lie beside their images as ``<stem>_mask.png`` (uint8, 0 or 255). Every image
has one: for a normal image it exists and is all zero, so loaders need no special
case. Mask files never appear in the MURA image CSVs. A chest image also has its
anatomy outlines, ``<stem>_heart.png`` and ``<stem>_thorax.png``, and a row in the
dataset's ``measurements.csv``: its true cardiothoracic ratio (the generator's parameter)
and the two widths measured on those outlines.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from .files import MASK_SUFFIX, MEASUREMENTS_CSV, outline_path
from .generator import CONDITIONS, GENERATOR_VERSION, LABELS, MURA_PARTS, Phantom, check_condition, generate, views_for

MANIFEST = "phantoms.json"  # written at the dataset root

__all__ = ["MANIFEST", "write_image", "write_dataset", "make_gallery", "histogram_shortcut_auc", "add_cli_arguments", "run_cli"]

DEFAULT_SPLITS = (("train", 0.7), ("valid", 0.15), ("test", 0.15))


def _split_counts(count: int, splits) -> list[tuple[str, int]]:
    fr = np.array([f for _, f in splits], float)
    n = np.floor(fr / fr.sum() * count).astype(int)
    n[0] += count - n.sum()
    return [(name, int(k)) for (name, _), k in zip(splits, n)]


def write_image(path: Path, img: np.ndarray, bit_depth: int, fmt: str, meta: dict) -> Path:
    if fmt == "dicom":
        path = path.with_suffix(".dcm")
        _write_dicom(path, img, bit_depth, meta)
    else:
        path = path.with_suffix(".png")
        data = (np.round(img * 65535).astype(np.uint16) if bit_depth == 16 else np.round(img * 255).astype(np.uint8))
        cv2.imwrite(str(path), data)
    return path


def _write_dicom(path: Path, img: np.ndarray, bit_depth: int, meta: dict) -> None:
    """CR or DX, MONOCHROME1 or MONOCHROME2 (chosen by the seed), uncompressed little endian."""
    from pydicom.dataset import FileMetaDataset, Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    seed = meta["seed"]
    mono1, cr = seed % 2 == 1, seed % 3 != 0
    maxv = 65535 if bit_depth == 16 else 255
    stored = np.round((1 - img if mono1 else img) * maxv).astype(np.uint16 if bit_depth == 16 else np.uint8)
    fm = FileMetaDataset()
    sop_class = "1.2.840.10008.5.1.4.1.1.1" if cr else "1.2.840.10008.5.1.4.1.1.1.1"
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path), str(seed)])
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, fm.MediaStorageSOPInstanceUID
    ds.Modality = "CR" if cr else "DX"
    ds.PatientID, ds.PatientName = meta["patient"], "PHANTOM^SYNTHETIC"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[meta["study"]])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[meta["study"], "series"])
    ds.BodyPartExamined = meta["body_part"].upper()
    ds.ViewPosition = meta["view"][:16].upper()
    ds.ImageComments = f"synthetic phantom {GENERATOR_VERSION}; not a patient image"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.Rows, ds.Columns = img.shape
    ds.BitsAllocated = ds.BitsStored = 16 if bit_depth == 16 else 8
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    ds.WindowCenter, ds.WindowWidth = maxv / 2, maxv
    ds.PixelData = stored.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    cv2.imwrite(str(path), mask.astype(np.uint8) * 255)


_MEASUREMENT_COLUMNS = ("image", "split", "label", "ctr", "ctr_outlines", "cardiac_width_px", "thoracic_width_px")


def _write_outlines(image_stem: Path, ph: Phantom) -> tuple | None:
    """Write a chest phantom's outlines beside its image; its measurements.csv values
    (ctr, ctr measured on the outlines, the two widths), or None for other parts."""
    if not ph.outlines:
        return None
    from xray_ai.measurement.ctr import measure_ctr

    for name, outline in ph.outlines.items():
        _write_mask(outline_path(image_stem.with_suffix(".png"), name), outline)
    measured = measure_ctr(ph.outlines["heart"], ph.outlines["thorax"])
    if measured is None:  # posed out of the field: the truth stands, no widths to show
        return round(ph.ctr, 5), "", "", ""
    return (round(ph.ctr, 5), round(measured.ctr, 5), round(measured.cardiac_width_px, 1),
            round(measured.thoracic_width_px, 1))


def write_dataset(out_dir, condition: str, count: int, *, layout: str = "mura", seed: int = 0, size: int = 256,
                  bit_depth: int = 8, fmt: str = "png", splits=DEFAULT_SPLITS,
                  positive_fraction: float = 0.5) -> dict:
    """Write a labelled phantom dataset with masks beside the images.

    Layouts:
        ``folders``: ``out_dir/<split>/<negative|positive label>/<name>.png`` plus
        ``<name>_mask.png``; ``count`` images in all.
        ``mura``: ``out_dir/MURA-v1.1/<split>/XR_<PART>/patientNNNNN/studyN_{positive,negative}/imageN.png``
        with 1-3 views per study and ``<split>_image_paths.csv`` / ``<split>_labeled_studies.csv``
        written as MURA ships them (no header); ``count`` studies in all. MURA ships
        train and valid (its test set is hidden); a ``test`` split, written the same way,
        is this project's addition for a held-out evaluation; pass
        ``splits=(("train", .8), ("valid", .2))`` for MURA's two.

    Deterministic for a given ``seed``: image k of the dataset uses seed ``seed * 1_000_003 + k``.

    Returns:
        A summary dict: generator version, layout, counts per split and label, paths.
    """
    check_condition(condition)
    if layout not in ("mura", "folders"):
        raise ValueError(f"unknown layout {layout!r}; valid: mura, folders")
    if fmt not in ("png", "dicom"):
        raise ValueError(f"unknown format {fmt!r}; valid: png, dicom")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, not {bit_depth!r}")
    if layout == "mura" and condition not in ("msk_abnormality", "fracture"):
        raise ValueError(f"the MURA layout holds upper-extremity studies; {condition!r} needs layout='folders'")
    out = Path(out_dir)
    rng = np.random.default_rng([int(seed), 101])
    summary = {"generator_version": GENERATOR_VERSION, "condition": condition, "layout": layout,
               "seed": seed, "size": size, "bit_depth": bit_depth, "format": fmt, "splits": {},
               "masks": "beside each image as <stem>_mask.png; all zero for normal images"}
    measurements = []
    neg, pos = LABELS[condition]
    k = 0
    patient = 0
    for split, n in _split_counts(int(count), splits):
        stats = {neg: 0, pos: 0, "images": 0, "studies": 0}
        if layout == "folders":
            for lab in (neg, pos):
                (out / split / lab).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ab = bool(rng.random() < positive_fraction)
                s = int(seed) * 1_000_003 + k
                ph = generate(condition, abnormal=ab, seed=s, size=size)
                stem = out / split / (pos if ab else neg) / f"{condition}_{k:06d}"
                meta = {"seed": s, "patient": f"PH{s}", "study": f"{seed}-{k}", "body_part": ph.body_part,
                        "view": ph.view}
                write_image(stem, ph.image, bit_depth, fmt, meta)
                _write_mask(stem.with_name(stem.name + MASK_SUFFIX), ph.mask)
                truth = _write_outlines(stem, ph)
                if truth is not None:
                    image = stem.with_suffix(".dcm" if fmt == "dicom" else ".png").relative_to(out).as_posix()
                    measurements.append((image, split, pos if ab else neg) + truth)
                stats[pos if ab else neg] += 1
                stats["images"] += 1
                k += 1
        else:
            root = out / "MURA-v1.1"
            root.mkdir(parents=True, exist_ok=True)
            img_rows, study_rows = [], []
            for i in range(n):
                ab = bool(rng.random() < positive_fraction)
                part = MURA_PARTS[int(rng.integers(len(MURA_PARTS)))]
                patient += 1
                n_studies = 1 if rng.random() < 0.85 else 2  # some patients have two studies
                for st in range(1, n_studies + 1):
                    if st > 1:
                        ab = bool(rng.random() < positive_fraction)
                    s = int(seed) * 1_000_003 + k
                    k += 1
                    sdir = f"MURA-v1.1/{split}/XR_{part.upper()}/patient{patient:05d}/study{st}_{'positive' if ab else 'negative'}/"
                    (out / sdir).mkdir(parents=True, exist_ok=True)
                    vs = views_for(part)
                    nv = int(rng.integers(1, min(3, len(vs)) + 1))
                    for v in range(nv):
                        ph = generate(condition, abnormal=ab, seed=s, size=size, body_part=part, view=vs[v],
                                      view_index=v)
                        meta = {"seed": s + v, "patient": f"{patient:05d}", "study": sdir, "body_part": part,
                                "view": vs[v]}
                        p = write_image(out / sdir / f"image{v + 1}", ph.image, bit_depth, fmt, meta)
                        _write_mask(out / sdir / f"image{v + 1}{MASK_SUFFIX}", ph.mask)
                        img_rows.append(f"{sdir}{p.name}")
                    study_rows.append((sdir, int(ab)))
                    stats[pos if ab else neg] += 1
                    stats["images"] += nv
                    stats["studies"] += 1
            with open(root / f"{split}_image_paths.csv", "w", newline="") as f:
                f.writelines(r + "\n" for r in img_rows)
            with open(root / f"{split}_labeled_studies.csv", "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerows(study_rows)
        summary["splits"][split] = stats
    summary["images"] = sum(v["images"] for v in summary["splits"].values())
    if measurements:
        with open(out / MEASUREMENTS_CSV, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(_MEASUREMENT_COLUMNS)
            writer.writerows(measurements)
        summary["outlines"] = ("chest images: <stem>_heart.png (cardiac silhouette) and <stem>_thorax.png "
                               "(internal thorax) beside each image")
        summary["measurements"] = (f"{MEASUREMENTS_CSV}: each chest image's true cardiothoracic ratio (ctr, the "
                                   "generator's parameter) and the CTR and widths measured on its outlines")
    # The manifest lets training state honestly what the data is (registry `trained_on`).
    (out / MANIFEST).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def make_gallery(path, size: int = 160, seed: int = 0) -> np.ndarray:
    """A grid to look at: one row per condition (msk_abnormality per body part), columns
    normal, normal, subtle (0.2), moderate (0.55), obvious (0.95), the obvious case with
    its mask outlined in red. Writes an RGB PNG and returns it (H x W x 3 uint8, BGR)."""
    rows = [("msk_abnormality", p) for p in MURA_PARTS] + [("fracture", "forearm"), ("fracture", "hand")] + \
        [(c, None) for c in CONDITIONS[2:]]
    cols = [(False, None), (False, None), (True, 0.2), (True, 0.55), (True, 0.95), (True, 0.95)]
    head = np.zeros((22, size * len(cols) + 150, 3), np.uint8)
    for j, t in enumerate(["normal", "normal", "subtle .2", "moderate .55", "obvious .95", "obvious + mask"]):
        cv2.putText(head, t, (150 + j * size + 4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    out = [head]
    for r, (cond, part) in enumerate(rows):
        cells = [np.zeros((size, 150, 3), np.uint8)]
        cv2.putText(cells[0], cond, (4, size // 2 - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1)
        cv2.putText(cells[0], part or "", (4, size // 2 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (200, 200, 200), 1)
        for j, (ab, sev) in enumerate(cols):
            s = seed * 1000 + r * 10 + min(j, 4)
            ph = generate(cond, abnormal=ab, seed=s, size=size, body_part=part, severity=sev)
            cell = cv2.cvtColor(np.round(ph.image * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
            if j == 5:
                cs, _ = cv2.findContours(ph.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(cell, cs, -1, (0, 0, 255), 1)
            txt = f"{ph.view} {ph.finding or ''}"
            cv2.putText(cell, txt, (3, size - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 255), 1)
            cv2.rectangle(cell, (0, 0), (size - 1, size - 1), (60, 60, 60), 1)
            cells.append(cell)
        out.append(np.hstack(cells))
    grid = np.vstack(out)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    return grid


def histogram_shortcut_auc(condition: str, count: int = 200, seed: int = 0, size: int = 128) -> float:
    """Cross-validated AUC of a logistic regression on each image's 32-bin global histogram.

    Near 0.5 means the global intensity distribution does not give the label away.
    Half the images are abnormal; 5-fold stratified cross-validation.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    check_condition(condition)
    X, y = [], []
    for i in range(count):
        ab = i % 2 == 1
        ph = generate(condition, abnormal=ab, seed=int(seed) * 1_000_003 + i, size=size)
        h, _ = np.histogram(ph.image, bins=32, range=(0.0, 1.0))
        X.append(h / h.sum())
        y.append(int(ab))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    cvk = StratifiedKFold(n_splits=5, shuffle=True, random_state=int(seed))
    return float(np.mean(cross_val_score(clf, np.array(X), np.array(y), cv=cvk, scoring="roc_auc")))


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m xray_ai phantoms``."""
    parser.add_argument("--condition", help=f"one of: {', '.join(CONDITIONS)}")
    parser.add_argument("--count", type=int, help="images (folders) or studies (mura)")
    parser.add_argument("--out", help="output directory")
    parser.add_argument("--layout", choices=("mura", "folders"), default=None,
                        help="default: mura for msk_abnormality, folders otherwise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    parser.add_argument("--format", choices=("png", "dicom"), default="png")
    parser.add_argument("--gallery", metavar="OUT.png", help="write a gallery grid and exit")


def run_cli(args: argparse.Namespace) -> int:
    """Run the phantoms command; returns the exit status (2: bad arguments)."""
    if args.gallery:
        make_gallery(args.gallery, seed=args.seed)
        print(f"gallery written to {args.gallery} ({GENERATOR_VERSION})")
        return 0
    if args.condition not in CONDITIONS:
        print(f"phantoms: unknown condition {args.condition!r}; valid: {', '.join(CONDITIONS)}", file=sys.stderr)
        return 2
    if not args.out or not args.count or args.count < 1:
        print("phantoms: --out DIR and --count N (N >= 1) are required", file=sys.stderr)
        return 2
    layout = args.layout or ("mura" if args.condition == "msk_abnormality" else "folders")
    try:
        summary = write_dataset(args.out, args.condition, args.count, layout=layout, seed=args.seed,
                                size=args.size, bit_depth=args.bit_depth, fmt=args.format)
    except ValueError as e:
        print(f"phantoms: {e}", file=sys.stderr)
        return 2
    parts = ", ".join(f"{k}: {v['images']} images" for k, v in summary["splits"].items())
    print(f"wrote {summary['images']} synthetic images ({GENERATOR_VERSION}, {layout}) to {args.out}: {parts}")
    return 0
