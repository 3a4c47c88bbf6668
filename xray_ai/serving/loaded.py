"""What the ModelManager hands out: a loaded model (LoadedModel) or ensemble (LoadedEnsemble).

numpy only at import: a LoadedModel served from its shipped ONNX export loads its keras
model (and TensorFlow) only when `model` is first read.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from xray_ai.registry import ModelEntry
from xray_ai.serving.analyzer import Analyzer
from xray_ai.serving.body_part import BodyPartHead
from xray_ai.serving.input_check import FeatureDistribution

if TYPE_CHECKING:
    import keras

__all__ = ["LoadedModel", "LoadedEnsemble"]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to analyse.

    Attributes:
        entry: the registry entry it serves.
        placeholder: True when the real model could not be used.
        placeholder_reason: why, in words a user can act on; None otherwise.
        analyzer: the probability + heatmap function (serving.analyzer.Analyzer):
            xray_ai.explain.gradcam.GradCam (TensorFlow) or serving.onnx_session.OnnxGradCam
            (ONNX Runtime).
        load_seconds: time spent loading, verifying and warming up.
        backend: "onnxruntime" or "tensorflow": what computes the results.
        backend_reason: why TensorFlow serves although ONNX Runtime was allowed; else None.
        input_check: the model's training-feature distribution (serving.input_check), read
            at load from `<model>.features.npz`; None when it has none (or it is not its own).
        input_check_reason: why there is no input check; None when there is one.
        body_part_head: the model's auxiliary body-part head (serving.body_part), read at
            load from `<model>.bodypart.npz`; None when it has none (or it is not its own).
        model (property): the keras model (the placeholder CNN when `placeholder` is True).
            A model served from its shipped ONNX export is opened without keras; its keras
            model (and TensorFlow) is loaded, verified, on first access of `model` only:
            by the heatmap methods other than the analyzer's own.
    """

    entry: ModelEntry
    placeholder: bool
    placeholder_reason: str | None
    analyzer: Analyzer
    load_seconds: float = 0.0
    backend: str = "tensorflow"
    backend_reason: str | None = None
    input_check: FeatureDistribution | None = None
    input_check_reason: str | None = None
    body_part_head: BodyPartHead | None = None
    keras_model: keras.Model | None = field(default=None, compare=False, repr=False)
    load_keras: Callable[[], keras.Model] | None = field(default=None, compare=False, repr=False)
    _model_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def model(self) -> keras.Model:
        if self.keras_model is None:
            with self._model_lock:
                if self.keras_model is None:
                    object.__setattr__(self, "keras_model", self.load_keras())
        return self.keras_model

    @property
    def target_layer(self) -> str | None:
        return self.analyzer.target_layer

    @property
    def heatmap_method(self) -> str:
        return self.analyzer.method


@dataclass(frozen=True)
class LoadedEnsemble:
    """An ensemble entry, ready to analyse: its members, each a LoadedModel.

    There is no model or analyzer of its own: xray_ai.analysis runs every member with its
    own input size and preprocessing and averages their probabilities and heatmaps.

    Attributes:
        entry: the ensemble's registry entry (its id, version, threshold, intended use).
        members: the loaded members, in the entry's order.
        placeholder: True when any member is a placeholder: the mean of a real model and
            an untrained one is no result either.
        placeholder_reason: which members, and why; None otherwise.
    """

    entry: ModelEntry
    members: tuple[LoadedModel, ...]

    @property
    def placeholder(self) -> bool:
        return any(m.placeholder for m in self.members)

    @property
    def placeholder_reason(self) -> str | None:
        reasons = [f"ensemble member {m.entry.id} is a placeholder ({m.placeholder_reason})"
                   for m in self.members if m.placeholder]
        return "; ".join(reasons) or None

    @property
    def load_seconds(self) -> float:
        return sum(m.load_seconds for m in self.members)
