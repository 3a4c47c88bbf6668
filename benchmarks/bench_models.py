"""What the benchmarks share: a one-model registry for a model file with random weights, and
batch-norm statistics that keep a random backbone's maps from vanishing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["bench_registry", "calibrate_batch_norm"]


def bench_registry(tmp: Path, arch: str, model_file: Path, sha: str, *, model_id: str = "bench",
                   condition: str = "fracture", input_shape: tuple[int, int, int] = (224, 224, 3),
                   **extra) -> Path:
    """A registry in `tmp` whose only model (`model_id`, active for `condition`) is `model_file`;
    `extra`: more entry fields (e.g. heatmap, kind, measurement)."""
    names = {"fracture": ("Fracture", "fracture", "no fracture"),
             "cardiomegaly": ("Cardiomegaly", "cardiomegaly", "normal")}
    name, positive, negative = names[condition]
    height, width, channels = input_shape
    entry = {
        "condition": condition, "architecture": arch, "path": model_file.name, "sha256": sha,
        "version": "bench", "input": {"height": height, "width": width, "channels": channels},
        "threshold": 0.5, "threshold_method": "benchmark", "profile": "fast",
        "trained_on": {"dataset": "random weights (benchmark)", "version": "", "synthetic": True},
        "intended_use": "speed benchmark only", "metrics": {}, "created": "2026-12-02", **extra,
    }
    reg = {
        "schema_version": 1,
        "conditions": {condition: {"name": name, "positive_label": positive, "negative_label": negative}},
        "models": {model_id: entry}, "active_models": {condition: model_id},
    }
    path = tmp / f"registry-{model_id}.json"
    path.write_text(json.dumps(reg))
    return path


def calibrate_batch_norm(keras, model, shape: tuple[int, int, int] = (224, 224, 3)) -> None:
    """Moving statistics from one random batch (momentum 0 for one training-mode call): with
    keras' initial statistics a random backbone's activations vanish and every heatmap is
    empty, which would make a heatmap comparison vacuous."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(np.random.default_rng(0).uniform(0.0, 1.0, (4, *shape)).astype(np.float32), training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
