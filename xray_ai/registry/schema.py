"""The registry's vocabulary: the allowed values, the error, and the entry dataclasses.

A registry (README, "The model registry") names conditions (`Condition`) and models
(`ModelEntry`, with its `InputSpec` and `TrainingData`); this module says what each holds
and how it is written back to JSON. Reading and checking the JSON is `parse`; the whole
registry value is `document`; saving and the audit log are `store`. No tensorflow here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from xray_ai.explain.cam_math import HeatmapSpec  # numpy only: the `heatmap` field's value

__all__ = [
    "SCHEMA_VERSION",
    "ARCHITECTURES",
    "PREPROCESSING",
    "PROFILES",
    "KINDS",
    "KIND_ALIASES",
    "ENSEMBLE_ARCHITECTURE",
    "MEASURED_CONDITIONS",
    "MEASUREMENT_ARCHITECTURES",
    "RegistryError",
    "Condition",
    "InputSpec",
    "TrainingData",
    "ModelEntry",
    "default_registry_path",
    "repo_root",
]

SCHEMA_VERSION = 1
# The networks a measurement entry may name (xray_ai.measurement.network builds "ctr-unet";
# spelled here because the registry imports no model code).
MEASUREMENT_ARCHITECTURES = ("ctr-unet",)
# Architectures a registry entry may name: the backbones xray_ai.training.architectures
# builds, "custom" (a classifier brought from elsewhere) and the measurement networks.
ARCHITECTURES = (
    "densenet121",
    "mobilenetv2",
    "compactcnn",
    "efficientnetlite0",
    "densenet169",
    "resnet50",
    "resnet101",
    "efficientnetb0",
    "vgg16",
    "vgg19",
    "xception",
    "convnext_tiny",
    "custom",
) + MEASUREMENT_ARCHITECTURES
# How a model wants its input; xray_ai.serving.preprocessing implements each.
PREPROCESSING = ("unit", "imagenet_tf", "imagenet_torch", "imagenet_caffe", "raw255")
PROFILES = ("fast", "intensive")
# "classifier": one model file giving a probability; "ensemble": the mean of its members'
# outputs (no file of its own); "measurement": one model file whose output is measured (the
# cardiothoracic ratio from heart and thorax masks) and decided by a clinical rule.
KINDS = ("classifier", "ensemble", "measurement")
KIND_ALIASES = {"single": "classifier"}  # the name registries of 2026-11 wrote
MEASURED_CONDITIONS = ("cardiomegaly",)
ENSEMBLE_ARCHITECTURE = "ensemble"


def repo_root() -> Path:
    """The repository root (the folder holding `xray_ai/`)."""
    return Path(__file__).resolve().parents[2]  # <repo>/xray_ai/registry/schema.py


def default_registry_path() -> Path:
    """`$XRAY_AI_REGISTRY` if set, else `model_registry.json` at the repository root."""
    env = os.environ.get("XRAY_AI_REGISTRY")
    return Path(env) if env else repo_root() / "model_registry.json"


class RegistryError(ValueError):
    """The registry is invalid, or an id is unknown. The message names the file and field."""


@dataclass(frozen=True)
class Condition:
    """One condition a model can be asked about.

    `body_parts`: the body parts (lower-case names, e.g. "chest", "knee", "wrist") whose
    images the condition is read on; the scope gate (xray_ai.scope) calls a view of any
    other part not assessable. None: any region (e.g. fracture).
    """

    id: str
    name: str
    positive_label: str
    negative_label: str
    body_parts: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "positive_label": self.positive_label,
                               "negative_label": self.negative_label}
        if self.body_parts is not None:
            out["body_parts"] = list(self.body_parts)
        return out


@dataclass(frozen=True)
class InputSpec:
    height: int
    width: int
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class TrainingData:
    dataset: str
    version: str
    synthetic: bool

    def describe(self) -> str:
        text = f"{self.dataset} ({self.version})" if self.version else self.dataset
        return text + (" [synthetic data]" if self.synthetic else "")


@functools.lru_cache(maxsize=256)
def _joined(path: str, base: Path) -> Path:
    # Cached: ModelManager.get resolves the model file on every analysis, and pathlib's
    # joins cost more than the stat that follows.
    p = Path(path)
    return p if p.is_absolute() else base / p


@dataclass(frozen=True)
class ModelEntry:
    """One registered model. `path` is relative to the registry file's folder.

    `kind`: "classifier" (the default; one file, one sigmoid output), "ensemble" or
    "measurement". An ensemble (`kind == "ensemble"`) has `path` and `sha256` None,
    `architecture` "ensemble" and two or more `members` (ids of classifiers of the same
    condition); its `input` is informational, as each member uses its own.

    A measurement model (`kind == "measurement"`; cardiomegaly's CTR U-Net,
    xray_ai.measurement.network) has a file like a classifier, whose outputs are masks and
    pooled features, and `measurement`: what it measures and how the decision follows
    (`quantity` "ctr", the rule's `limit`, the `calibration_scale` of its probability,
    `calibrated_on`); its threshold is the limit's probability, 0.5. It has no `heatmap`.

    `heatmap`: the model's default heatmap setting (method, layers, contour level, and how it
    was chosen: README "Explanations and how far to trust them"); None (no field) means
    last-layer Grad-CAM. An ensemble has none: each member shows its own.
    """

    id: str
    condition: str
    architecture: str
    path: str | None
    sha256: str | None
    version: str
    input: InputSpec
    threshold: float
    threshold_method: str
    profile: str
    trained_on: TrainingData
    intended_use: str
    metrics: Mapping[str, Any]
    created: str
    preprocessing: str = "unit"
    notes: str = ""
    kind: str = "classifier"
    members: tuple[str, ...] = ()
    measurement: Mapping[str, Any] | None = None
    heatmap: HeatmapSpec | None = None
    # Fields this version does not model, kept so that a save never drops them.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_ensemble(self) -> bool:
        return self.kind == "ensemble"

    @property
    def is_measurement(self) -> bool:
        return self.kind == "measurement"

    def resolve_path(self, base: Path) -> Path:
        """The model file. RegistryError for an ensemble, which has none (see `members`)."""
        if self.path is None:
            raise RegistryError(
                f"model {self.id!r} is an ensemble of {', '.join(self.members)}; it has no file of its own"
            )
        return _joined(self.path, base)

    def to_dict(self) -> dict[str, Any]:
        if self.is_ensemble:  # no file, no preprocessing of its own: each member has them
            file_keys: dict[str, Any] = {"kind": self.kind, "members": list(self.members)}
            input_keys: dict[str, Any] = {"input": dataclasses.asdict(self.input)}
        else:  # a classifier writes exactly the keys it always did (no "kind")
            kind = {"kind": self.kind} if self.is_measurement else {}
            file_keys = {**kind, "path": self.path, "sha256": self.sha256}
            input_keys = {"input": dataclasses.asdict(self.input), "preprocessing": self.preprocessing}
        out: dict[str, Any] = {
            "condition": self.condition,
            "architecture": self.architecture,
            **file_keys,
            "version": self.version,
            **input_keys,
            "threshold": self.threshold,
            "threshold_method": self.threshold_method,
            "profile": self.profile,
            "trained_on": dataclasses.asdict(self.trained_on),
            "intended_use": self.intended_use,
            "metrics": dict(self.metrics),
            "created": self.created,
            "notes": self.notes,
        }
        if self.heatmap is not None:  # absent stays absent: an entry without it writes what it always did
            out["heatmap"] = self.heatmap.to_json()
        if self.measurement is not None:  # a measurement model's only; absent for the others
            out["measurement"] = dict(self.measurement)
        out.update(self.extra)
        return out
