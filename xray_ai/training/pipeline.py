"""The tf.data input pipeline that training and evaluation read, and its throughput.

`make_dataset`: decode -> gray [0, 1] -> resize exactly as inference does -> cache ->
(training: shuffle, augment) -> gray replicated to the model's channels -> prefetch.
Training and inference must see the same input, so the resize mirrors
`xray_ai.serving.preprocessing.resize_image` (area averaging when both sides shrink,
bilinear otherwise); tests check the two agree.

TensorFlow is imported inside the functions, not at module import, so that importing the
training package stays fast and works without TensorFlow (models/fit_on_gpu.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from xray_ai.images import load_image
from xray_ai.registry import InputSpec
from xray_ai.training.augment import AugmentConfig, augment_batch
from xray_ai.training.splits import body_part_targets

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = ["LESION_PRESENCE", "make_dataset", "Throughput", "measure_throughput"]

log = logging.getLogger(__name__)

# A grid cell counts as holding the lesion above this share of lesion pixels (the share of
# a 16 x 16 cell that one pixel covers is 0.004; this ignores interpolation dust of the warp).
LESION_PRESENCE = 1e-3
# Memory caches above this size get a warning: MURA at 320 px is ~15 GB of float32 gray.
_CACHE_WARN_BYTES = 4 << 30


def _needs_loader(path: str) -> bool:
    """True where tf's decoders would differ from `load_image`: DICOM and other formats, and
    JPEGs with an EXIF orientation (tf does not rotate them; `load_image` does)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return False
    if suffix not in (".jpg", ".jpeg"):
        return True
    try:
        with Image.open(path) as im:  # reads the header only
            return im.getexif().get(0x0112, 1) != 1
    except (OSError, UnidentifiedImageError):
        return True  # let load_image raise its clear error


