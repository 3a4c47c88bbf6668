"""Splits and class balance: the patient-level split, the leakage check, the train / valid /
test frames of a run and their digest, class weights, oversampling, body-part targets.

Works on the frames `xray_ai.training.datasets` reads (numpy and pandas only).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "RUN_SPLITS",
    "split_by_patient",
    "assert_no_patient_leakage",
    "split_dataset",
    "split_digest",
    "class_weights",
    "body_part_targets",
    "oversample_minority",
]

RUN_SPLITS = ("train", "valid", "test")


def split_by_patient(df: pd.DataFrame, valid_fraction: float, seed: int,
                     test_fraction: float = 0.0) -> pd.DataFrame:
    """Re-split rows so that every patient's images land in one split.

    Patients are stratified by label (a patient is positive if any of their images is),
    shuffled with `seed` within each stratum (after sorting by id, so the result does not
    depend on row order), and taken in that order into test, then valid, while adding the
    patient brings the split closer to its fraction of the stratum's *images*; the rest go
    to train. Deterministic for a given df and seed. Tiny strata may leave a
    split without one class; that is warned about, not hidden.

    Typical use: MURA ships train and valid only, so keep its valid as the test set and
    re-split its train: `split_by_patient(df[df.split == 'train'], 0.1, seed)`.

    Returns:
        A copy of df (same index and order) with `split` reassigned and the previous split
        kept in `source_split`.
    """
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(f"valid_fraction + test_fraction must be below 1, got {valid_fraction + test_fraction}")
    if df.empty:
        raise ValueError("cannot split an empty DataFrame")
    patients = df.groupby("patient_id", sort=True).agg(n=("label", "size"), label=("label", "max"))
    rng = np.random.default_rng(seed)
    assigned: dict[Any, str] = {}
    for _, group in patients.groupby("label", sort=True):
        order = rng.permutation(len(group))
        total = group["n"].sum()
        want = {"test": test_fraction * total, "valid": valid_fraction * total}
        have = {"test": 0, "valid": 0}
        for pid, n in zip(group.index[order], group["n"].to_numpy()[order]):
            # A patient joins a held-out split while that brings its image count closer to
            # its target; each split keeps its own count so one overshoot cannot starve the next.
            split = next((s for s in ("test", "valid") if have[s] + n / 2.0 < want[s]), "train")
            if split != "train":
                have[split] += n
            assigned[pid] = split
    out = df.copy()
    out["source_split"] = df["split"]
    out["split"] = df["patient_id"].map(assigned).astype(object)
    for split, fraction in (("valid", valid_fraction), ("test", test_fraction)):
        have = set(out.loc[out["split"] == split, "label"])
        if fraction > 0 and have != {0, 1}:
            warnings.warn(f"split_by_patient: {split!r} holds labels {sorted(have)} only; too few patients "
                          "to stratify", stacklevel=2)
    return out


def assert_no_patient_leakage(df: pd.DataFrame) -> None:
    """Raise ValueError listing the patient ids that appear in more than one split."""
    splits = df.groupby("patient_id")["split"].unique()
    leaks = splits[splits.map(len) > 1]
    if len(leaks):
        shown = "; ".join(f"{pid} in {sorted(s)}" for pid, s in leaks.head(20).items())
        more = f" (and {len(leaks) - 20} more)" if len(leaks) > 20 else ""
        raise ValueError(f"patient leakage: {len(leaks)} patient(s) in more than one split: {shown}{more}")


def split_dataset(df: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    """{"train", "valid", "test"} frames of a training run (fresh index each); re-split by
    patient 70/15/15 when the dataset lacks a train or a validation split.

    Raises:
        ValueError: a patient in two splits, an empty train or valid split, or one holding
            a single class (e.g. a class folder named unlike the registry's label).
    """
    present = set(df["split"])
    if "train" not in present or "valid" not in present:
        df = split_by_patient(df, valid_fraction=0.15, seed=seed, test_fraction=0.15)
    assert_no_patient_leakage(df)
    parts = {name: df[df["split"] == name].reset_index(drop=True) for name in RUN_SPLITS}
    if parts["train"].empty or parts["valid"].empty:
        raise ValueError("the dataset needs images in both a train and a valid split")
    for name in ("train", "valid"):
        if parts[name]["label"].nunique() < 2:  # e.g. a class folder named unlike the label
            only = "positive" if parts[name]["label"].iloc[0] == 1 else "negative"
            raise ValueError(f"the {name} split holds only {only} images; both classes are needed "
                             "(check that the class folders are named as the registry's labels)")
    return parts


def split_digest(parts: Mapping[str, pd.DataFrame], root: Path) -> str:
    """sha256 of which image (path relative to the dataset root) is in which split with which
    label: a model fitted on one machine is evaluated on another only on the same split."""
    root = Path(root).resolve()
    lines = sorted(f"{name}\t{Path(path).resolve().relative_to(root).as_posix()}\t{label}"
                   for name, df in parts.items() for path, label in zip(df["path"], df["label"]))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def class_weights(labels: Iterable[int]) -> dict[int, float]:
    """Balanced class weights w_c = n / (2 * n_c), sklearn's `class_weight='balanced'`.

    Derivation: we want each class to carry the same total weight, w_0 * n_0 = w_1 * n_1,
    and the mean per-sample weight to be 1 so the loss scale (and the effective learning
    rate) is unchanged: w_0 n_0 + w_1 n_1 = n. Hence w_c * n_c = n / 2.

    Source document 001 (the MURA ensemble report, "Calculation of class weights") prints
    w1 = N / (N + A) and w2 = A / (N + N), assigned {0: w2, 1: w1} (N normal, A abnormal).
    The denominator of w2 is a typo for N + A: as printed the two weights do not balance
    the classes (w2 * N = A / 2 but w1 * A = N A / (N + A)). With N + A, {0: A/n, 1: N/n}
    balances the class sums and is proportional to the weights here, but its mean sample
    weight is 2NA/n^2 < 1, which silently lowers the loss scale; use this function instead.

    Args:
        labels: 0/1 labels (any iterable; a DataFrame's `label` column).

    Returns:
        {0: w0, 1: w1} as Python floats.

    Raises:
        ValueError: a label other than 0/1, or a class with no samples.
    """
    y = np.asarray(list(labels) if not hasattr(labels, "__array__") else labels).ravel()
    bad = set(np.unique(y).tolist()) - {0, 1}
    if bad:
        raise ValueError(f"class_weights: labels must be 0 or 1, got {sorted(bad)}")
    n = y.size
    counts = {c: int(np.sum(y == c)) for c in (0, 1)}
    absent = [c for c, k in counts.items() if k == 0]
    if absent:
        raise ValueError(f"class_weights: class {absent[0]} has no samples (counts {counts})")
    return {c: n / (2.0 * k) for c, k in counts.items()}


def body_part_targets(df: pd.DataFrame, body_parts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(index into `body_parts` as int32, weight float32) per row of `df`: weight 0 (and
    index 0) where the row's `body_part` is missing or not in the list."""
    index = {part: k for k, part in enumerate(body_parts)}
    parts = df["body_part"] if "body_part" in df.columns else pd.Series([None] * len(df), index=df.index)
    known = np.array([part in index for part in parts])
    return (np.array([index.get(part, 0) for part in parts], np.int32), known.astype(np.float32))


def oversample_minority(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Duplicate minority-class rows until both classes have as many rows as the majority.

    Whole copies first, then a seeded sample without replacement for the remainder, so
    every minority image is repeated as evenly as possible. Use it on the training split
    only (after splitting, or duplicates leak), and not together with `class_weights`
    (that would correct the imbalance twice). Returns a new frame with a fresh index.
    """
    counts = df["label"].value_counts()
    if len(counts) < 2 or counts.iloc[0] == counts.iloc[-1]:
        return df.reset_index(drop=True)
    minority = int(counts.idxmin())
    rows = np.flatnonzero(df["label"].to_numpy() == minority)
    extra = int(counts.max() - counts.min())
    reps, rest = divmod(extra, len(rows))
    rng = np.random.default_rng(seed)
    picks = np.concatenate([np.tile(rows, reps), np.sort(rng.choice(rows, rest, replace=False))])
    return pd.concat([df, df.iloc[picks]], ignore_index=True)
