"""Saving a trained model: the `.keras` file and its side files (held-out metrics, body-part
head, input check), named by `xray_ai.serving.artifacts`.

The model is saved without its training heads and without optimizer state: the file has the
form every other model has, and the side files carry the model's sha256 so that they are
never applied to another model.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Any

from xray_ai.registry import InputSpec
from xray_ai.serving import artifacts, body_part, input_check
from xray_ai.training.config import Protocol, TrainConfig
from xray_ai.training.features import fit_input_check, pipeline_features

__all__ = ["default_model_id", "save_model", "save_input_check"]


def default_model_id(config: TrainConfig, protocol: Protocol) -> str:
    """CONDITION-ARCH-PROFILE-YYYYMMDDHHMM, for a run that names no model id."""
    return f"{config.condition}-{config.architecture}-{protocol.profile}-{_dt.datetime.now():%Y%m%d%H%M}"


def save_model(model, path: Path, metrics: dict[str, Any], part_head, stream: Any) -> str:
    """Write `model` to `path` (its folder made if need be), its metrics beside it and, with a
    body-part head (`part_head`, an `xray_ai.serving.body_part.BodyPartHead`), the head
    stamped with the model file's sha256. Returns that sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    sha = artifacts.file_sha256(path)
    artifacts.metrics_path(path).write_text(json.dumps(metrics, indent=2) + "\n")
    if part_head is not None:
        saved = body_part.save(dataclasses.replace(part_head, model_sha256=sha), artifacts.body_part_path(path))
        print(f"body-part head: {metrics['body_part']['split']} accuracy {metrics['body_part']['accuracy']:.3f} "
              f"-> {saved}", file=stream, flush=True)
    return sha


def save_input_check(model, parts: dict, spec: InputSpec, path: Path, sha256: str, data_name: str,
                     stream: Any) -> input_check.FeatureDistribution | None:
    """Fit the model's input check on `parts["train"]` and `parts["valid"]` and save it beside
    the model at `path`; where it cannot be fitted (e.g. fewer than 20 validation images) say
    why and save none, since the model works without one. Returns it, or None."""
    try:
        check = fit_input_check(pipeline_features(model, spec), parts["train"], parts["valid"], sha256, data_name)
    except ValueError as exc:
        print(f"input check not fitted: {exc}", file=stream, flush=True)
        return None
    print(f"input check: threshold {check.threshold:.3f} -> "
          f"{input_check.save(check, artifacts.input_check_path(path))}", file=stream, flush=True)
    return check
