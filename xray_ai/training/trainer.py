"""Training: the quick and intensive protocols, evaluation on held-out data, registration.

One function, `train(config)`, does the whole run that `python -m xray_ai train` starts:
read the dataset (MURA layout or class folders), split by patient when the dataset has
no validation split, build the flat classifier, fit with the protocol's optimiser and
callbacks and class weights, choose the operating point on the *validation* split only,
evaluate on the test split (falling back to validation, and saying so), save the
`.keras` file and, when asked, register and activate it.

Protocols (source 004): quick = 5 epochs, batch 25, Adam 1e-3, checkpoint on the
validation AUC, ReduceLROnPlateau, EarlyStopping. Intensive = up to 50 epochs, batch 16,
Adam 1e-5, gradual unfreezing of the backbone (head first, then the top of the backbone,
then all of it).

Lesion-mask supervision: where the training images carry lesion masks (the phantoms
do), a training-only head (a 1x1 convolution on the Grad-CAM layer, sigmoid) learns which
feature-map cells the lesion touches, next to the label. Trained from random weights on
a few thousand images, a classifier can memorise its training images instead of finding
the lesion (measured with MobileNetV2 on pneumonia phantoms at 96 px: train AUC 0.97,
validation 0.53); the masks say where to look. The head is dropped before saving, so
the shipped model has the same form (and the same Grad-CAM and ONNX paths) as any other.

Body-part head (multi-task, source 002; `body_part_weight` > 0, MURA layout): a softmax over
the training images' body parts on the pooled features, trained with the label. It is
saved beside the model as `<model>.bodypart.npz` and applied at inference to the pooled
features the analysis computes anyway (xray_ai.body_part); its test accuracy goes into the
metrics.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xray_ai.training import data as datamod
from xray_ai.serving import body_part
from xray_ai.training import evaluation
from xray_ai.serving import input_check
from xray_ai.registry import InputSpec, ModelEntry, TrainingData, load_registry, save_registry

__all__ = ["Protocol", "PROTOCOLS", "TrainConfig", "TrainOutcome", "train", "fit_stages", "Heads", "with_heads",
           "compile_for_training", "training_summary", "split_digest", "load_initial_model",
           "fit_record_path", "FIT_RECORD_SUFFIX"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Protocol:
    """Optimisation settings of one protocol.

    unfreeze: (fraction of backbone layers trainable, share of the epochs) stages; the
        quick protocol trains everything at once, the intensive one unfreezes gradually.
    """

    name: str
    epochs: int
    batch_size: int
    learning_rate: float
    unfreeze: tuple[tuple[float, float], ...]
    early_stopping_patience: int
    reduce_lr_patience: int
    profile: str


DEFAULT_LESION_WEIGHT = 5.0  # the shipped models' setting: the localisation drives the features early

PROTOCOLS = {
    "quick": Protocol("quick", 5, 25, 1e-3, ((1.0, 1.0),), 3, 2, "fast"),
    "intensive": Protocol("intensive", 50, 16, 1e-5, ((0.0, 0.1), (0.3, 0.3), (1.0, 0.6)), 8, 3, "intensive"),
}


@dataclass(frozen=True)
class TrainConfig:
    condition: str
    architecture: str
    data: Path
    protocol: str = "quick"
    layout: str = "folders"
    out: Path = Path("models")
    registry: Path | None = None
    register: bool = False
    activate: bool = False
    epochs: int | None = None
    patience: int | None = None  # early-stopping patience; default: the protocol's
    image_size: int = 224
    batch_size: int | None = None
    learning_rate: float | None = None  # Adam's initial rate; default: the protocol's
    weights: str = "none"
    seed: int = 0
    oversample: bool = False
    augment: bool = True
    # Lesion-mask supervision (module docstring): the weight of the lesion-map loss; None =
    # DEFAULT_LESION_WEIGHT where the training split has lesion masks, else off; 0 = off.
    lesion_weight: float | None = None
    # Multi-task: the loss weight of an auxiliary body-part head (xray_ai.body_part); 0 = off.
    body_part_weight: float = 0.0
    model_id: str | None = None
    # Start from this saved classifier instead of `build_classifier(architecture, weights)`;
    # with epochs=0 it is evaluated, calibrated and registered as it is (a model fitted by
    # models/fit_on_gpu.py, whose `<stem>.fit.json` record then names how it was fitted).
    initial_model: Path | None = None
    dataset_name: str | None = None
    dataset_version: str = ""
    synthetic: bool | None = None
    intended_use: str | None = None


@dataclass(frozen=True)
class TrainOutcome:
    model_id: str
    path: Path
    sha256: str
    threshold: float
    threshold_method: str
    metrics: dict[str, Any]
    seconds: float
    epochs_run: int
    history: dict[str, list[float]] = field(default_factory=dict)


def _progress_callback(total_epochs: int, stream: Any):
    """A Keras callback printing one line per epoch with elapsed time and time left."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = getattr(self, "start", time.perf_counter())  # keeps counting across stages

        def on_epoch_end(self, epoch, logs=None):
            done = epoch + 1
            elapsed = time.perf_counter() - self.start
            shown = " ".join(f"{k}={float(v):.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
            eta = elapsed / done * max(total_epochs - done, 0)
            print(f"epoch {done}/{total_epochs}  {shown}  elapsed {elapsed:.0f}s  eta <= {eta:.0f}s",
                  file=stream, flush=True)

    return Progress()


def _read_dataset(config: TrainConfig, negative: str, positive: str):
    if config.layout == "mura":
        return datamod.read_mura(config.data)
    if config.layout == "folders":
        return datamod.read_folders(config.data, negative, positive)
    raise ValueError(f"--layout must be mura or folders, got {config.layout!r}")


FIT_RECORD_SUFFIX = ".fit.json"  # beside a model fitted by models/fit_on_gpu.py


def fit_record_path(model_path: str | Path) -> Path:
    """`out/x.keras` -> `out/x.fit.json`: how models/fit_on_gpu.py fitted the model."""
    path = Path(model_path)
    return path.with_name(path.stem + FIT_RECORD_SUFFIX)


def split_digest(parts: dict, root: Path) -> str:
    """sha256 of which image (path relative to the dataset root) is in which split with which
    label: a model fitted on one machine is evaluated on another only on the same split."""
    root = Path(root).resolve()
    lines = sorted(f"{name}\t{Path(path).resolve().relative_to(root).as_posix()}\t{label}"
                   for name, df in parts.items() for path, label in zip(df["path"], df["label"]))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def load_initial_model(path: Path, spec: InputSpec):
    """A saved classifier to start from (`TrainConfig.initial_model`), checked against `spec`."""
    import keras

    if not Path(path).is_file():
        raise ValueError(f"--initial-model {path}: no such file")
    try:
        model = keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"--initial-model {path}: could not be loaded ({type(exc).__name__}: {exc})") from None
    have = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else None
    if have != (None, *spec.shape):
        raise ValueError(f"--initial-model {path}: takes input {have}, --image-size asks for {(None, *spec.shape)}")
    return model


