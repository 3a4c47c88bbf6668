"""Is the input pipeline ever the bottleneck? Pipeline throughput against the training step, side by side.

Run:  python benchmarks/input_pipeline.py [--size 160] [--images 600] [--arch mobilenetv2]

Writes phantoms (PNG with lesion masks, written at twice the model's input size so the
pipeline also resizes), then in one process measures:

- the training pipeline alone (decode, resize, cache, shuffle, augmentation, lesion
  targets), first epoch (decoding) and cached epochs, in images per second;
- the training step alone (`train_on_batch` on batches taken from that pipeline and held in
  memory, lesion head included, as `python -m xray_ai train` runs it);
- `fit` over the pipeline for one epoch, for what a user sees end to end (on a short
  epoch this includes tracing fit's own training function).

The pipeline should outrun the step by a wide margin (the ratio printed last); tf.data
prefetches, so a pipeline faster than the step costs the step nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xray_ai.phantoms import LABELS, write_dataset  # noqa: E402
from xray_ai.registry import InputSpec  # noqa: E402
from xray_ai.training.augment import AugmentConfig  # noqa: E402
from xray_ai.training.datasets import read_folders  # noqa: E402
from xray_ai.training.heads import DEFAULT_LESION_WEIGHT, compile_for_training, with_heads  # noqa: E402
from xray_ai.training.pipeline import make_dataset, measure_throughput  # noqa: E402
from xray_ai.training.splits import class_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160, help="model input size in pixels")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--arch", default="mobilenetv2")
    parser.add_argument("--condition", default="pneumonia")
    args = parser.parse_args()

    from xray_ai.training.architectures import build_classifier

    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), args.condition, args.images, layout="folders", size=2 * args.size, seed=0)
        rows = read_folders(Path(tmp), *LABELS[args.condition])
        spec = InputSpec(args.size, args.size, 3)
        model = build_classifier(args.arch, spec.shape, weights="none")
        fit_model, heads = with_heads(model, DEFAULT_LESION_WEIGHT)
        ds = make_dataset(rows, spec, batch_size=args.batch_size, training=True, augment=AugmentConfig(),
                          class_weight=class_weights(rows["label"]), lesion_grid=heads.grid)
        pipeline = measure_throughput(ds, batches=max(1, len(rows) // args.batch_size))

        compile_for_training(fit_model, 1e-3, heads)  # as `python -m xray_ai train` compiles it
        held = list(ds.take(6))
        fit_model.train_on_batch(*held[0])  # compile + warm-up
        start, n = time.perf_counter(), 0
        for x, y, w in held[1:]:
            fit_model.train_on_batch(x, y, sample_weight=w)
            n += int(x.shape[0])
        step = n / (time.perf_counter() - start)

        start = time.perf_counter()
        fit_model.fit(ds, epochs=1, verbose=0)
        fit_rate = len(rows) / (time.perf_counter() - start)

    print(f"{args.arch} {args.size}x{args.size}, batch {args.batch_size}, {len(rows)} phantom images "
          f"(written at {2 * args.size} px, lesion targets {heads.grid[0]}x{heads.grid[1]}):")
    print(f"  input pipeline, first epoch (decode + cache): {pipeline.first_epoch:8.1f} images/s")
    print(f"  input pipeline, cached epochs (augment):      {pipeline.cached:8.1f} images/s")
    print(f"  training step alone (held batches):           {step:8.1f} images/s")
    print(f"  fit() over the pipeline, one epoch:           {fit_rate:8.1f} images/s "
          "(includes tracing fit's own step, and the pipeline's threads share the cores)")
    print(f"  pipeline / step: first epoch {pipeline.first_epoch / step:.1f}x, cached {pipeline.cached / step:.1f}x")


if __name__ == "__main__":
    main()
