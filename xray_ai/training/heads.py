"""The training-only heads beside the label, the model that fits them, and its compilation.

Lesion-mask supervision: where the training images carry lesion masks (the phantoms
do), a training-only head (a 1x1 convolution on the Grad-CAM layer, sigmoid) learns which
feature-map cells the lesion touches, next to the label. Trained from random weights on
a few thousand images, a classifier can memorise its training images instead of finding
the lesion (measured with MobileNetV2 on pneumonia phantoms at 96 px: train AUC 0.97,
validation 0.53); the masks say where to look. The head is dropped before saving, so
the shipped model has the same form (and the same Grad-CAM and ONNX paths) as any other.

Body-part head (source document 002: MURA multi-task, fracture + body-part heads;
`body_part_weight` > 0, MURA layout): a softmax over the training images' body parts on the
pooled features, trained with the label. It is saved beside the model as `<model>.bodypart.npz`
and applied at inference to the pooled features the analysis computes anyway
(xray_ai.serving.body_part).

Keras is imported inside the functions that build models, so that reading a run's settings
does not import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from xray_ai.serving import body_part
from xray_ai.training.config import TrainConfig
from xray_ai.training.datasets import MASK_SUFFIX

__all__ = ["DEFAULT_LESION_WEIGHT", "Heads", "lesion_weight_for", "body_parts_of", "with_heads",
           "compile_for_training", "body_part_head_of"]

DEFAULT_LESION_WEIGHT = 5.0  # the shipped models' setting: the localisation drives the features early


@dataclass(frozen=True)
class Heads:
    """The training-only heads beside the label (module docstring): their loss weights
    (0 = off), the lesion grid (rows, cols) and the body-part classes, when on."""

    lesion_weight: float = 0.0
    grid: tuple[int, int] | None = None
    body_part_weight: float = 0.0
    body_parts: tuple[str, ...] | None = None

    @property
    def monitor(self) -> str:
        """The validation AUC's name in the fit's history."""
        return "val_probability_auc" if self.lesion_weight or self.body_part_weight else "val_auc"


def lesion_weight_for(config: TrainConfig, train_df) -> float:
    """The lesion-map loss weight for this run: 0 (off) unless asked for or masks are there
    (on, at DEFAULT_LESION_WEIGHT, where at least half the positive training images have one)."""
    if config.lesion_weight is not None:
        if config.lesion_weight < 0:
            raise ValueError(f"lesion_weight must be >= 0, got {config.lesion_weight}")
        if config.lesion_weight and not train_df["mask_path"].notna().any():
            raise ValueError(f"{config.data}: lesion-mask supervision asked for, but no training image "
                             f"has a <stem>{MASK_SUFFIX} lesion mask")
        return float(config.lesion_weight)
    positives = train_df[train_df["label"] == 1]
    covered = positives["mask_path"].notna().mean() if len(positives) else 0.0
    return DEFAULT_LESION_WEIGHT if covered >= 0.5 else 0.0


def body_parts_of(train_df, weight: float) -> tuple[str, ...] | None:
    """The body-part head's classes: the parts of the training images (None when it is off)."""
    if not weight:
        return None
    if weight < 0:
        raise ValueError(f"body_part_weight must be >= 0, got {weight}")
    parts = tuple(sorted(train_df["body_part"].dropna().unique()))
    if len(parts) < 2:
        raise ValueError("a body-part head needs training images of at least two body parts (a MURA layout, "
                         f"XR_<PART> folders); found {list(parts)}")
    return parts


def with_heads(model, lesion_weight: float = 0.0, body_parts: tuple[str, ...] | None = None,
               body_part_weight: float = 0.0):
    """(the model `fit` trains, its Heads): `model` itself when no head is on, else a model
    with outputs {probability[, lesion_map][, body_part]} sharing every layer with `model`,
    which is what gets saved.

    The lesion head (1x1 convolution, sigmoid) reads the layer Grad-CAM uses; the body-part
    head (dense, softmax) reads the pooled features the classifier's own head reads (layer
    "gap"), which is what `xray_ai.serving.body_part` applies it to at inference.
    """
    import keras

    from xray_ai.explain.gradcam import find_target_layer  # imports keras

    if not lesion_weight and not body_part_weight:
        return keras.Model(model.input, model.output), Heads()
    outputs, grid = {"probability": model.output}, None
    if lesion_weight:
        features = model.get_layer(find_target_layer(model)).output
        cells = keras.layers.Conv2D(1, 1, activation="sigmoid", name="lesion_conv")(features)
        outputs["lesion_map"] = keras.layers.Flatten(name="lesion_map")(cells)
        grid = (int(features.shape[1]), int(features.shape[2]))
    if body_part_weight:
        outputs["body_part"] = keras.layers.Dense(len(body_parts), activation="softmax", name="body_part")(
            model.get_layer("gap").output)
    heads = Heads(lesion_weight, grid, body_part_weight, tuple(body_parts) if body_part_weight else None)
    return keras.Model(model.input, outputs, name="with_training_heads"), heads


def compile_for_training(fit_model, learning_rate: float, heads: Heads) -> None:
    """Compile the model `fit_stages` fits: Adam, binary cross-entropy on the label, AUC and
    accuracy; with training heads (`with_heads`) also their losses at their weights."""
    import keras

    label_metrics = [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]
    optimizer = keras.optimizers.Adam(learning_rate)
    if not heads.lesion_weight and not heads.body_part_weight:
        fit_model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=label_metrics)
        return
    loss, weights = {"probability": "binary_crossentropy"}, {"probability": 1.0}
    metrics = {"probability": label_metrics}
    if heads.lesion_weight:
        loss["lesion_map"], weights["lesion_map"] = "binary_crossentropy", heads.lesion_weight
    if heads.body_part_weight:
        loss["body_part"], weights["body_part"] = "sparse_categorical_crossentropy", heads.body_part_weight
        metrics["body_part"] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    fit_model.compile(optimizer=optimizer, loss=loss, loss_weights=weights, metrics=metrics)


def body_part_head_of(fit_model, heads: Heads):
    """The trained body-part head as an `xray_ai.serving.body_part.BodyPartHead` (sha256
    filled in when saved), or None when the fit had none."""
    if not heads.body_parts:
        return None
    kernel, bias = fit_model.get_layer("body_part").get_weights()
    return body_part.BodyPartHead(heads.body_parts, kernel, bias, "")
