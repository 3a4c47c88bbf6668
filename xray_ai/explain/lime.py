"""LIME: a linear surrogate over SLIC superpixels switched off to the image mean (Ribeiro et
al. 2016, the `lime` package); a map at the input's resolution.

Model-agnostic: it costs `lime_samples` forward passes (in batches of 50), which is why it
reports progress and why the app warns that it is slow.
"""

from __future__ import annotations

import numpy as np
from lime import lime_image  # the `lime` package: absolute imports never find this module
from lime.wrappers.scikit_image import SegmentationAlgorithm

from xray_ai.explain.base import MethodContext, MethodOutput, Progress, normalise_map

__all__ = ["lime_map"]

_BATCH_SIZE = 50  # perturbed images per forward pass


def lime_map(context: MethodContext, x: np.ndarray, progress: Progress | None = None) -> MethodOutput:
    """LIME of one model-ready batch of size 1: positive superpixel weights, painted on their pixels."""
    image = x[0].astype(np.float64)
    rgb = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)  # SLIC and lime want 3 channels
    done = [0]

    def classify(batch: np.ndarray) -> np.ndarray:
        batch = batch[..., : x.shape[-1]].astype(np.float32)  # back to the model's channels
        p = context.model(batch, training=False).numpy().reshape(-1)
        done[0] += len(batch)
        if progress:
            progress(min(1.0, done[0] / context.lime_samples))
        return np.stack([1.0 - p, p], axis=1)

    segmenter = SegmentationAlgorithm("slic", n_segments=context.lime_segments, compactness=10.0,
                                      sigma=1.0, start_label=0, channel_axis=-1)
    explanation = lime_image.LimeImageExplainer(random_state=0).explain_instance(
        rgb, classify, labels=(1,), top_labels=None, hide_color=float(rgb.mean()),
        num_samples=context.lime_samples, batch_size=_BATCH_SIZE, segmentation_fn=segmenter, random_seed=0,
    )
    segments = explanation.segments
    heat = np.zeros(segments.shape, np.float32)
    for segment, weight in explanation.local_exp[1]:
        heat[segments == segment] = max(weight, 0.0)  # evidence for the positive label only
    cam, flag = normalise_map(heat)
    return MethodOutput(cam, flag)
