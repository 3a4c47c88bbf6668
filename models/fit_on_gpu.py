#!/usr/bin/env python3
"""Fit a classifier with Keras 3 on JAX or PyTorch: for a GPU machine without TensorFlow.

`python -m xray_ai train` reads its images through tf.data, so it needs TensorFlow; the GPU
machines lent to this project carry JAX and PyTorch instead. This script runs the same fit
as `train`: the same dataset readers and patient-level split, class weights, classifier,
training heads (lesion masks; body part with --body-part-weight) and losses, protocol
stages and callbacks (`fitting.fit_stages`). Only the
input differs: images are decoded with `load_image` and resized as inference resizes
(`preprocessing.resize_image`), and augmented on CPU threads by the affine warp and the
photometric changes of `augment.AugmentConfig`'s defaults, written here with OpenCV.

It writes OUT/MODEL_ID.keras, OUT/MODEL_ID.fit.json (how the model was fitted, and a
digest of which image is in which split) and, with a body-part head, OUT/MODEL_ID.bodypart.npz.
Then, on any machine with the project installed:

    python -m xray_ai train ... --initial-model OUT/MODEL_ID.keras --epochs 0 --register

calibrates the model, chooses its operating point on the validation split, evaluates it on
the held-out test split, fits its input check and registers it, through the code every
other model goes through. `train` refuses a model whose record names another split.

    KERAS_BACKEND=jax python models/fit_on_gpu.py --condition C --arch A --data DIR \\
        --layout mura|folders --image-size PX --epochs N --seed S --model-id ID --out DIR \\
        [--protocol quick|intensive] [--patience N] [--learning-rate X] [--batch-size N]
        [--weights imagenet|none] [--body-part-weight W] [--threads N] [--time-limit SECONDS]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

from xray_ai.images import load_image  # noqa: E402
from xray_ai.registry import InputSpec, load_registry  # noqa: E402
from xray_ai.serving import artifacts, body_part  # noqa: E402
from xray_ai.serving.preprocessing import resize_image  # noqa: E402
from xray_ai.training.architectures import build_classifier  # noqa: E402
from xray_ai.training.augment import AugmentConfig  # noqa: E402
from xray_ai.training.config import PROTOCOLS, TrainConfig  # noqa: E402
from xray_ai.training.datasets import read_dataset  # noqa: E402
from xray_ai.training.fitting import fit_stages, training_summary  # noqa: E402
from xray_ai.training.heads import body_part_head_of, body_parts_of, lesion_weight_for, with_heads  # noqa: E402
from xray_ai.training.pipeline import LESION_PRESENCE  # noqa: E402
from xray_ai.training.splits import body_part_targets, class_weights, split_dataset, split_digest  # noqa: E402


def read_images(df, spec: InputSpec, threads: int) -> np.ndarray:
    """(N, H, W) float32 in [0, 1]: each image as inference reads and resizes it."""
    def one(path: str) -> np.ndarray:
        return resize_image(load_image(path).pixels, spec.height, spec.width)

    with ThreadPoolExecutor(threads) as pool:
        return np.stack(list(pool.map(one, df["path"])))


def read_masks(df, spec: InputSpec, threads: int) -> np.ndarray:
    """(N, H, W) float32 lesion masks in [0, 1]; zeros where an image has none."""
    def one(path) -> np.ndarray:
        if not isinstance(path, str):
            return np.zeros((spec.height, spec.width), np.float32)
        return resize_image(load_image(path).pixels, spec.height, spec.width)

    with ThreadPoolExecutor(threads) as pool:
        return np.stack(list(pool.map(one, df["mask_path"])))


def warp(rng: np.random.Generator, cfg: AugmentConfig, h: int, w: int) -> np.ndarray:
    """The forward 2x3 affine map of `augment.augment_batch`: zoom * rotation @ shear @ flip
    about the centre, then the shift."""
    theta = rng.uniform(-1, 1) * math.radians(cfg.rotation_degrees)
    zoom = rng.uniform(1 - cfg.zoom_fraction, 1 + cfg.zoom_fraction)
    tx, ty = rng.uniform(-1, 1) * cfg.shift_fraction * w, rng.uniform(-1, 1) * cfg.shift_fraction * h
    tan = math.tan(rng.uniform(-1, 1) * math.radians(cfg.shear_degrees)) if cfg.shear else 0.0
    flip = -1.0 if cfg.horizontal_flip and rng.uniform() < 0.5 else 1.0
    cos, sin = math.cos(theta), math.sin(theta)
    a, b = zoom * cos * flip, zoom * (cos * tan - sin)
    c, d = zoom * sin * flip, zoom * (sin * tan + cos)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    return np.array([[a, b, cx + tx - (a * cx + b * cy)], [c, d, cy + ty - (c * cx + d * cy)]], np.float64)


_BORDER = {"nearest": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT,
           "reflect": cv2.BORDER_REFLECT_101, "wrap": cv2.BORDER_WRAP}


class Batches(keras.utils.PyDataset):
    """Batches of (images, targets[, weights]) as `pipeline.make_dataset` gives them: augmented
    and reshuffled every epoch when training, in order otherwise."""

    def __init__(self, images, labels, *, batch_size: int, channels: int, augment=None, seed: int = 0,
                 sample_weight=None, masks=None, lesion_weight=None, grid=None, body_parts=None, workers: int = 8):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=32)
        self.images, self.labels, self.masks = images, labels.astype(np.float32), masks
        self.batch_size, self.channels, self.augment, self.seed = batch_size, channels, augment, seed
        self.sample_weight, self.lesion_weight, self.grid = sample_weight, lesion_weight, grid
        self.body_parts = body_parts  # (index, weight) arrays from splits.body_part_targets, or None
        self.epoch = 0
        self._lock = threading.Lock()
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if self.augment is None:
            return np.arange(len(self.labels))
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.labels))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def on_epoch_end(self) -> None:
        with self._lock:
            self.epoch += 1
            self.order = self._order()

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        x = self.images[idx].copy()
        m = self.masks[idx].copy() if self.masks is not None else None
        if self.augment is not None:
            cfg, (h, w) = self.augment, x.shape[1:3]
            rng = np.random.default_rng((self.seed, self.epoch, i))
            for k in range(len(idx)):
                if cfg.geometric:
                    matrix = warp(rng, cfg, h, w)
                    x[k] = cv2.warpAffine(x[k], matrix, (w, h), flags=cv2.INTER_LINEAR,
                                          borderMode=_BORDER[cfg.fill_mode])
                    if m is not None:
                        m[k] = cv2.warpAffine(m[k], matrix, (w, h), flags=cv2.INTER_LINEAR,
                                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                if cfg.contrast:
                    mean = x[k].mean()
                    x[k] = (x[k] - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
                if cfg.brightness:
                    x[k] += rng.uniform(-cfg.brightness, cfg.brightness)
            np.clip(x, 0.0, 1.0, out=x)
        images = np.repeat(x[..., None], self.channels, axis=-1)
        y = self.labels[idx]
        if self.grid is None and self.body_parts is None:
            return (images, y) if self.sample_weight is None else (images, y, self.sample_weight[idx])
        targets = {"probability": y}
        weights = {"probability": self.sample_weight[idx] if self.sample_weight is not None else np.ones_like(y)}
        if self.grid is not None:
            # As pipeline.make_dataset: 1 where the (warped) lesion's area share of a cell passes
            # pipeline.LESION_PRESENCE.
            share = np.stack([cv2.resize(mk, self.grid[::-1], interpolation=cv2.INTER_AREA) for mk in m])
            targets["lesion_map"] = (share > LESION_PRESENCE).astype(np.float32).reshape(len(idx), -1)
            weights["lesion_map"] = self.lesion_weight[idx]
        if self.body_parts is not None:
            targets["body_part"], weights["body_part"] = self.body_parts[0][idx], self.body_parts[1][idx]
        return images, targets, weights


class TimeLimit(keras.callbacks.Callback):
    """Stop before an epoch that would end past `seconds` after the fit began (the
    checkpointed best weights are restored as after early stopping)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.reached = seconds, False

    def on_train_begin(self, logs=None):
        self.start = getattr(self, "start", None) or time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self.start
        if elapsed * (epoch + 2) / (epoch + 1) > self.seconds:  # one more epoch at the mean pace
            self.reached = True
            self.model.stop_training = True


