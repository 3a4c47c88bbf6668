"""The fit: build the classifier with its training heads, fit it stage by stage as the
protocol says, and record how it was fitted.

`train` (xray_ai.training.trainer) feeds `fit_stages` the tf.data pipeline; models/fit_on_gpu.py
feeds it a `keras.utils.PyDataset`, so that both fit a model the same way.

Keras and TensorFlow are imported inside the functions, so that this module imports without
them (fit_on_gpu.py runs Keras on JAX, without TensorFlow).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from xray_ai.registry import InputSpec
from xray_ai.serving import artifacts
from xray_ai.training.augment import AugmentConfig
from xray_ai.training.config import Protocol, TrainConfig
from xray_ai.training.heads import Heads, compile_for_training, with_heads
from xray_ai.training.initial_model import load_initial_model
from xray_ai.training.pipeline import make_dataset

__all__ = ["stage_epochs", "set_trainable_fraction", "distribution_strategy", "build_for_training",
           "fit_stages", "fit_with_pipeline", "training_summary", "training_record"]


def stage_epochs(protocol: Protocol, epochs: int) -> list[tuple[float, int]]:
    """(trainable fraction, epochs) per stage; at least one epoch each, summing to `epochs`."""
    stages = [(fraction, max(1, int(round(share * epochs)))) for fraction, share in protocol.unfreeze]
    stages = stages[-epochs:] if epochs < len(stages) else stages
    surplus = sum(n for _, n in stages) - epochs
    fraction, n = stages[-1]
    stages[-1] = (fraction, max(1, n - surplus))
    return stages


def set_trainable_fraction(model, fraction: float) -> None:
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


def distribution_strategy():
    """MirroredStrategy on more than one GPU (tf.distribute), the default strategy otherwise."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def build_for_training(config: TrainConfig, spec: InputSpec, lesion_weight: float,
                       body_parts: tuple[str, ...] | None):
    """(model, the model to fit, its Heads): the classifier (`config.initial_model`, else a
    fresh `build_classifier`), seeded with `config.seed`, under the distribution strategy.

    The fit model shares `model`'s layers: `model` itself is never compiled, so the saved file
    holds no optimizer state (a third of its size for nothing at inference).
    """
    import keras

    from xray_ai.training.architectures import build_classifier  # imports keras

    keras.utils.set_random_seed(config.seed)
    with distribution_strategy().scope():
        if config.initial_model is not None:
            model = load_initial_model(config.initial_model, spec, resize=not config.evaluate_only)
        else:
            model = build_classifier(config.architecture, spec.shape, weights=config.weights)
        fit_model, heads = with_heads(model, lesion_weight, body_parts, config.body_part_weight)
    return model, fit_model, heads


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


def fit_stages(model, fit_model, train_data, valid_data, *, protocol: Protocol, epochs: int, learning_rate: float,
               heads: Heads, patience: int | None, stream: Any, callbacks: tuple = ()) -> tuple[dict, int, float]:
    """Fit `fit_model` (`with_heads(model, ...)`) stage by stage as the protocol says:
    checkpoint on the validation AUC, ReduceLROnPlateau, EarlyStopping; the best weights restored.

    `train_data` and `valid_data` are anything `keras.Model.fit` reads (the tf.data pipeline
    in `train`; a `keras.utils.PyDataset` in `models/fit_on_gpu.py`) and shuffle themselves;
    `callbacks` are added to the protocol's. Progress goes to `stream`, one line per epoch.
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
        for fraction, n in stage_epochs(protocol, epochs):
            set_trainable_fraction(model, fraction)
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


def fit_with_pipeline(model, fit_model, heads: Heads, train_df, valid_df, spec: InputSpec, *, config: TrainConfig,
                      protocol: Protocol, epochs: int, batch_size: int, learning_rate: float,
                      class_weight: dict[int, float], stream: Any) -> tuple[dict, int, float]:
    """`fit_stages` on the tf.data pipeline: the training split augmented (the defaults of
    `AugmentConfig`, unless `config.augment` is off), shuffled with `config.seed` and weighted
    by `class_weight`; the validation split in order. Returns (history, epochs run, seconds)."""
    augment = AugmentConfig() if config.augment else None
    train_ds = make_dataset(train_df, spec, batch_size=batch_size, training=True, augment=augment,
                            seed=config.seed, class_weight=class_weight, lesion_grid=heads.grid,
                            body_parts=heads.body_parts)
    valid_ds = make_dataset(valid_df, spec, batch_size=batch_size, training=False,
                            lesion_grid=heads.grid, body_parts=heads.body_parts)
    return fit_stages(model, fit_model, train_ds, valid_ds, protocol=protocol, epochs=epochs,
                      learning_rate=learning_rate, heads=heads, patience=config.patience, stream=stream)


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


def fitted_here() -> str:
    """What fitted a model in this process, for its record: `train` on TensorFlow, and the
    device (models/fit_on_gpu.py writes its own `fitted_with`)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU {gpus[0].name}" if gpus else f"CPU, {os.cpu_count()} cores"
    return f"xray_ai train, TensorFlow {tf.__version__}, {device}"


def training_record(config: TrainConfig, epochs: int, summary: dict[str, Any],
                    fit_record: dict | None) -> dict[str, Any]:
    """`metrics.training`: `summary` (`training_summary`) and what fitted it, for a model fitted
    here (from an initial model or not); for one evaluated as it is (`--epochs 0`), the fit's
    own figures from its record (`fit_record`, or "unknown" without one). Either way, with an
    initial model, its file and sha256."""
    if epochs:
        record = {**summary, "fitted_with": fitted_here()}
    else:
        # Not fitted here (epochs 0 needs an initial model): the fit's figures are the fitting
        # run's own, or unknown.
        record = dict(fit_record["training"]) if fit_record else {
            "fit": f"unknown: no {artifacts.fit_record_path(config.initial_model).name} record beside the model"}
        record["evaluated_by"] = "train --epochs 0 (calibration, operating point, test figures)"
    if config.initial_model is not None:
        record["initial_model"] = {"file": Path(config.initial_model).name,
                                   "sha256": artifacts.file_sha256(Path(config.initial_model))}
    return record