def _fit_record(config: TrainConfig, parts: dict) -> dict | None:
    """The `<stem>.fit.json` written beside an initial model by models/fit_on_gpu.py, checked
    against this run: same architecture, input size and split (so the test split stays unseen)."""
    path = fit_record_path(config.initial_model)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("architecture") != config.architecture:
        raise ValueError(f"{path}: the model was fitted as {record.get('architecture')!r}, --arch says "
                         f"{config.architecture!r}")
    if record["training"].get("image_size") != config.image_size:
        raise ValueError(f"{path}: the model was fitted at {record['training'].get('image_size')} px, "
                         f"--image-size says {config.image_size}")
    digest = split_digest(parts, Path(config.data).resolve())
    if record.get("split_digest") != digest:
        raise ValueError(f"{path}: the model was fitted on other data or another split than {config.data} "
                         f"with --seed {config.seed} gives (split digest {digest[:12]}... against "
                         f"{str(record.get('split_digest'))[:12]}...); its test figures would not be held out")
    return record


def _splits(df, seed: int):
    """train / valid / test frames; re-split by patient when the dataset lacks a validation split."""
    present = set(df["split"])
    if "train" not in present or "valid" not in present:
        df = datamod.split_by_patient(df, valid_fraction=0.15, seed=seed, test_fraction=0.15)
    datamod.assert_no_patient_leakage(df)
    parts = {name: df[df["split"] == name].reset_index(drop=True) for name in ("train", "valid", "test")}
    if parts["train"].empty or parts["valid"].empty:
        raise ValueError("the dataset needs images in both a train and a valid split")
    for name in ("train", "valid"):
        if parts[name]["label"].nunique() < 2:  # e.g. a class folder named unlike the label
            only = "positive" if parts[name]["label"].iloc[0] == 1 else "negative"
            raise ValueError(f"the {name} split holds only {only} images; both classes are needed "
                             "(check that the class folders are named as the registry's labels)")
    return parts