def _decode_tf(path: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG -> float32 (H, W) in [0, 1], scaled by the dtype's maximum (8- or 16-bit), gray
    by BT.601 luma, alpha composited over black: the same rules as `load_image`."""
    import tensorflow as tf

    contents = tf.io.read_file(path)
    # decode_image's JPEG path uses libjpeg's fast integer IDCT (up to 7/255 off Pillow's
    # output); the accurate one matches Pillow, hence load_image, to the last bit.
    img = tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.image.convert_image_dtype(
            tf.io.decode_jpeg(contents, channels=0, dct_method="INTEGER_ACCURATE"), tf.float32),
        lambda: tf.io.decode_image(contents, channels=0, dtype=tf.float32, expand_animations=False))
    luma = tf.constant([0.299, 0.587, 0.114], tf.float32)

    def rgb(a: tf.Tensor) -> tf.Tensor:
        return tf.tensordot(a[..., :3], luma, axes=1)

    gray = tf.switch_case(tf.shape(img)[-1] - 1, [
        lambda: img[..., 0],
        lambda: img[..., 0] * img[..., 1],
        lambda: rgb(img),
        lambda: rgb(img) * img[..., 3],
    ])
    gray.set_shape([None, None])
    return gray


def _decode_loader(path: tf.Tensor) -> tf.Tensor:
    """Any format `load_image` reads (DICOM included), through Python: holds the GIL."""
    import tensorflow as tf

    def load(p: bytes) -> np.ndarray:
        return load_image(p.decode("utf-8")).pixels

    gray = tf.numpy_function(load, [path], tf.float32, stateful=False)
    gray.set_shape([None, None])
    return gray


def _resize(gray: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Mirror of `preprocessing.resize_image`: area when both sides shrink, else bilinear.

    tf's 'area' is exact area weighting like cv2.INTER_AREA, and tf's bilinear uses half-pixel
    centres and edge clamping like cv2.INTER_LINEAR; measured on phantoms the two agree to
    ~1e-5 (float rounding) for shrinking, enlarging and mixed sizes (tests/test_data.py).
    Returns float32 (height, width, 1) in [0, 1].
    """
    import tensorflow as tf

    h, w = tf.shape(gray)[0], tf.shape(gray)[1]
    x = gray[..., None]
    same = tf.logical_and(tf.equal(h, height), tf.equal(w, width))
    shrink = tf.logical_and(h > height, w > width)
    out = tf.case([(same, lambda: x),
                   (shrink, lambda: tf.image.resize(x, (height, width), method="area"))],
                  default=lambda: tf.image.resize(x, (height, width), method="bilinear"))
    out = tf.clip_by_value(tf.ensure_shape(out, [height, width, 1]), 0.0, 1.0)
    return out


def _cache_file(prefix: str, paths: Sequence[str], spec: InputSpec) -> str:
    """A cache file name that changes with the image list and input size, so a stale cache is never read."""
    digest = hashlib.sha256(f"{spec.height}x{spec.width}\n".encode() + "\n".join(paths).encode()).hexdigest()[:16]
    target = Path(prefix).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    return f"{target}.{digest}"


def make_dataset(df: pd.DataFrame, input: InputSpec, *, batch_size: int, training: bool,
                 augment: AugmentConfig | None = None, seed: int = 0, cache: bool | str = True,
                 shuffle_buffer: int | None = None, class_weight: Mapping[int, float] | None = None,
                 drop_remainder: bool = False, lesion_grid: tuple[int, int] | None = None,
                 body_parts: Sequence[str] | None = None) -> tf.data.Dataset:
    """The tf.data pipeline for training (`training=True`) or evaluation.

    Stages: read + decode (PNG/JPEG by tf, in parallel and outside the GIL; DICOM and
    EXIF-rotated JPEGs through `load_image`) -> gray float32 in [0, 1] -> resize as
    inference does -> cache -> training only: shuffle (seeded, reshuffled each epoch),
    batch, augment (per image, seeded, different each epoch) -> replicate gray to
    `input.channels` -> prefetch. Evaluation keeps the DataFrame's row order.

    Decoding follows `load_image`'s rules (8/16-bit scaled by the dtype maximum, BT.601
    luma, alpha over black, Pillow-exact JPEG IDCT); tests check pixel agreement with
    `prepare_batch(load_image(...))` for 8- and 16-bit PNG, JPEG and DICOM. Known gaps,
    all rare in radiographs: CMYK JPEG, PNG orientation in an eXIf chunk, and 16-bit
    *colour* PNG (tf keeps 16 bits, Pillow 8) may differ from `load_image`.

    Args:
        df: rows with at least `path` and `label` (0/1), e.g. from `datasets.read_mura`.
        input: the model's input spec (height, width, channels); the images are [0, 1]
            ('unit'), as the models this project trains normalise inside.
        batch_size: images per batch.
        training: shuffle and augment; False gives a deterministic order and no augmentation.
        augment: augmentation for training (None: none); ignored when not training.
        seed: seeds shuffling and augmentation; the same seed gives the same batches.
        cache: True caches decoded, resized gray images in memory (about H*W*4 bytes each;
            a warning above 4 GiB); a str caches to files with that prefix (the name gets a
            digest of the image list and size); False re-decodes every epoch.
        shuffle_buffer: training shuffle buffer; default min(len(df), 4096). It holds
            decoded images, so its memory is shuffle_buffer * H * W * 4 bytes.
        class_weight: e.g. `splits.class_weights(df.label)`; then each element also carries its
            per-sample weight (for `model.fit` with a dataset, which ignores `class_weight=`
            in some Keras versions).
        drop_remainder: drop a last, smaller batch.
        lesion_grid: (rows, cols) of the feature map that lesion-mask supervision trains
            (see `xray_ai.training.heads`); then each element also carries, for every grid cell,
            1 if the lesion mask (`mask_path`, warped with the image) touches it, else 0, and
            the targets and weights are dicts keyed "probability" and "lesion_map".
            Abnormal images without a mask get lesion weight 0 (their lesion is unknown,
            not absent); normal images train towards an empty map.
        body_parts: the body-part classes of an auxiliary body-part head (xray_ai.serving.body_part);
            then the targets also carry "body_part", each image's index into `body_parts`
            (its `body_part` column), weighted 0 where the part is unknown or not listed.

    Returns:
        A dataset of (images, labels[, weights]): images float32 (B, H, W, C) in [0, 1],
        labels float32 (B,), weights float32 (B,). With `lesion_grid` or `body_parts`: labels
        {"probability": (B,), "lesion_map": (B, rows * cols), "body_part": (B,) int32}
        (the heads asked for) and weights likewise keyed.
    """
    import tensorflow as tf

    if df.empty:
        raise ValueError("make_dataset: the DataFrame has no rows")
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"make_dataset: DataFrame lacks column(s) {sorted(missing)}")
    if training:
        # Readers list images class by class (and MURA by body part); a shuffle buffer
        # smaller than the dataset would then feed batches whose label mix drifts through
        # the epoch, which a model can follow through its bias alone. One seeded full
        # permutation first; the buffer reshuffles on top of it every epoch.
        df = df.iloc[np.random.default_rng(seed).permutation(len(df))]
    labels = df["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"make_dataset: labels must be 0 or 1, got {sorted(set(labels.tolist()) - {0, 1})}")
    if batch_size < 1:
        raise ValueError(f"make_dataset: batch_size must be >= 1, got {batch_size!r}")
    height, width, channels = int(input.height), int(input.width), int(input.channels)
    paths = [str(p) for p in df["path"]]
    loader = np.array([_needs_loader(p) for p in paths])
    tensors: dict[str, Any] = {"path": paths, "loader": loader, "label": labels.astype(np.float32)}
    if class_weight is not None:
        tensors["weight"] = np.array([class_weight[int(v)] for v in labels], np.float32)
    if lesion_grid is not None:
        masks = df["mask_path"] if "mask_path" in df.columns else pd.Series([None] * len(df), index=df.index)
        has_mask = masks.notna().to_numpy()
        tensors["mask_path"] = [str(m) if ok else "" for m, ok in zip(masks, has_mask)]
        tensors["lesion_weight"] = np.where((labels == 1) & ~has_mask, 0.0, 1.0).astype(np.float32)
    if body_parts is not None:
        tensors["body_part"], tensors["body_part_weight"] = body_part_targets(df, body_parts)

    def decode(el: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if loader.all():
            gray = _decode_loader(el["path"])
        elif not loader.any():
            gray = _decode_tf(el["path"])
        else:
            gray = tf.cond(el["loader"], lambda: _decode_loader(el["path"]), lambda: _decode_tf(el["path"]))
        out = {k: v for k, v in el.items() if k not in ("path", "loader", "mask_path")}
        out["image"] = _resize(gray, height, width)
        if lesion_grid is not None:
            out["mask"] = tf.cond(tf.equal(el["mask_path"], ""),
                                  lambda: tf.zeros([height, width, 1], tf.float32),
                                  lambda: _resize(_decode_tf(el["mask_path"]), height, width))
        return out

    ds = tf.data.Dataset.from_tensor_slices(tensors)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache is True:
        size = len(paths) * height * width * 4
        if size > _CACHE_WARN_BYTES:
            warnings.warn(f"make_dataset: the memory cache will hold about {size / 2**30:.1f} GiB; "
                          "pass cache='PATH_PREFIX' for a file cache or cache=False", stacklevel=2)
        ds = ds.cache()
    elif isinstance(cache, str):
        ds = ds.cache(_cache_file(cache, paths, input))
    if training:
        buffer = shuffle_buffer or min(len(paths), 4096)
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if training and augment is not None:
        cfg = augment
        noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, noise.batch(2)))

        def augment_element(el: dict[str, tf.Tensor], r: tf.Tensor) -> dict[str, tf.Tensor]:
            if "mask" in el:
                image, mask = augment_batch(el["image"], r, cfg, el["mask"])
                return {**el, "image": image, "mask": mask}
            return {**el, "image": augment_batch(el["image"], r, cfg)}

        ds = ds.map(augment_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def finish(el: dict[str, tf.Tensor]) -> tuple[Any, ...]:
        image = el["image"] if channels == 1 else tf.repeat(el["image"], channels, axis=-1)
        if lesion_grid is None and body_parts is None:
            return (image, el["label"]) + ((el["weight"],) if "weight" in el else ())
        targets = {"probability": el["label"]}
        weights = {"probability": el.get("weight", tf.ones_like(el["label"]))}
        if lesion_grid is not None:
            # 1 where the (warped) lesion touches a cell, else 0. Presence, not the covered
            # share (a hairline's share is ~0.01): on pneumonia phantoms presence reached
            # validation AUC 0.89 in 2 epochs against 5 with the share, and a Grad-CAM pointing
            # game of 0.66 against 0.39. Flat, so the loss is one value per image and weights apply.
            share = tf.image.resize(el["mask"], lesion_grid, method="area")
            cells = tf.cast(share > LESION_PRESENCE, tf.float32)
            targets["lesion_map"] = tf.reshape(cells, [-1, lesion_grid[0] * lesion_grid[1]])
            weights["lesion_map"] = el["lesion_weight"]
        if body_parts is not None:
            targets["body_part"], weights["body_part"] = el["body_part"], el["body_part_weight"]
        return image, targets, weights

    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class Throughput:
    """Input-pipeline speed in images per second.

    Attributes:
        first_epoch: one full pass (decoding, and filling the cache if there is one).
        cached: `batches` batches after that pass (reads the cache if there is one).
        images_first_epoch, images_cached: images counted in each measurement.
    """

    first_epoch: float
    cached: float
    images_first_epoch: int
    images_cached: int


def measure_throughput(dataset: tf.data.Dataset, batches: int = 20) -> Throughput:
    """Time the input pipeline alone (no model): a full first epoch, then `batches` batches.

    The first pass runs to the end because tf.data keeps a cache only once an epoch has
    been read completely; the second pass repeats the dataset if it has fewer batches.
    """
    def count(ds: Any) -> tuple[int, float]:
        n, t0 = 0, time.perf_counter()
        for element in ds:
            n += int(element[0].shape[0])
        return n, time.perf_counter() - t0

    n1, t1 = count(dataset)
    if n1 == 0:
        raise ValueError("measure_throughput: the dataset yielded no images")
    n2, t2 = count(dataset.repeat().take(batches))
    log.info("input pipeline: first epoch %.1f images/s, cached %.1f images/s", n1 / t1, n2 / t2)
    return Throughput(n1 / t1, n2 / max(t2, 1e-9), n1, n2)
