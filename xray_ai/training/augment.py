"""Training-time augmentation: its settings (`AugmentConfig`) and the per-image, seeded,
stateless warp and photometric changes applied to a batch inside the tf graph.

`xray_ai.training.pipeline.make_dataset` applies it; models/fit_on_gpu.py reproduces the
same warp with OpenCV for machines without TensorFlow. TensorFlow is imported only when a
batch is augmented, so the settings can be built and checked without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = ["AugmentConfig", "augment_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, applied per image inside the tf graph.

    Defaults follow the project's source documents (rotation 20 degrees, shifts and zoom 20 %,
    horizontal flip; blur, shear and noise from source document 000, the MURA study of a
    tuned MobileNetV2, off by default). Rotation, shift, zoom, shear and flip are composed
    into one affine warp (one resampling, not four).

    Attributes:
        rotation_degrees: angle drawn uniformly from [-r, r].
        shift_fraction: shift drawn from [-s, s] of the width and of the height.
        zoom_fraction: isotropic scale drawn from [1 - z, 1 + z] (>1 zooms in).
        horizontal_flip: mirror half of the images. Turn off where laterality matters
            (chest: a mirrored heart is not a normal chest).
        brightness: additive offset drawn from [-b, b] (images are in [0, 1]).
        contrast: (x - mean) * f + mean, f drawn from [1 - c, 1 + c] (keras RandomContrast).
        blur: blend each image with its Gaussian blur (sigma `blur_sigma` pixels at the
            model's input size) by a weight drawn from [0, 1].
        shear: x-shear angle drawn from [-shear_degrees, shear_degrees].
        noise: add Gaussian noise with a standard deviation drawn from [0, noise_std].
        fill_mode: how the warp fills outside the image: 'nearest' (edge pixels, as
            Keras' ImageDataGenerator), 'constant' (black), 'reflect' or 'wrap'.
    """

    rotation_degrees: float = 20.0
    shift_fraction: float = 0.2
    zoom_fraction: float = 0.2
    horizontal_flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    blur: bool = False
    blur_sigma: float = 1.0
    shear: bool = False
    shear_degrees: float = 10.0
    noise: bool = False
    noise_std: float = 0.02
    fill_mode: str = "nearest"

    def __post_init__(self) -> None:
        limits = {"rotation_degrees": (0, 180), "shift_fraction": (0, 1), "zoom_fraction": (0, 0.9),
                  "brightness": (0, 1), "contrast": (0, 1), "blur_sigma": (0.1, 10),
                  "shear_degrees": (0, 60), "noise_std": (0, 1)}
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"AugmentConfig.{name} must be a number in [{lo}, {hi}], got {value!r}")
        if self.fill_mode not in ("nearest", "constant", "reflect", "wrap"):
            raise ValueError(f"AugmentConfig.fill_mode must be nearest, constant, reflect or wrap, "
                             f"got {self.fill_mode!r}")

    @property
    def geometric(self) -> bool:
        return bool(self.rotation_degrees or self.shift_fraction or self.zoom_fraction
                    or self.horizontal_flip or (self.shear and self.shear_degrees))


def augment_batch(x: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig,
                   mask: tf.Tensor | None = None) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
    """x: float32 (B, H, W, 1) in [0, 1]; seed: int64 shape (2,). Per-image random, stateless.

    `mask` (B, H, W, 1), when given, gets the same geometric warp (filled with 0 outside the
    image) and no photometric change; then (x, mask) is returned.
    """
    import tensorflow as tf

    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    seeds = tf.random.experimental.stateless_split(seed, num=10)

    def draw(i: int, lo: float, hi: float) -> tf.Tensor:
        return tf.random.stateless_uniform([b], seeds[i], lo, hi)

    if cfg.geometric:
        theta = draw(0, -1, 1) * math.radians(cfg.rotation_degrees)
        zoom = draw(1, 1 - cfg.zoom_fraction, 1 + cfg.zoom_fraction)
        tx = draw(2, -1, 1) * cfg.shift_fraction * w
        ty = draw(3, -1, 1) * cfg.shift_fraction * h
        tan = tf.tan(draw(4, -1, 1) * math.radians(cfg.shear_degrees)) if cfg.shear else tf.zeros([b])
        flip = tf.where(draw(5, 0, 1) < 0.5, -1.0, 1.0) if cfg.horizontal_flip else tf.ones([b])
        cos, sin = tf.cos(theta), tf.sin(theta)
        # Forward map about the centre: zoom * Rotation @ Shear_x @ Flip_x, then shift. Its
        # determinant is zoom^2 * flip; the projective op wants the output->input map.
        a, bb = zoom * cos * flip, zoom * (cos * tan - sin)
        c, d = zoom * sin * flip, zoom * (sin * tan + cos)
        det = zoom * zoom * flip
        i00, i01, i10, i11 = d / det, -bb / det, -c / det, a / det
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        ox, oy = cx + tx, cy + ty
        transforms = tf.stack([i00, i01, cx - (i00 * ox + i01 * oy),
                               i10, i11, cy - (i10 * ox + i11 * oy),
                               tf.zeros([b]), tf.zeros([b])], axis=1)
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=[h, w], fill_value=0.0,
            interpolation="BILINEAR", fill_mode=cfg.fill_mode.upper())
        if mask is not None:
            mask = tf.raw_ops.ImageProjectiveTransformV3(
                images=mask, transforms=transforms, output_shape=[h, w], fill_value=0.0,
                interpolation="BILINEAR", fill_mode="CONSTANT")
    if cfg.blur:
        radius = int(math.ceil(3 * cfg.blur_sigma))
        k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / cfg.blur_sigma) ** 2)
        k = k / k.sum()
        # Separable, as sums of shifted slices: on CPU a 1-channel conv2d is ~10x slower.
        padded = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
        rows = tf.add_n([float(k[i]) * padded[:, i:i + h, :, :] for i in range(2 * radius + 1)])
        blurred = tf.add_n([float(k[i]) * rows[:, :, i:i + w, :] for i in range(2 * radius + 1)])
        x = x + draw(6, 0, 1)[:, None, None, None] * (blurred - x)
    if cfg.contrast:
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = (x - mean) * draw(7, 1 - cfg.contrast, 1 + cfg.contrast)[:, None, None, None] + mean
    if cfg.brightness:
        x = x + draw(8, -cfg.brightness, cfg.brightness)[:, None, None, None]
    if cfg.noise:
        std = draw(9, 0, cfg.noise_std)[:, None, None, None]
        x = x + std * tf.random.stateless_normal(tf.shape(x), tf.random.experimental.stateless_fold_in(seed, 99))
    x = tf.clip_by_value(x, 0.0, 1.0)
    return x if mask is None else (x, mask)