def _describe_data(config: TrainConfig) -> TrainingData:
    """What the model was trained on, stated honestly: phantom datasets carry a manifest;
    a backbone that started from pretrained weights says so (ImageNet is training data too)."""
    data = _describe_dataset(config)
    if config.weights in (None, "none"):
        return data
    start = "ImageNet weights" if config.weights == "imagenet" else f"weights {Path(config.weights).name}"
    version = f"{data.version}; backbone pretrained: {start}" if data.version else f"backbone pretrained: {start}"
    return dataclasses.replace(data, version=version)


def _describe_dataset(config: TrainConfig) -> TrainingData:
    from xray_ai.phantoms.writers import MANIFEST

    manifest = Path(config.data) / MANIFEST
    if config.dataset_name:
        synthetic = bool(config.synthetic) if config.synthetic is not None else manifest.is_file()
        return TrainingData(config.dataset_name, config.dataset_version, synthetic)
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        return TrainingData(
            "synthetic phantoms",
            f"{info.get('generator_version')} seed {info.get('seed')} size {info.get('size')}",
            True,
        )
    if config.layout == "mura":
        return TrainingData("MURA v1.1 layout dataset", str(config.data), bool(config.synthetic))
    return TrainingData(f"class-folder dataset {Path(config.data).name}", config.dataset_version, bool(config.synthetic))


def _fold_temperature(model, temperature: float) -> None:
    """sigmoid(z / T) from the model itself: the logit layer's kernel and bias divided by T."""
    layer = model.get_layer("logit")
    layer.set_weights([w / temperature for w in layer.get_weights()])


def _set_trainable_fraction(model, fraction: float) -> None:
    """Unfreeze the top `fraction` of the backbone (layers between the input norm and the head)."""
    names = [layer.name for layer in model.layers]
    start = names.index("input_norm") + 1
    end = names.index("gap")
    backbone = model.layers[start:end]
    cut = len(backbone) - int(round(fraction * len(backbone)))
    for i, layer in enumerate(backbone):
        layer.trainable = i >= cut
    for layer in model.layers[end:]:
        layer.trainable = True


def _stage_epochs(protocol: Protocol, epochs: int) -> list[tuple[float, int]]:
    """(trainable fraction, epochs) per stage; at least one epoch each, summing to `epochs`."""
    stages = [(fraction, max(1, int(round(share * epochs)))) for fraction, share in protocol.unfreeze]
    stages = stages[-epochs:] if epochs < len(stages) else stages
    surplus = sum(n for _, n in stages) - epochs
    fraction, n = stages[-1]
    stages[-1] = (fraction, max(1, n - surplus))
    return stages


def _strategy():
    """MirroredStrategy on more than one GPU (tf.distribute), the default strategy otherwise."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def _predict(model, df, spec: InputSpec, batch_size: int) -> np.ndarray:
    ds = datamod.make_dataset(df, spec, batch_size=batch_size, training=False, cache=False)
    return model.predict(ds.map(lambda x, y: x), verbose=0).ravel().astype(np.float64)


def _pooled_features(cam, df, spec: InputSpec) -> np.ndarray:
    """(N, K) pooled Grad-CAM features of `df`'s images, read through the training pipeline
    (`cam`: an xray_ai.gradcam.GradCam of the model)."""
    ds = datamod.make_dataset(df, spec, batch_size=64, training=False, cache=False)
    return np.concatenate([cam(x.numpy()).pooled_features for x, _ in ds])


def _fit_input_check(model, parts: dict, spec: InputSpec, sha256: str, source: str):
    """The model's input check (xray_ai.input_check): its pooled Grad-CAM features on the
    training split, the threshold at the 99.5th percentile of the validation split's."""
    from xray_ai.explain.gradcam import GradCam

    cam = GradCam(model)
    return input_check.fit(_pooled_features(cam, parts["train"], spec), _pooled_features(cam, parts["valid"], spec),
                           sha256, source)


