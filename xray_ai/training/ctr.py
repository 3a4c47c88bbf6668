"""Training and evaluating the cardiothoracic-ratio segmentation model (`train --task ctr`).

Data: a chest phantom dataset (`python -m xray_ai phantoms --condition cardiomegaly --layout
folders`) whose `measurements.csv` gives each image's true CTR and whose `<stem>_heart.png` /
`<stem>_thorax.png` outlines are the targets. Images are read as inference reads them
(`load_image`, `prepare_batch`), the outlines resized to the model's grid as area fractions
(soft targets, so the network learns where an edge falls inside a pixel).

Fit: Adam on binary cross-entropy plus soft Dice of the two masks, early stopping on the
validation loss (the best epoch's weights kept). The decision's calibration (a logistic
curve of the CTR, fixed at 0.5 for CTR 0.50: only its slope is fitted) is fitted on the
validation split; every figure is measured on the test split (`evaluate_ctr`).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xray_ai.measurement.ctr import CTR_LIMIT, measure_ctr
from xray_ai.measurement.network import MASK_CHANNELS, OUTPUT_FEATURES, OUTPUT_MASKS
from xray_ai.phantoms.files import MEASUREMENTS_CSV, outline_path
from xray_ai.registry import InputSpec

__all__ = ["CtrData", "read_ctr_dataset", "load_split", "fit_calibration", "calibrated", "evaluate_ctr",
           "predict_masks"]

_SPLITS = ("train", "valid", "test")


@dataclass
class CtrData:
    """One split in memory: images (N, S, S, 1) as the model takes them, soft target masks
    (N, S, S, 2: heart, thorax), true CTRs, labels (1 = cardiomegaly), each image's width in
    its own pixels and its path."""

    images: np.ndarray
    masks: np.ndarray
    ctr: np.ndarray
    labels: np.ndarray
    widths: np.ndarray
    paths: list[str]


def read_ctr_dataset(root: Path) -> dict[str, list[dict[str, str]]]:
    """The rows of `root/measurements.csv` by split; ValueError naming the file when it is
    missing, lacks a split or an outline."""
    table = Path(root) / MEASUREMENTS_CSV
    if not table.is_file():
        raise ValueError(f"{table}: no such file; a CTR dataset is a chest phantom dataset "
                         "(python -m xray_ai phantoms --condition cardiomegaly --layout folders)")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    by_split = {split: [r for r in rows if r["split"] == split] for split in _SPLITS}
    missing = [s for s, r in by_split.items() if not r]
    if missing:
        raise ValueError(f"{table}: no rows for split(s) {', '.join(missing)}")
    for row in rows[:1]:
        for name in MASK_CHANNELS:
            if not outline_path(Path(root) / row["image"], name).is_file():
                raise ValueError(f"{outline_path(Path(root) / row['image'], name)}: outline missing")
    return by_split


def load_split(root: Path, rows: list[dict[str, str]], spec: InputSpec, positive_label: str,
               limit: int | None = None) -> CtrData:
    """Images and targets of the rows (the first `limit` of them, when given)."""
    from xray_ai import load_image
    from xray_ai.serving.preprocessing import prepare_batch

    rows = rows[:limit] if limit else rows
    images, masks, widths = [], [], []
    for row in rows:
        path = Path(root) / row["image"]
        pixels = load_image(path).pixels
        images.append(prepare_batch([pixels], spec, "unit")[0])
        widths.append(pixels.shape[1])
        masks.append(np.stack([_soft_outline(outline_path(path, name), spec) for name in MASK_CHANNELS], axis=-1))
    return CtrData(np.stack(images), np.stack(masks), np.array([float(r["ctr"]) for r in rows]),
                   np.array([int(r["label"] == positive_label) for r in rows]), np.array(widths),
                   [r["image"] for r in rows])


def _soft_outline(path: Path, spec: InputSpec) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"{path}: unreadable outline")
    return cv2.resize((mask > 127).astype(np.float32), (spec.width, spec.height), interpolation=cv2.INTER_AREA)


def dice_bce_loss(y_true, y_pred):
    """Binary cross-entropy plus (1 - soft Dice), each mask's Dice over the batch."""
    import keras
    from keras import ops

    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    axes = (0, 1, 2)
    inter = ops.sum(y_true * y_pred, axis=axes)
    dice = (2 * inter + 1.0) / (ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes) + 1.0)
    return bce + 1.0 - ops.mean(dice)


