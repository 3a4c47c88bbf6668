"""`train --task ctr`: fit the CTR segmentation network on a chest phantom dataset, calibrate
its decision on the validation split, measure it on the test split, fit its input check,
save it with its side files and (with --register) register it as a `measurement` model of
cardiomegaly. Every step is in xray_ai.training.ctr; this module puts them in order.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xray_ai.measurement.ctr import CTR_LIMIT, CTR_RULE
from xray_ai.measurement.network import ARCHITECTURE
from xray_ai.registry import InputSpec, load_registry, save_registry
from xray_ai.serving import artifacts, input_check
from xray_ai.training import ctr
from xray_ai.training.config import TrainConfig
from xray_ai.training.registration import describe_data

__all__ = ["CtrRun", "train_ctr"]

CONDITION = "cardiomegaly"  # the one measured condition


@dataclass
class CtrRun:
    """What `train --task ctr` made: the model, where it lies, its test figures."""

    model_id: str
    path: Path
    sha256: str
    scale: float
    metrics: dict[str, Any]
    record: dict[str, Any]


def train_ctr(config: TrainConfig, *, train_images: int | None = None, stream: Any = sys.stderr) -> CtrRun:
    """Run the whole protocol (module docstring) for `config` (condition cardiomegaly;
    `train_images`: use only the first N training images, to fit a CPU budget)."""
    if config.condition != CONDITION:
        raise ValueError(f"--task ctr measures the cardiothoracic ratio: --condition must be {CONDITION}, "
                         f"not {config.condition}")
    registry = load_registry(config.registry)
    positive = registry.condition(CONDITION).positive_label
    size = config.image_size
    spec = InputSpec(size, size, 1)
    rows = ctr.read_ctr_dataset(config.data)
    print(f"reading {config.data} at {size} px ...", file=stream, flush=True)
    data = {split: ctr.load_split(config.data, part, spec, positive, train_images if split == "train" else None)
            for split, part in rows.items()}
    model, record = ctr.fit_ctr_model(
        data["train"], data["valid"], size=size, epochs=config.epochs or 30, patience=config.patience or 5,
        batch_size=config.batch_size or 16, learning_rate=config.learning_rate or 1e-3, seed=config.seed,
        stream=stream)
    record.update(device="cpu", train_images_available=len(rows["train"]), image_size=size,
                  data=str(Path(config.data).name))

    valid_masks, valid_features = ctr.predict_masks(model, data["valid"].images)
    valid_ctr = [m.ctr if m is not None else 0.0 for m in ctr.measured_ctrs(valid_masks, data["valid"].widths)]
    scale = ctr.fit_calibration(valid_ctr, data["valid"].labels)
    metrics = ctr.evaluate_ctr(model, data["test"], scale, split="test", seed=config.seed)
    metrics["calibration_scale"] = scale
    metrics["training"] = record
    m = metrics["measurement"]
    error = (f"CTR MAE {m['ctr_mae']:.4f}, bias {m['bland_altman']['bias']:+.4f}" if m["ctr_mae"] is not None
             else f"no CTR measured on {m['n_not_measured']} of {m['n']} images")
    print(f"test: {error}, Dice heart {m['dice_heart']:.3f} thorax {m['dice_thorax']:.3f}, AUC {metrics['auc']}, "
          f"kappa {metrics['kappa']}", file=stream, flush=True)

    model_id = config.model_id or f"{CONDITION}-{ARCHITECTURE}-{_dt.datetime.now():%Y%m%d%H%M}"
    path = Path(config.out) / f"{model_id}.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    _without_optimizer(model).save(path)
    sha = artifacts.file_sha256(path)
    ctr.write_json(artifacts.metrics_path(path), metrics)
    _, train_features = ctr.predict_masks(model, data["train"].images)
    try:
        check = input_check.fit(train_features, valid_features, sha, Path(config.data).name)
    except ValueError as exc:  # e.g. too few validation images: the model works without one
        print(f"input check not fitted: {exc}", file=stream, flush=True)
    else:
        input_check.save(check, artifacts.input_check_path(path))
        print(f"input check: threshold {check.threshold:.3f}", file=stream, flush=True)
    print(f"saved {path} (sha256 {sha[:12]}...)", file=stream, flush=True)
    run = CtrRun(model_id, path, sha, scale, metrics, record)
    if config.register:
        _register(config, registry, run, spec, len(rows["valid"]))
    return run


def _without_optimizer(model):
    """The same layers as an uncompiled model: the file every model has, without the
    optimizer's state (which would triple it) or the training loss."""
    import keras

    from xray_ai.measurement.network import OUTPUT_FEATURES, OUTPUT_MASKS

    return keras.Model(model.input, {name: model.get_layer(name).output for name in (OUTPUT_MASKS, OUTPUT_FEATURES)},
                       name=model.name)


def _register(config: TrainConfig, registry, run: CtrRun, spec: InputSpec, n_valid: int) -> None:
    from xray_ai.registry import ModelEntry

    created = _dt.date.today().isoformat()
    trained_on = describe_data(dataclasses.replace(config, weights="none"))
    entry = ModelEntry(
        id=run.model_id, condition=CONDITION, architecture=ARCHITECTURE,
        path=os.path.relpath(run.path.resolve(), registry.base_dir.resolve()), sha256=run.sha256,
        version=created.replace("-", "."), input=spec, preprocessing="unit", threshold=CTR_LIMIT,
        threshold_method=(f"clinical rule: {CTR_RULE}; the probability is a logistic calibration of the CTR "
                          f"fitted on the validation split (n={n_valid}), 0.5 at CTR {CTR_LIMIT:.2f}"),
        profile="fast", trained_on=trained_on,
        intended_use=config.intended_use or ("Demonstration on synthetic data; not for clinical use."
                                             if trained_on.synthetic else
                                             "Research use; validate locally before any clinical use."),
        metrics=run.metrics, created=created, kind="measurement",
        measurement={"quantity": "ctr", "limit": CTR_LIMIT, "calibration_scale": round(run.scale, 6),
                     "calibrated_on": f"validation split (n={n_valid})"},
    )
    updated = registry.with_model(entry)
    if config.activate:
        updated = updated.with_active(CONDITION, run.model_id)
    save_registry(updated, registry.path, action="train --task ctr --register" + (" --activate" if config.activate else ""))