def accelerator() -> str:
    backend = keras.config.backend()
    if backend == "jax":
        import jax
        return jax.devices()[0].device_kind
    if backend == "torch":
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return backend


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--condition", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--layout", choices=["mura", "folders"], default="folders")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="quick")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int)
    p.add_argument("--patience", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--weights", default="none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-id", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--body-part-weight", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop before an epoch that would end later than this after the fit began")
    args = p.parse_args(argv)

    protocol = PROTOCOLS[args.protocol]
    epochs = args.epochs or protocol.epochs
    batch_size = args.batch_size or protocol.batch_size
    learning_rate = args.learning_rate or protocol.learning_rate
    config = TrainConfig(condition=args.condition, architecture=args.arch, data=args.data,
                                  layout=args.layout, seed=args.seed, image_size=args.image_size, weights=args.weights)
    condition = load_registry(None).condition(args.condition)
    parts = split_dataset(read_dataset(args.layout, args.data, condition.negative_label, condition.positive_label),
                          args.seed)
    spec = InputSpec(args.image_size, args.image_size, 3)
    train_df, valid_df = parts["train"], parts["valid"]
    print(f"data: train {len(train_df)} ({int(train_df['label'].sum())} positive), valid {len(valid_df)}, "
          f"test {len(parts['test'])} images (the test split is not read here)", flush=True)
    lesion_weight = lesion_weight_for(config, train_df)

    keras.utils.set_random_seed(args.seed)
    model = build_classifier(args.arch, spec.shape, weights=args.weights)
    body_parts = body_parts_of(train_df, args.body_part_weight)
    fit_model, heads = with_heads(model, lesion_weight, body_parts, args.body_part_weight)
    class_weight = class_weights(train_df["label"])

    def batches(df, augment):
        labels = df["label"].to_numpy()
        masks = lesion = None
        if heads.grid:
            masks = read_masks(df, spec, args.threads)
            lesion = np.where((labels == 1) & df["mask_path"].isna().to_numpy(), 0.0, 1.0).astype(np.float32)
        parts = body_part_targets(df, heads.body_parts) if heads.body_parts else None
        weights = np.array([class_weight[int(v)] for v in labels], np.float32) if augment else None
        return Batches(read_images(df, spec, args.threads), labels, batch_size=batch_size, channels=spec.channels,
                       augment=augment, seed=args.seed, sample_weight=weights, masks=masks, lesion_weight=lesion,
                       grid=heads.grid, body_parts=parts, workers=args.threads)

    train_data = batches(train_df, AugmentConfig())
    valid_data = batches(valid_df, None)
    limit = TimeLimit(args.time_limit) if args.time_limit else None
    history, done, seconds = fit_stages(
        model, fit_model, train_data, valid_data, protocol=protocol, epochs=epochs, learning_rate=learning_rate,
        heads=heads, patience=args.patience, stream=sys.stdout, callbacks=(limit,) if limit else ())

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.model_id}.keras"
    model.save(path)
    head = body_part_head_of(fit_model, heads)
    if head is not None:
        body_part.save(dataclasses.replace(head, model_sha256=artifacts.file_sha256(path)),
                       artifacts.body_part_path(path))
    record = {
        "format": 1, "model_id": args.model_id, "condition": args.condition, "architecture": args.arch,
        "split_digest": split_digest(parts, args.data),
        "training": {
            **training_summary(
                config, protocol, epochs_run=done, batch_size=batch_size, learning_rate=learning_rate,
                seconds=seconds, train_images=len(train_df), valid_images=len(valid_df), class_weights=class_weight,
                augmentation="seeds' defaults (OpenCV warp)", heads=heads),
            "stopped_by": "time limit" if limit and limit.reached else "epochs or early stopping",
            "fitted_with": f"models/fit_on_gpu.py, Keras {keras.__version__} on {keras.config.backend()}, "
                           f"{accelerator()}",
        },
        "history": history,
    }
    artifacts.fit_record_path(path).write_text(json.dumps(record, indent=1) + "\n")
    best = max(history.get(heads.monitor, [float("nan")]))
    print(f"saved {path}: {done} epochs in {seconds:.0f} s, best validation AUC {best:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