def fit_ctr_model(train: CtrData, valid: CtrData, *, size: int, epochs: int, patience: int, batch_size: int,
                  learning_rate: float, seed: int, stream: Any) -> tuple[Any, dict[str, Any]]:
    """The fitted network and the fit's record (epochs run, best epoch, seconds, losses)."""
    import keras

    from xray_ai.measurement.network import build_ctr_unet

    keras.utils.set_random_seed(seed)
    model = build_ctr_unet(size)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss={OUTPUT_MASKS: dice_bce_loss})
    # epochs reported on `stream` (stderr), so that stdout holds only the command's JSON
    report = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(
        f"epoch {epoch + 1}: loss {logs['loss']:.4f}, val_loss {logs['val_loss']:.4f}", file=stream, flush=True))
    callbacks = [keras.callbacks.EarlyStopping("val_loss", patience=patience, restore_best_weights=True),
                 keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.3, patience=max(1, patience // 2)), report]
    start = time.perf_counter()
    history = model.fit(train.images, {OUTPUT_MASKS: train.masks}, batch_size=batch_size, epochs=epochs,
                        validation_data=(valid.images, {OUTPUT_MASKS: valid.masks}), callbacks=callbacks,
                        shuffle=True, verbose=0)
    val = [float(v) for v in history.history["val_loss"]]
    record = {"task": "ctr", "epochs_run": len(val), "best_epoch": int(np.argmin(val)) + 1,
              "seconds": round(time.perf_counter() - start, 1), "val_loss": [round(v, 5) for v in val],
              "loss": [round(float(v), 5) for v in history.history["loss"]], "batch_size": batch_size,
              "learning_rate": learning_rate, "seed": seed, "n_train": len(train.ctr), "n_valid": len(valid.ctr),
              "loss_function": "binary cross-entropy + (1 - soft Dice), heart and thorax masks"}
    print(f"fitted in {record['seconds']:.0f} s, {record['epochs_run']} epochs (best {record['best_epoch']})",
          file=stream, flush=True)
    return model, record


def predict_masks(model, images: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(masks (N, S, S, 2), pooled features (N, K)) of a batch of model-ready images."""
    masks, features = [], []
    for start in range(0, len(images), batch):
        out = model(images[start:start + batch], training=False)
        masks.append(np.asarray(out[OUTPUT_MASKS]))
        features.append(np.asarray(out[OUTPUT_FEATURES]))
    return np.concatenate(masks), np.concatenate(features)


def measured_ctrs(masks: np.ndarray, widths: np.ndarray) -> list:
    """Each image's CtrMeasurement (None where an outline was not found)."""
    return [measure_ctr(m[..., 0], m[..., 1], int(w)) for m, w in zip(masks, widths)]


def calibrated(ctr: np.ndarray, scale: float, limit: float = CTR_LIMIT) -> np.ndarray:
    """The decision's probability: a logistic curve of the CTR, 0.5 at the rule's limit."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(ctr, np.float64) - limit) / scale))


def fit_calibration(ctr: np.ndarray, labels: np.ndarray, limit: float = CTR_LIMIT) -> float:
    """The logistic slope (scale, in CTR units) of maximum likelihood on (ctr, labels), with
    the midpoint fixed at the rule's limit so that the decision stays the rule's."""
    from scipy.optimize import minimize_scalar

    ctr, y = np.asarray(ctr, np.float64), np.asarray(labels, np.float64)

    def nll(log_scale: float) -> float:
        p = np.clip(calibrated(ctr, float(np.exp(log_scale)), limit), 1e-9, 1 - 1e-9)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    best = minimize_scalar(nll, bounds=(np.log(1e-4), np.log(0.5)), method="bounded")
    return float(np.exp(best.x))


def _dice(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Each image's Dice of one mask, both cut at one half."""
    p, t = pred > 0.5, true > 0.5
    inter = (p & t).sum(axis=(1, 2))
    return 2 * inter / np.maximum(p.sum(axis=(1, 2)) + t.sum(axis=(1, 2)), 1)


def _bootstrap(values: np.ndarray, stat, n_boot: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    stats = [stat(values[i]) for i in idx]
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def evaluate_ctr(model, data: CtrData, scale: float, *, split: str, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """The measurement figures on one split: CTR mean absolute error (and against the CTR
    measured on the true outlines), Bland-Altman bias and 95% limits, Dice of each mask,
    and the rule's decision (AUC, accuracy, sensitivity, specificity, kappa), each with a
    percentile-bootstrap 95% CI over images."""
    from xray_ai.training.evaluation import evaluation_report

    start = time.perf_counter()
    masks, _ = predict_masks(model, data.images)
    seconds = time.perf_counter() - start
    measured = measured_ctrs(masks, data.widths)
    found = np.array([m is not None for m in measured])
    # an image without outlines has no CTR: for the decision it reads as normal (the app
    # shows it as not assessable), and it is left out of the agreement figures
    ctr = np.array([m.ctr if m is not None else 0.0 for m in measured])
    truth_outlines = np.array([_outline_ctr(t) for t in data.masks])
    diff = (ctr - data.ctr)[found]
    report = evaluation_report(data.labels, calibrated(ctr, scale), 0.5, split=split, n_boot=n_boot, seed=seed)
    report.pop("calibration", None)
    dice = {name: _dice(masks[..., k], data.masks[..., k]) for k, name in enumerate(MASK_CHANNELS)}
    report["measurement"] = {
        "quantity": "ctr", "n": int(len(ctr)), "n_not_measured": int((~found).sum()),
        "truth": "the generator's CTR parameter (measurements.csv `ctr`); vs_outlines: the CTR measured on "
                 "the true outlines at the model's grid",
        **_agreement(diff, np.abs(ctr - truth_outlines)[found], n_boot, seed),
        **{f"dice_{name}": float(np.mean(d)) for name, d in dice.items()},
        **{f"dice_{name}_ci95": _bootstrap(d, np.mean, n_boot, seed) for name, d in dice.items()},
        "decision_rule": f"CTR > {CTR_LIMIT:.2f}",
        "ms_per_image_tensorflow": round(1000 * seconds / len(ctr), 2),
    }
    return report


def _agreement(diff: np.ndarray, vs_outlines: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """CTR error figures of the measured images (None where no image was measured: a model
    that finds no outline has no agreement to report, not a zero error)."""
    if len(diff) < 2:
        return {"ctr_mae": None, "ctr_mae_ci95": None, "ctr_mae_vs_outlines": None, "bland_altman": None}
    sd = float(np.std(diff, ddof=1))
    bias = float(np.mean(diff))
    return {"ctr_mae": float(np.mean(np.abs(diff))), "ctr_mae_ci95": _bootstrap(np.abs(diff), np.mean, n_boot, seed),
            "ctr_mae_vs_outlines": float(np.nanmean(vs_outlines)),
            "bland_altman": {"bias": bias, "bias_ci95": _bootstrap(diff, np.mean, n_boot, seed),
                             "limits_of_agreement": [bias - 1.96 * sd, bias + 1.96 * sd], "sd": sd}}


def _outline_ctr(target: np.ndarray) -> float:
    measured = measure_ctr(target[..., 0], target[..., 1])
    return measured.ctr if measured is not None else float("nan")


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")
