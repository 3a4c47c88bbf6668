"""The CTR segmentation network: a small U-Net (four 2x2 max-pool levels, skip connections,
transposed-convolution upsampling) that turns a gray radiograph into two soft masks, the
cardiac silhouette and the internal thorax.

The model contract (what serving, export and training rely on):
    input   (N, S, S, 1) float32 in [0, 1] (preprocessing "unit"), S divisible by 16;
    output  "masks"     (N, S, S, 2) sigmoid probabilities: channel 0 heart, 1 thorax;
    output  "features"  (N, K) the bottleneck globally averaged: what the input check
            (xray_ai.serving.input_check) measures, as it measures a classifier's pooled
            feature map.
Only standard Keras layers, so that tf2onnx converts it as it is.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURE", "MASK_CHANNELS", "OUTPUT_MASKS", "OUTPUT_FEATURES", "build_ctr_unet"]

ARCHITECTURE = "ctr-unet"
MASK_CHANNELS = ("heart", "thorax")
OUTPUT_MASKS, OUTPUT_FEATURES = "masks", "features"


def build_ctr_unet(size: int = 192, widths: tuple[int, ...] = (16, 32, 64, 96, 128), name: str = "ctr_unet"):
    """A U-Net for `size` x `size` gray inputs; `widths`: filters per level, the last the bottleneck's."""
    import keras
    from keras import layers

    levels = len(widths) - 1
    if size % (2 ** levels):
        raise ValueError(f"the input size must be divisible by {2 ** levels}, not {size}")

    def block(x, filters: int, prefix: str):
        for k in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv{k}")(x)
            x = layers.BatchNormalization(name=f"{prefix}_bn{k}")(x)
            x = layers.ReLU(name=f"{prefix}_relu{k}")(x)
        return x

    image = keras.Input((size, size, 1), name="image")
    x, skips = image, []
    for level, filters in enumerate(widths[:-1]):
        x = block(x, filters, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = block(x, widths[-1], "bottleneck")
    features = layers.GlobalAveragePooling2D(name=OUTPUT_FEATURES)(x)
    for level in reversed(range(levels)):
        x = layers.Conv2DTranspose(widths[level], 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = block(x, widths[level], f"dec{level}")
    masks = layers.Conv2D(len(MASK_CHANNELS), 1, activation="sigmoid", name=OUTPUT_MASKS)(x)
    return keras.Model(image, {OUTPUT_MASKS: masks, OUTPUT_FEATURES: features}, name=name)
