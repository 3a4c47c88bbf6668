"""What a training run is asked to do (`TrainConfig`), the two protocols it follows, and what
it gives back (`TrainOutcome`).

Protocols (source document 004, the system description this project implements): quick =
5 epochs, batch 25, Adam 1e-3, checkpoint on the validation AUC, ReduceLROnPlateau,
EarlyStopping. Intensive = up to 50 epochs, batch 16, Adam 1e-5, gradual unfreezing of the
backbone (head first, then the top of the backbone, then all of it).

Every step of a run (`xray_ai.training.trainer.train`) reads its settings from here, so this
module imports nothing else of the training package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Protocol", "PROTOCOLS", "TrainConfig", "TrainOutcome", "run_settings"]


@dataclass(frozen=True)
class Protocol:
    """Optimisation settings of one protocol.

    unfreeze: (fraction of backbone layers trainable, share of the epochs) stages; the
        quick protocol trains everything at once, the intensive one unfreezes gradually.
    """

    name: str
    epochs: int
    batch_size: int
    learning_rate: float
    unfreeze: tuple[tuple[float, float], ...]
    early_stopping_patience: int
    reduce_lr_patience: int
    profile: str


PROTOCOLS = {
    "quick": Protocol("quick", 5, 25, 1e-3, ((1.0, 1.0),), 3, 2, "fast"),
    "intensive": Protocol("intensive", 50, 16, 1e-5, ((0.0, 0.1), (0.3, 0.3), (1.0, 0.6)), 8, 3, "intensive"),
}


@dataclass(frozen=True)
class TrainConfig:
    condition: str
    architecture: str
    data: Path
    protocol: str = "quick"
    layout: str = "folders"
    out: Path = Path("models")
    registry: Path | None = None
    register: bool = False
    activate: bool = False
    epochs: int | None = None
    patience: int | None = None  # early-stopping patience; default: the protocol's
    image_size: int = 224
    batch_size: int | None = None
    learning_rate: float | None = None  # Adam's initial rate; default: the protocol's
    weights: str = "none"
    seed: int = 0
    oversample: bool = False
    augment: bool = True
    # Lesion-mask supervision (xray_ai.training.heads): the weight of the lesion-map loss;
    # None = heads.DEFAULT_LESION_WEIGHT where the training split has lesion masks, else off; 0 = off.
    lesion_weight: float | None = None
    # Multi-task: the loss weight of an auxiliary body-part head (xray_ai.serving.body_part); 0 = off.
    body_part_weight: float = 0.0
    model_id: str | None = None
    # Start from this saved classifier instead of `build_classifier(architecture, weights)`;
    # with epochs=0 it is evaluated, calibrated and registered as it is (a model fitted by
    # models/fit_on_gpu.py, whose `<stem>.fit.json` record then names how it was fitted);
    # with epochs, fitted further (at another image_size if asked: initial_model._at_input_size).
    initial_model: Path | None = None
    dataset_name: str | None = None
    dataset_version: str = ""
    synthetic: bool | None = None
    intended_use: str | None = None

    @property
    def evaluate_only(self) -> bool:
        """An initial model evaluated as it is (epochs 0), not fitted here."""
        return self.epochs == 0


@dataclass(frozen=True)
class TrainOutcome:
    model_id: str
    path: Path
    sha256: str
    threshold: float
    threshold_method: str
    metrics: dict[str, Any]
    seconds: float
    epochs_run: int
    history: dict[str, list[float]] = field(default_factory=dict)


def run_settings(config: TrainConfig) -> tuple[Protocol, int, int, float]:
    """(protocol, epochs, batch size, learning rate) of a run: the config's, else the protocol's.

    Raises:
        ValueError: epochs below 1, or 0 without an initial model (nothing to evaluate).
    """
    protocol = PROTOCOLS[config.protocol]
    epochs = protocol.epochs if config.epochs is None else config.epochs
    if epochs < 0 or (epochs == 0 and config.initial_model is None):
        raise ValueError(f"--epochs {epochs}: must be at least 1 (0 only with --initial-model)")
    return protocol, epochs, config.batch_size or protocol.batch_size, config.learning_rate or protocol.learning_rate
