"""Registering a trained model: its registry entry (sha256, operating point, held-out metrics,
what it was trained on, stated honestly) written and, when asked, made the condition's active
model.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from xray_ai.explain.cam_math import HeatmapSpec
from xray_ai.phantoms import MANIFEST
from xray_ai.registry import InputSpec, ModelEntry, Registry, TrainingData, save_registry
from xray_ai.training.config import TrainConfig
from xray_ai.training.held_out import OperatingPoint

__all__ = ["describe_data", "register_model"]


def describe_data(config: TrainConfig) -> TrainingData:
    """What the model was trained on, stated honestly: phantom datasets carry a manifest;
    a backbone that started from pretrained weights says so (ImageNet is training data too),
    and so does a model fitted further from a saved one (`--initial-model` with epochs)."""
    data = _describe_dataset(config)
    starts = []
    if config.weights not in (None, "none"):
        starts.append("backbone pretrained: " + (
            "ImageNet weights" if config.weights == "imagenet" else f"weights {Path(config.weights).name}"))
    if config.initial_model is not None and not config.evaluate_only:
        starts.append(f"fitted further from {Path(config.initial_model).name}")
    if not starts:
        return data
    return dataclasses.replace(data, version="; ".join([data.version, *starts] if data.version else starts))


def _describe_dataset(config: TrainConfig) -> TrainingData:
    manifest = Path(config.data) / MANIFEST
    if config.dataset_name:
        synthetic = bool(config.synthetic) if config.synthetic is not None else manifest.is_file()
        return TrainingData(config.dataset_name, config.dataset_version, synthetic)
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        return TrainingData(
            "synthetic phantoms",
            f"{info.get('generator_version')} seed {info.get('seed')} size {info.get('size')}",
            True,
        )
    if config.layout == "mura":
        return TrainingData("MURA v1.1 layout dataset", str(config.data), bool(config.synthetic))
    return TrainingData(f"class-folder dataset {Path(config.data).name}", config.dataset_version,
                        bool(config.synthetic))


def register_model(config: TrainConfig, registry: Registry, *, model_id: str, path: Path, sha256: str,
                   spec: InputSpec, profile: str, point: OperatingPoint, metrics: dict[str, Any],
                   fit_record: dict | None = None, heatmap: HeatmapSpec | None = None) -> None:
    """Add the model's entry to `registry` and save it; `config.activate` also makes it the
    condition's active model.

    fit_record: the `<stem>.fit.json` of a model fitted elsewhere and registered without
        fitting here (`--epochs 0`): its backbone started from the weights the record names,
        not from `config.weights`.
    heatmap: the default heatmap setting chosen on the validation split (held_out.choose_default_heatmap);
        None: the entry has none, and shows last-layer Grad-CAM.
    """
    created = _dt.date.today().isoformat()
    described = dataclasses.replace(config, weights=fit_record["training"]["weights"]) if fit_record else config
    trained_on = describe_data(described)
    entry = ModelEntry(
        id=model_id, condition=config.condition, architecture=config.architecture,
        path=os.path.relpath(path.resolve(), registry.base_dir.resolve()), sha256=sha256,
        version=created.replace("-", "."), input=spec, threshold=point.threshold, threshold_method=point.method,
        profile=profile, trained_on=trained_on,
        intended_use=config.intended_use or (
            "Demonstration on synthetic data; not for clinical use." if trained_on.synthetic
            else "Research use; validate locally before any clinical use."),
        metrics=metrics, created=created, heatmap=heatmap,
    )
    updated = registry.with_model(entry)
    if config.activate:
        updated = updated.with_active(config.condition, model_id)
    save_registry(updated, registry.path, action="train --register" + (" --activate" if config.activate else ""))
