"""A model's pooled Grad-CAM features on a dataset's images, read through the training
pipeline, and the model's input check fitted on them.

The input check (xray_ai.serving.input_check) asks at inference whether an image's pooled
features lie where the training images' did. `fit_input_check` is the one place that fits
it: `train` calls it after saving a model, and `python -m xray_ai fit-input-check` for a
registered one. The images are read by `pipeline.make_dataset` (as training reads them:
gray in [0, 1], resized as inference resizes; tests check the two agree), so a model whose
registry entry prepares its input otherwise ("preprocessing" other than "unit") does not
get a check from here.

TensorFlow (Grad-CAM, tf.data) is imported inside the functions, so that importing the
module does not import it.
"""

from __future__ import annotations

import numpy as np

from xray_ai.registry import InputSpec
from xray_ai.serving import input_check
from xray_ai.training.pipeline import make_dataset

__all__ = ["pooled_features", "input_check_source", "fit_input_check"]


def pooled_features(model, df, spec: InputSpec, *, cam=None) -> np.ndarray:
    """(N, K) pooled Grad-CAM features of `df`'s images (in `df`'s order), read through the
    training pipeline. `cam`: an `xray_ai.explain.gradcam.GradCam` of `model` to reuse (its
    compiled function is traced once per model); default a new one.

    Raises:
        ValueError: `df` has no rows (`make_dataset`).
    """
    if cam is None:
        from xray_ai.explain.gradcam import GradCam

        cam = GradCam(model)
    ds = make_dataset(df, spec, batch_size=64, training=False, cache=False)
    return np.concatenate([cam(x.numpy()).pooled_features for x, _ in ds])


def input_check_source(data_name: str, train_df, valid_df) -> str:
    """What an input check was fitted on, as its `source` says it: 'NAME (train N, valid M images)'."""
    return f"{data_name} (train {len(train_df)}, valid {len(valid_df)} images)"


def fit_input_check(model, train_df, valid_df, spec: InputSpec, model_sha256: str, source: str, *,
                    percentile: float = input_check.DEFAULT_PERCENTILE) -> input_check.FeatureDistribution:
    """The model's input check: fitted on its pooled Grad-CAM features of `train_df`'s
    images, the threshold at `percentile` of `valid_df`'s distances.

    Args:
        model: the keras classifier (the file whose sha256 is `model_sha256`).
        train_df, valid_df: frames with `path` and `label` (e.g. from `splits.split_dataset`).
        spec: the model's input (height, width, channels).
        model_sha256: the model file's sha256, stored so that the check is never applied to
            another model.
        source: what it was fitted on, in words (`input_check_source`).
        percentile: share of validation images (in %) below the threshold.

    Raises:
        ValueError: fewer than 2 training or 20 validation images (`input_check.fit`), or an
            empty frame.
    """
    from xray_ai.explain.gradcam import GradCam

    cam = GradCam(model)  # one for both splits: its compiled function is traced once
    return input_check.fit(pooled_features(model, train_df, spec, cam=cam),
                           pooled_features(model, valid_df, spec, cam=cam), model_sha256, source, percentile)
