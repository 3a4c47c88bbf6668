"""Starting from a saved classifier (`TrainConfig.initial_model`), e.g. one models/fit_on_gpu.py
fitted elsewhere: load it, check its `<stem>.fit.json` record against this run, and read the
body-part head saved beside it.

A model fitted on another machine is evaluated here only on the split it was fitted on, so
that its test figures stay held out: the record's split digest must match this run's.
"""

from __future__ import annotations

import json
from pathlib import Path

from xray_ai.registry import InputSpec
from xray_ai.serving import artifacts, body_part
from xray_ai.training.config import TrainConfig
from xray_ai.training.splits import split_digest

__all__ = ["load_initial_model", "read_fit_record", "initial_body_part_head"]


def load_initial_model(path: Path, spec: InputSpec):
    """A saved classifier to start from (`TrainConfig.initial_model`), checked against `spec`."""
    import keras

    if not Path(path).is_file():
        raise ValueError(f"--initial-model {path}: no such file")
    try:
        model = keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"--initial-model {path}: could not be loaded ({type(exc).__name__}: {exc})") from None
    have = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else None
    if have != (None, *spec.shape):
        raise ValueError(f"--initial-model {path}: takes input {have}, --image-size asks for {(None, *spec.shape)}")
    return model


def read_fit_record(config: TrainConfig, parts: dict) -> dict | None:
    """The `<stem>.fit.json` written beside the initial model by models/fit_on_gpu.py (None
    when there is none), checked against this run: same architecture, input size and split
    (so the test split stays unseen).

    Raises:
        ValueError: the record names another architecture, input size or split.
    """
    path = artifacts.fit_record_path(config.initial_model)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("architecture") != config.architecture:
        raise ValueError(f"{path}: the model was fitted as {record.get('architecture')!r}, --arch says "
                         f"{config.architecture!r}")
    if record["training"].get("image_size") != config.image_size:
        raise ValueError(f"{path}: the model was fitted at {record['training'].get('image_size')} px, "
                         f"--image-size says {config.image_size}")
    digest = split_digest(parts, Path(config.data).resolve())
    if record.get("split_digest") != digest:
        raise ValueError(f"{path}: the model was fitted on other data or another split than {config.data} "
                         f"with --seed {config.seed} gives (split digest {digest[:12]}... against "
                         f"{str(record.get('split_digest'))[:12]}...); its test figures would not be held out")
    return record


def initial_body_part_head(initial_model: Path | None):
    """The body-part head saved beside an initial model (models/fit_on_gpu.py writes one), if any."""
    if initial_model is None:
        return None
    head, _ = body_part.load(artifacts.body_part_path(initial_model), artifacts.file_sha256(Path(initial_model)))
    return head
