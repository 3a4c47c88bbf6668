"""Model-specific input preparation, driven by the registry entry (the only place it happens).

Internal images are float32 gray H x W in [0, 1]. A model declares in its registry entry
its input size, channel count and `preprocessing`:

- "unit": [0, 1]; the model normalises inside (every model this project trains).
- "imagenet_tf": [-1, 1]; "imagenet_torch": ImageNet mean/std on [0, 1];
  "imagenet_caffe": 0-255 minus the BGR ImageNet mean; "raw255": 0-255.
  These exist for models brought from elsewhere that expect keras.applications inputs.

No tensorflow here: numpy and OpenCV only.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .registry import InputSpec

__all__ = ["prepare_batch", "resize_image"]

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def resize_image(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D float image; area averaging when shrinking (no aliasing), bilinear otherwise."""
    h, w = pixels.shape
    if (h, w) == (height, width):
        return pixels.astype(np.float32, copy=False)
    shrinking = height < h and width < w
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(pixels.astype(np.float32, copy=False), (width, height), interpolation=interp)


def prepare_batch(images: Sequence[np.ndarray], spec: InputSpec, preprocessing: str = "unit") -> np.ndarray:
    """Stack images into one model-ready batch.

    Args:
        images: 2-D float32 arrays in [0, 1] (any sizes).
        spec: the entry's input (height, width, channels).
        preprocessing: the entry's `preprocessing` (see module docstring).

    Returns:
        float32 array (N, height, width, channels).
    """
    if not images:
        raise ValueError("no images to prepare")
    batch = np.empty((len(images), spec.height, spec.width, spec.channels), np.float32)
    for i, img in enumerate(images):
        if img.ndim != 2:
            raise ValueError(f"expected a 2-D gray image, got shape {img.shape}")
        gray = np.clip(resize_image(img, spec.height, spec.width), 0.0, 1.0)
        if spec.channels == 3:  # cv2's gray->RGB copy is ~15x faster than a broadcast assignment
            batch[i] = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
        else:
            batch[i] = gray[:, :, None]
    if preprocessing == "unit":
        return batch
    if preprocessing == "imagenet_tf":
        return batch * 2.0 - 1.0
    if preprocessing == "imagenet_torch":
        return (batch - _IMAGENET_MEAN[: spec.channels]) / _IMAGENET_STD[: spec.channels]
    if preprocessing == "imagenet_caffe":
        return batch * 255.0 - _CAFFE_MEAN_BGR[: spec.channels]
    if preprocessing == "raw255":
        return batch * 255.0
    raise ValueError(f"unknown preprocessing {preprocessing!r}")