def _localisation(model, df, spec: InputSpec) -> dict[str, Any] | None:
    """Grad-CAM pointing game and energy inside the lesion mask on abnormal images with masks."""
    from xray_ai.explain.scores import lesion_cases
    from xray_ai.explain.gradcam import GradCam

    images, masks = lesion_cases(df, spec)
    if not images:
        return None
    cam = GradCam(model)
    heatmaps = [cam(x[None]).heatmaps[0] for x in images]
    return {
        "n": len(masks),
        "pointing_game": evaluation.pointing_game(heatmaps, masks),
        # within 15 px at 224 (the original game's tolerance), scaled to the input size
        "pointing_game_tolerant": evaluation.pointing_game(heatmaps, masks, evaluation.POINTING_TOLERANCE),
        "pointing_tolerance": evaluation.POINTING_TOLERANCE,
        "energy_inside": evaluation.energy_inside(heatmaps, masks),
        "target_layer": cam.target_layer,
    }


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


def body_part_head_of(fit_model, heads: Heads):
    """The trained body-part head as an `xray_ai.body_part.BodyPartHead` (sha256 filled in
    when saved), or None when the fit had none."""
    if not heads.body_parts:
        return None
    kernel, bias = fit_model.get_layer("body_part").get_weights()
    return body_part.BodyPartHead(heads.body_parts, kernel, bias, "")


def initial_body_part_head(initial_model: Path | None):
    """The body-part head saved beside an initial model (models/fit_on_gpu.py writes one), if any."""
    if initial_model is None:
        return None
    from xray_ai.serving.manager import file_sha256

    head, _ = body_part.load(body_part.sidecar_path(initial_model), file_sha256(Path(initial_model)))
    return head


def _body_part_accuracy(model, head, df, spec: InputSpec) -> dict[str, Any]:
    """The head's accuracy on the images of `df` with a known body part."""
    from xray_ai.explain.gradcam import GradCam

    df = df[df["body_part"].isin(head.classes)]
    if df.empty:
        return {"n": 0, "accuracy": None}
    predicted = [part for part, _ in head.predict(_pooled_features(GradCam(model), df, spec))]
    return {"n": len(df), "accuracy": float(np.mean(np.array(predicted) == df["body_part"].to_numpy()))}


def _lesion_weight(config: TrainConfig, train_df) -> float:
    """The lesion-map loss weight for this run: 0 (off) unless asked for or masks are there."""
    if config.lesion_weight is not None:
        if config.lesion_weight < 0:
            raise ValueError(f"lesion_weight must be >= 0, got {config.lesion_weight}")
        if config.lesion_weight and not train_df["mask_path"].notna().any():
            raise ValueError(f"{config.data}: lesion-mask supervision asked for, but no training image "
                             f"has a <stem>{datamod.MASK_SUFFIX} lesion mask")
        return float(config.lesion_weight)
    positives = train_df[train_df["label"] == 1]
    covered = positives["mask_path"].notna().mean() if len(positives) else 0.0
    return DEFAULT_LESION_WEIGHT if covered >= 0.5 else 0.0


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


def with_heads(model, lesion_weight: float = 0.0, body_parts: tuple[str, ...] | None = None,
               body_part_weight: float = 0.0):
    """(the model `fit` trains, its Heads): `model` itself when no head is on, else a model
    with outputs {probability[, lesion_map][, body_part]} sharing every layer with `model`,
    which is what gets saved.

    The lesion head (1x1 convolution, sigmoid) reads the layer Grad-CAM uses; the body-part
    head (dense, softmax) reads the pooled features the classifier's own head reads (layer
    "gap"), which is what `xray_ai.body_part` applies it to at inference.
    """
    import keras

    from xray_ai.explain.gradcam import find_target_layer

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
    """Compile the model `train` fits: Adam, binary cross-entropy on the label, AUC and
    accuracy; with training heads (`with_heads`) also their losses at their weights."""
    import keras

    label_metrics = [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]
    optimizer = keras.optimizers.Adam(learning_rate)
    if not heads.lesion_weight and not heads.body_part_weight:
        fit_model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=label_metrics)
        return
    loss, weights, metrics = {"probability": "binary_crossentropy"}, {"probability": 1.0}, {"probability": label_metrics}
    if heads.lesion_weight:
        loss["lesion_map"], weights["lesion_map"] = "binary_crossentropy", heads.lesion_weight
    if heads.body_part_weight:
        loss["body_part"], weights["body_part"] = "sparse_categorical_crossentropy", heads.body_part_weight
        metrics["body_part"] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    fit_model.compile(optimizer=optimizer, loss=loss, loss_weights=weights, metrics=metrics)


