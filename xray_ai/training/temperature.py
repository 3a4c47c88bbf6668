"""Calibrating a fitted model: a temperature fitted on the validation split, kept only where
it helps there (`calibration.calibrate_if_helpful`), then folded into the model's logit layer.

Folded, the saved model itself serves the calibrated probability (every backend, the heatmap
unchanged up to scale), and the operating point chosen afterwards is chosen on the
probabilities users will see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xray_ai.registry import InputSpec
from xray_ai.training import calibration
from xray_ai.training.pipeline import make_dataset

__all__ = ["predict", "fold_temperature", "Calibration", "calibrate"]


def predict(model, df, spec: InputSpec, batch_size: int) -> np.ndarray:
    """The model's probabilities (float64, in `df`'s order) for `df`'s images, read through
    the training pipeline."""
    ds = make_dataset(df, spec, batch_size=batch_size, training=False, cache=False)
    return model.predict(ds.map(lambda x, y: x), verbose=0).ravel().astype(np.float64)


def fold_temperature(model, temperature: float) -> None:
    """sigmoid(z / T) from the model itself: the logit layer's kernel and bias divided by T."""
    layer = model.get_layer("logit")
    layer.set_weights([w / temperature for w in layer.get_weights()])


@dataclass(frozen=True)
class Calibration:
    """The temperature (1.0: none kept), the validation ECE before and after it, and the
    validation labels and (calibrated) probabilities the operating point is chosen on."""

    temperature: float
    valid_ece_before: float
    valid_ece_after: float
    y_valid: np.ndarray
    p_valid: np.ndarray


def calibrate(model, valid_df, spec: InputSpec, batch_size: int) -> Calibration:
    """Fit a temperature on `valid_df` and, when one is kept, fold it into `model` (which
    changes it in place)."""
    y_valid, p_valid = valid_df["label"].to_numpy(), predict(model, valid_df, spec, batch_size)
    temperature, ece_before, ece_after = calibration.calibrate_if_helpful(y_valid, p_valid)
    if temperature != 1.0:
        fold_temperature(model, temperature)
        p_valid = predict(model, valid_df, spec, batch_size)  # what the folded model serves
    return Calibration(temperature, ece_before, ece_after, y_valid, p_valid)
