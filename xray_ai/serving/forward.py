"""The one forward loop of analyze() and evaluation: images prepared as a model's entry says,
in runs of up to BATCH, through its analyzer; and what evaluation and the input check read of
it (each image's own probability, its pooled features), also over image files read a chunk
at a time (`over_image_files`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from xray_ai.images import load_image
from xray_ai.serving.loaded import LoadedEnsemble, LoadedModel
from xray_ai.serving.preprocessing import prepare_batch

__all__ = ["BATCH", "batches", "over_image_files", "predict_probabilities", "pooled_features"]

BATCH = 8  # views per compiled call: bounds memory for large studies


def predict_probabilities(loaded: LoadedModel | LoadedEnsemble, images: Sequence[np.ndarray]) -> np.ndarray:
    """Each image's own probability (images are not views of one study): what evaluation needs.

    Args:
        loaded: from ModelManager.get; for an ensemble, the mean of its members, each fed
            its own input size and preprocessing.
        images: float32 2-D arrays in [0, 1] (XRay.pixels), any sizes. A measurement
            model's probability is its CTR's calibration (xray_ai.measurement.analysis);
            an image whose outlines are not found scores 0.

    Returns:
        float64 array (N,) in [0, 1].
    """
    models = loaded.members if isinstance(loaded, LoadedEnsemble) else (loaded,)
    per_model = [
        np.concatenate([_probabilities(m, out, images[start:start + BATCH])
                        for start, _, out in batches(m, list(images))])
        for m in models
    ]
    return np.mean(per_model, axis=0)


def _probabilities(loaded: LoadedModel, out, images: Sequence[np.ndarray]) -> np.ndarray:
    if not (loaded.entry.is_measurement and not loaded.placeholder):
        return np.asarray(out.probabilities, np.float64)
    from xray_ai.measurement.ctr import measure_batch

    return measure_batch(loaded.entry, out.masks, [image.shape[1] for image in images])[1]


def pooled_features(loaded: LoadedModel, images: Sequence[np.ndarray]) -> np.ndarray:
    """Each image's Grad-CAM feature map, globally averaged as the head pools it: (N, K) float.
    What the input check (xray_ai.serving.input_check) is fitted on and measures.

    Raises:
        ValueError: the model gives no feature map (Grad-CAM is unavailable for it).
    """
    pooled = []
    for _, _, out in batches(loaded, list(images)):
        if out.pooled_features is None:
            raise ValueError(f"model {loaded.entry.id} gives no feature map (Grad-CAM is unavailable for it)")
        pooled.append(out.pooled_features)
    return np.concatenate(pooled)


def batches(loaded: LoadedModel, images: list[np.ndarray]):
    """(start, model-ready batch, analyzer output) for each run of up to BATCH images, each
    prepared as the model's entry says: the one forward loop of analyze and evaluation."""
    entry = loaded.entry
    for start in range(0, len(images), BATCH):
        batch = prepare_batch(images[start : start + BATCH], entry.input, entry.preprocessing)
        yield start, batch, loaded.analyzer(batch)


def over_image_files(paths: Iterable, per_chunk: Callable[[list[np.ndarray]], np.ndarray],
                     chunk: int = 32) -> np.ndarray:
    """per_chunk(pixels of up to `chunk` images) over a dataset's image files, read a chunk at
    a time so that memory stays bounded; the results concatenated, in the order of `paths`."""
    paths = list(paths)
    return np.concatenate([per_chunk([load_image(p).pixels for p in paths[start : start + chunk]])
                           for start in range(0, len(paths), chunk)])
