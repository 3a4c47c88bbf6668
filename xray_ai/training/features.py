"""A model's pooled Grad-CAM features on a dataset's images, read through the training
pipeline, and the model's input check fitted on them.

The input check (xray_ai.serving.input_check) asks at inference whether an image's pooled
features lie where the training images' did. `fit_input_check` is the one place that fits
it: `train` calls it after saving a model (features from `pipeline_features`: images read by
`pipeline.make_dataset` as training reads them, gray in [0, 1], resized as inference
resizes; tests check the two agree), and `python -m xray_ai fit-input-check` for a
registered one (features as inference computes them).

TensorFlow (Grad-CAM, tf.data) is imported inside the functions, so that importing the
module does not import it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from xray_ai.registry import InputSpec
from xray_ai.serving import input_check
from xray_ai.training.pipeline import make_dataset

__all__ = ["pooled_features", "pipeline_features", "fit_input_check"]


def pooled_features(model, df, spec: InputSpec, *, cam=None) -> np.ndarray:
    """(N, K) pooled Grad-CAM features of `df`'s images (in `df`'s order), read through the
    training pipeline. `cam`: an `xray_ai.explain.gradcam.GradCam` of `model` to reuse (its
    compiled function is traced once per model); default a new one.

    Raises:
        ValueError: `df` has no rows (`make_dataset`).
    """
    if cam is None:
        from xray_ai.explain.gradcam import GradCam  # imports keras

        cam = GradCam(model)
    ds = make_dataset(df, spec, batch_size=64, training=False, cache=False)
    return np.concatenate([cam(x.numpy()).pooled_features for x, _ in ds])


def pipeline_features(model, spec: InputSpec) -> Callable[[pd.DataFrame], np.ndarray]:
    """`features_of` for a keras model in memory (what `train` has): pooled Grad-CAM features
    of a frame's images read through the training pipeline, one GradCam for every frame (its
    compiled function is traced once)."""
    from xray_ai.explain.gradcam import GradCam  # imports keras

    cam = GradCam(model)
    return lambda df: pooled_features(model, df, spec, cam=cam)


def fit_input_check(features_of: Callable[[pd.DataFrame], np.ndarray], train_df: pd.DataFrame,
                    valid_df: pd.DataFrame, model_sha256: str, data_name: str, *,
                    percentile: float = input_check.DEFAULT_PERCENTILE) -> input_check.FeatureDistribution:
    """The model's input check: fitted on the pooled features of `train_df`'s images, the
    threshold at `percentile` of `valid_df`'s distances.

    The one fitting path for `train` (features from `pipeline_features`) and for
    `python -m xray_ai fit-input-check` on a registered model (features through
    `xray_ai.analysis.pooled_features`, as inference computes them, on either backend).

    Args:
        features_of: frame -> (N, K) pooled features of its images, in its order.
        train_df, valid_df: frames with `path` (e.g. from `splits.split_dataset`).
        model_sha256: the model file's sha256, stored so that the check is never applied to
            another model.
        data_name: the dataset's name; the check's `source` reads "NAME (train N, valid M images)".
        percentile: share of validation images (in %) below the threshold.

    Raises:
        ValueError: fewer than 2 training or 20 validation images (`input_check.fit`), or an
            empty frame.
    """
    source = f"{data_name} (train {len(train_df)}, valid {len(valid_df)} images)"
    return input_check.fit(features_of(train_df), features_of(valid_df), model_sha256, source, percentile)