def training_summary(config: TrainConfig, protocol: Protocol, *, epochs_run: int, batch_size: int,
                     learning_rate: float, seconds: float, train_images: int, valid_images: int,
                     class_weights: dict, augmentation: str, heads: Heads) -> dict[str, Any]:
    """How a model was fitted, as `metrics.training` records it (`train` and
    models/fit_on_gpu.py, whose record `train --epochs 0` copies, write the same keys)."""
    return {
        "protocol": protocol.name, "epochs_run": epochs_run, "batch_size": batch_size, "learning_rate": learning_rate,
        "image_size": config.image_size, "weights": str(config.weights), "seconds": round(seconds, 1),
        "train_images": train_images, "valid_images": valid_images, "class_weights": class_weights,
        "seed": config.seed, "augmentation": augmentation, "lesion_mask_weight": heads.lesion_weight,
        "body_part_weight": heads.body_part_weight,
    }


def fit_stages(model, fit_model, train_data, valid_data, *, protocol: Protocol, epochs: int, learning_rate: float,
               heads: Heads, patience: int | None, stream: Any, callbacks: tuple = ()) -> tuple[dict, int, float]:
    """Fit `fit_model` (`with_heads(model, ...)`) stage by stage as the protocol says:
    checkpoint on the validation AUC, ReduceLROnPlateau, EarlyStopping; the best weights restored.

    `train_data` and `valid_data` are anything `keras.Model.fit` reads (the tf.data pipeline
    here; a `keras.utils.PyDataset` in `models/fit_on_gpu.py`) and shuffle themselves;
    `callbacks` are added to the protocol's.
    Returns (history, epochs run, seconds).
    """
    import keras

    # A longer early-stopping patience (from-scratch runs learn late) also delays LR decay.
    lr_patience = max(protocol.reduce_lr_patience, (patience or 0) // 3)
    monitor = heads.monitor
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        best = Path(tmp) / "best.weights.h5"
        checkpoint = keras.callbacks.ModelCheckpoint(str(best), monitor=monitor, mode="max",
                                                     save_best_only=True, save_weights_only=True)
        progress = _progress_callback(epochs, stream)
        history: dict[str, list[float]] = {}
        done = 0
        for fraction, n in _stage_epochs(protocol, epochs):
            _set_trainable_fraction(model, fraction)
            compile_for_training(fit_model, learning_rate, heads)
            print(f"stage: backbone {fraction:.0%} trainable, epochs {done + 1}-{done + n}", file=stream, flush=True)
            fit = fit_model.fit(
                train_data, validation_data=valid_data, epochs=done + n, initial_epoch=done, verbose=0,
                shuffle=False,  # the data shuffles itself (seeded, per epoch)
                callbacks=[
                    checkpoint, progress,
                    keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.3,
                                                      patience=lr_patience),
                    keras.callbacks.EarlyStopping(monitor=monitor, mode="max", restore_best_weights=True,
                                                  patience=patience or protocol.early_stopping_patience),
                    *callbacks,
                ],
            )
            for key, values in fit.history.items():
                history.setdefault(key, []).extend(float(v) for v in values)
            done += len(fit.history.get("loss", []))
            if fit_model.stop_training:
                break
        if best.exists():
            fit_model.load_weights(str(best))  # `model` shares these layers
    return history, done, time.perf_counter() - start


