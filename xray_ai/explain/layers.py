"""Which layers a CAM reads: the last 4-D layer, the last layer of each output stride, and the
chain of layers a `/`-joined path names, all found inside nested models too.

A path names a layer through the models that contain it, outermost first: "conv2" in a flat
model, "densenet121/relu" for a backbone wrapped as an inner model. tf-keras-vis' find_layer
walks layers in reverse and recurses into nested models; so does `find_target_layer`.
`xray_ai.explain.gradcam` re-exports these names (its public API).
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["find_target_layer", "resolve_layer_path", "layers_by_stride", "is_container", "final_layer",
           "output_rank"]

# Strides looked for (powers of two up to 64: every backbone here ends at 32).
_STRIDES = (1, 2, 4, 8, 16, 32, 64)


def is_container(layer: Any) -> bool:
    """A (nested) model, whose layers a path can name."""
    return isinstance(layer, keras.Model)


def output_rank(layer: keras.layers.Layer) -> int | None:
    """The rank of a layer's output; None when it has no single output (never called, or shared)."""
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # never called, or called more than once
        return None


def find_target_layer(model: keras.Model) -> str:
    """The layer Grad-CAM uses: the last one with a rank-4 (N, h, w, K) output.

    Layers are walked from the output backwards and nested models are searched
    recursively, so for a backbone wrapped as an inner model the answer is a
    `/`-joined path such as "densenet121/relu".

    Raises:
        ValueError: no layer has a 4-D output (naming the model).
    """
    path = _search(model)
    if path is None:
        raise ValueError(f"model {model.name!r} has no layer with a 4-D (N, h, w, K) output for Grad-CAM")
    return "/".join(path)


def _search(model: keras.Model) -> list[str] | None:
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if is_container(layer):
            inner = _search(layer)
            if inner is not None:
                return [layer.name, *inner]
            continue
        if output_rank(layer) == 4:
            return [layer.name]
    return None


def resolve_layer_path(model: keras.Model, path: str) -> list[keras.layers.Layer]:
    """The chain of layers a `/`-joined path (as `find_target_layer` gives) names, outermost
    first; ValueError quoting the bad part."""
    chain, current = [], model
    for part in path.split("/"):
        if not is_container(current):
            raise ValueError(f"layer path {path!r}: {current.name!r} is not a model, cannot contain {part!r}")
        try:
            current = current.get_layer(part)
        except ValueError:
            names = ", ".join(layer.name for layer in current.layers[-8:])
            raise ValueError(f"layer path {path!r}: no layer {part!r} in {current.name!r} (last layers: {names})") from None
        chain.append(current)
    return chain


def final_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer producing the model's output, descending into nested models."""
    layer = model.layers[-1]
    return final_layer(layer) if is_container(layer) else layer


def layers_by_stride(model: keras.Model) -> dict[int, str]:
    """The last layer of each output stride: {stride: `/`-joined path}, coarsest stride first.

    A layer's stride is the model's input size over its output's: an output of ceil(H / s)
    (or floor) rows and as many columns for H / s, s a power of two. Layers are taken in
    graph order, recursing into nested models, so each stride's entry is its last layer
    (for MobileNetV2 at 224 px: 32 -> out_relu, 16 -> block_13_expand_relu, 8 ->
    block_6_expand_relu). Padding layers (an output one or two cells larger) never match;
    nor does a layer whose output size is not static. The coarsest entry is normally
    `find_target_layer`'s layer.

    Raises:
        ValueError: the model's input has no static height and width.
    """
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise ValueError(f"model {model.name!r}: input {tuple(shape)} has no static height and width to measure strides by")
    found: dict[int, str] = {}
    _walk_strides(model, int(shape[1]), int(shape[2]), [], found)
    return dict(sorted(found.items(), reverse=True))


def _walk_strides(model: keras.Model, height: int, width: int, prefix: list[str], found: dict[int, str]) -> None:
    for layer in model.layers:
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.ZeroPadding2D)):
            continue
        if is_container(layer):
            _walk_strides(layer, height, width, [*prefix, layer.name], found)
            continue
        if output_rank(layer) != 4:
            continue
        h, w = layer.output.shape[1:3]
        if h is None or w is None:
            continue
        for s in _STRIDES:
            if h in (-(-height // s), height // s) and w in (-(-width // s), width // s):
                found[s] = "/".join([*prefix, layer.name])
                break
