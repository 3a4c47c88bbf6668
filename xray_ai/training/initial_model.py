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


def load_initial_model(path: Path, spec: InputSpec, *, resize: bool = False):
    """A saved classifier to start from (`TrainConfig.initial_model`), checked against `spec`;
    with `resize` (a run that fits it further), one fitted at another image size is rebuilt
    for `spec`'s (`_at_input_size`). A model evaluated as it is must take `spec`'s size."""
    import keras

    if not Path(path).is_file():
        raise ValueError(f"--initial-model {path}: no such file")
    try:
        model = keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"--initial-model {path}: could not be loaded ({type(exc).__name__}: {exc})") from None
    have = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else None
    if have == (None, *spec.shape):
        return model
    if resize and have is not None and len(have) == 4 and have[3] == spec.channels:
        return _at_input_size(model, spec, path)
    raise ValueError(f"--initial-model {path}: takes input {have}, --image-size asks for {(None, *spec.shape)}")


def _at_input_size(model, spec: InputSpec, path: Path):
    """`model` rebuilt for `spec`'s image size, with its weights: a convolutional backbone
    with global pooling has the same weights at any input size, so a model fitted at 224 px
    can be fine-tuned at 320 (the intensive tier started from the fast one). A model whose
    weights depend on the size (a Flatten before a Dense layer) cannot be, and says so."""
    import keras

    try:
        resized = keras.models.clone_model(model, input_tensors=keras.Input(shape=spec.shape,
                                                                          name=model.inputs[0].name))
        resized.set_weights(model.get_weights())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--initial-model {path}: takes {model.inputs[0].shape[1]} x {model.inputs[0].shape[2]} "
                         f"px images and cannot be rebuilt for {spec.height} x {spec.width} "
                         f"({type(exc).__name__}: {exc})") from None
    return resized


def read_fit_record(config: TrainConfig, parts: dict) -> dict | None:
    """The `<stem>.fit.json` written beside the initial model by models/fit_on_gpu.py (None
    when there is none), checked against this run: same architecture and split (so the test
    split stays unseen) and, for a model evaluated as it is (epochs 0), the same input size.

    Raises:
        ValueError: the record names another architecture, split or (epochs 0) input size.
    """
    path = artifacts.fit_record_path(config.initial_model)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("architecture") != config.architecture:
        raise ValueError(f"{path}: the model was fitted as {record.get('architecture')!r}, --arch says "
                         f"{config.architecture!r}")
    if config.evaluate_only and record["training"].get("image_size") != config.image_size:
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