def train(config: TrainConfig, stream: Any = None) -> TrainOutcome:
    """Train, evaluate, save and (optionally) register one model. See the module docstring.

    Progress goes to `stream` (default: standard error), one line per epoch.
    """
    stream = stream or sys.stderr
    import keras

    from xray_ai.training.architectures import build_classifier
    from xray_ai.serving.manager import file_sha256

    protocol = PROTOCOLS[config.protocol]
    epochs = protocol.epochs if config.epochs is None else config.epochs
    if epochs < 0 or (epochs == 0 and config.initial_model is None):
        raise ValueError(f"--epochs {epochs}: must be at least 1 (0 only with --initial-model)")
    batch_size = config.batch_size or protocol.batch_size
    learning_rate = config.learning_rate or protocol.learning_rate
    registry = load_registry(config.registry)
    condition = registry.condition(config.condition)
    parts = _splits(_read_dataset(config, condition.negative_label, condition.positive_label), config.seed)
    train_df = datamod.oversample_minority(parts["train"], config.seed) if config.oversample else parts["train"]
    spec = InputSpec(config.image_size, config.image_size, 3)
    print(f"data: train {len(train_df)} ({int(train_df['label'].sum())} positive), valid {len(parts['valid'])}, "
          f"test {len(parts['test'])} images", file=stream, flush=True)

    fitted = _fit_record(config, parts) if config.initial_model is not None else None
    lesion_weight = _lesion_weight(config, train_df)
    keras.utils.set_random_seed(config.seed)
    with _strategy().scope():
        if config.initial_model is not None:
            model = load_initial_model(config.initial_model, spec)
        else:
            model = build_classifier(config.architecture, spec.shape, weights=config.weights)
        # Fit a wrapper that shares `model`'s layers: `model` itself is never compiled, so the
        # saved file holds no optimizer state (a third of its size for nothing at inference).
        fit_model, heads = with_heads(model, lesion_weight, body_parts_of(train_df, config.body_part_weight),
                                      config.body_part_weight)
    if heads.grid:
        print(f"lesion-mask supervision: weight {lesion_weight:g}, {heads.grid[0]}x{heads.grid[1]} grid",
              file=stream, flush=True)
    if heads.body_parts:
        print(f"body-part head: weight {heads.body_part_weight:g}, {', '.join(heads.body_parts)}", file=stream, flush=True)
    weights = datamod.class_weights(train_df["label"])
    if epochs == 0:
        history, done, seconds = {}, 0, 0.0
        print(f"no fitting (--epochs 0): evaluating {config.initial_model} as it is", file=stream, flush=True)
    else:
        augment = datamod.AugmentConfig() if config.augment else None
        train_ds = datamod.make_dataset(train_df, spec, batch_size=batch_size, training=True, augment=augment,
                                        seed=config.seed, class_weight=weights, lesion_grid=heads.grid,
                                        body_parts=heads.body_parts)
        valid_ds = datamod.make_dataset(parts["valid"], spec, batch_size=batch_size, training=False,
                                        lesion_grid=heads.grid, body_parts=heads.body_parts)
        history, done, seconds = fit_stages(
            model, fit_model, train_ds, valid_ds, protocol=protocol, epochs=epochs, learning_rate=learning_rate,
            heads=heads, patience=config.patience, stream=stream)
    part_head = body_part_head_of(fit_model, heads) if epochs else initial_body_part_head(config.initial_model)

    # Temperature scaling, fitted on validation and kept only where it helps there; then
    # folded into the logit layer, so that the saved model itself serves the calibrated
    # probability (every backend, the heatmap unchanged up to scale) and the operating point
    # below is chosen on the probabilities users will see.
    y_valid, p_valid = parts["valid"]["label"].to_numpy(), _predict(model, parts["valid"], spec, batch_size)
    temperature, ece_before, ece_after = evaluation.calibrate_if_helpful(y_valid, p_valid)
    if temperature != 1.0:
        _fold_temperature(model, temperature)
        p_valid = _predict(model, parts["valid"], spec, batch_size)
    # Operating point from the validation split only; figures from the held-out test split.
    threshold, method = evaluation.choose_threshold(y_valid, p_valid, "youden")
    high_sens = evaluation.choose_threshold(y_valid, p_valid, "sensitivity", target=0.9)
    eval_name = "test" if not parts["test"].empty else "valid"
    eval_df = parts[eval_name]
    y_eval = eval_df["label"].to_numpy()
    p_eval = p_valid if eval_name == "valid" else _predict(model, eval_df, spec, batch_size)
    metrics = evaluation.evaluation_report(
        y_eval, p_eval, threshold, split=eval_name,
        study_ids=eval_df["study_id"].to_numpy(),
        body_parts=eval_df["body_part"].to_numpy() if eval_df["body_part"].notna().any() else None,
        seed=config.seed,
    )
    if eval_name == "valid":
        metrics["note"] = "no test split: measured on the validation split that also chose the threshold (optimistic)"
    metrics["high_sensitivity_operating_point"] = {"threshold": high_sens[0], "method": high_sens[1]}
    metrics["temperature_scaling"] = {
        "temperature": temperature, "fitted_on": "valid", "valid_ece_before": ece_before, "valid_ece_after": ece_after,
        f"{eval_name}_ece_after": evaluation.reliability(y_eval, p_eval)["ece"],
        # folded into the saved logit layer: the served probability is the calibrated one
        "applied_at_inference": temperature != 1.0,
    }
    if part_head is not None:
        metrics["body_part"] = {"split": eval_name, **_body_part_accuracy(model, part_head, eval_df, spec),
                                "classes": list(part_head.classes)}
    localisation = _localisation(model, eval_df, spec)
    if localisation:
        metrics["localisation"] = localisation
    metrics["training"] = training_summary(
        config, protocol, epochs_run=done, batch_size=batch_size, learning_rate=learning_rate, seconds=seconds,
        train_images=len(train_df), valid_images=len(parts["valid"]), class_weights=weights,
        augmentation="seeds' defaults" if config.augment else "none", heads=heads)
    if config.initial_model is not None:
        initial = {"file": Path(config.initial_model).name, "sha256": file_sha256(Path(config.initial_model))}
        if epochs == 0:
            # Not fitted here: the figures of the fit are the fitting run's own, or unknown.
            metrics["training"] = dict(fitted["training"]) if fitted else {
                "fit": f"unknown: no {fit_record_path(config.initial_model).name} record beside the model"}
            metrics["training"]["evaluated_by"] = "train --epochs 0 (calibration, operating point, test figures)"
        metrics["training"]["initial_model"] = initial

    created = _dt.date.today().isoformat()
    model_id = config.model_id or f"{config.condition}-{config.architecture}-{protocol.profile}-{_dt.datetime.now():%Y%m%d%H%M}"
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{model_id}.keras"
    model.save(path)
    sha = file_sha256(path)
    (out / f"{model_id}.metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if part_head is not None:
        saved = body_part.save(dataclasses.replace(part_head, model_sha256=sha), body_part.sidecar_path(path))
        print(f"body-part head: {metrics['body_part']['split']} accuracy {metrics['body_part']['accuracy']:.3f} "
              f"-> {saved}", file=stream, flush=True)
    print(f"saved {path} (sha256 {sha[:12]}...); threshold {threshold:.3f} ({method}); "
          f"{eval_name} AUC {metrics.get('auc')}", file=stream, flush=True)
    try:
        check = _fit_input_check(model, parts, spec, sha, f"{Path(config.data).name} (train {len(parts['train'])}, "
                                                          f"valid {len(parts['valid'])} images)")
        print(f"input check: threshold {check.threshold:.3f} -> "
              f"{input_check.save(check, input_check.sidecar_path(path))}", file=stream, flush=True)
    except ValueError as exc:  # e.g. fewer than 20 validation images
        print(f"input check not fitted: {exc}", file=stream, flush=True)

    if config.register:
        # A model fitted elsewhere started from the weights its record names, not --weights.
        described = dataclasses.replace(config, weights=fitted["training"]["weights"]) if epochs == 0 and fitted else config
        trained_on = _describe_data(described)
        entry = ModelEntry(
            id=model_id, condition=config.condition, architecture=config.architecture,
            path=os.path.relpath(path.resolve(), registry.base_dir.resolve()), sha256=sha,
            version=created.replace("-", "."), input=spec, threshold=threshold, threshold_method=method,
            profile=protocol.profile, trained_on=trained_on,
            intended_use=config.intended_use or (
                "Demonstration on synthetic data; not for clinical use." if trained_on.synthetic
                else "Research use; validate locally before any clinical use."),
            metrics=metrics, created=created,
        )
        updated = registry.with_model(entry)
        if config.activate:
            updated = updated.with_active(config.condition, model_id)
        save_registry(updated, registry.path, action="train --register" + (" --activate" if config.activate else ""))
    return TrainOutcome(model_id, path, sha, threshold, method, metrics, seconds, done, history)
