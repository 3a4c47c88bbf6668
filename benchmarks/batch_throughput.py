"""predict-batch's throughput against ONNX Runtime's bare batch-16 forward pass, side by side.

For each backbone at 224 x 224, in one process and on the same random weights:
  - ONNX Runtime's bare forward pass of the whole model (keras' ONNX export of the plain
    model, the backend's session settings), batch 16, on a batch held in memory: the
    ceiling, since it decodes nothing, explains nothing and writes nothing;
  - the same for the export the backend serves (pooled features, Grad-CAM map and
    probability: what predict-batch runs);
  - predict-batch end to end on an archive of PNG studies written for the run: decoding in
    the worker pool, views of several studies batched (16) through the backend's session,
    Grad-CAM scaling, scope gate, result assembly, one CSV row per study. Model loading is
    not timed (BatchRun.execute loads it before its clock starts).
It also times, alone on one thread, what predict-batch does on top of the forward pass for
each image (decoding and preparing its study, `prepare_study`): on 2 cores that work shares
the cores with the forward pass, so it bounds the ratio at forward / (forward + decode), with
the forward's cost counted as the bare rate's core-milliseconds per image (printed as the
"decode ceiling").
Rounds alternate the three, and the ratio is taken per round (batch run / the mean of the
bare forwards measured just before and after it) and then its median, so a drift in the
machine's load moves both sides alike. Weights are random (speed does not depend on them);
batch-norm statistics come from one random batch, as benchmarks/analysis_speed.py sets them.

The archive: `--studies` study folders of 1 to 3 views each (cycling), every view a copy
of `--image` (default the 512 x 512 RG3 tibia PNG, a real radiograph), so each view costs
a real decode and a 512 -> 224 resize.

Run:  python benchmarks/batch_throughput.py [--archs mobilenetv2 densenet121] [--studies 80]
      [--rounds 3] [--workers 2] [--batch-size 16]
Target (issue 22): predict-batch >= 0.8x the bare batch-16 forward, both backbones, 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench_models import bench_registry, calibrate_batch_norm  # noqa: E402  (beside this script)

BATCH = 16


def _archive(root: Path, image: Path, studies: int) -> int:
    """`studies` folders of 1, 2, 3, 1, ... copies of `image`; returns the number of images."""
    images = 0
    for i in range(studies):
        folder = root / f"patient{i:05d}" / "study1"
        folder.mkdir(parents=True)
        for v in range(1 + i % 3):
            shutil.copy(image, folder / f"view{v + 1}{image.suffix}")
            images += 1
    return images


def _forward_rate(session, x: np.ndarray, seconds: float) -> float:
    """Images per second of session.run on the batch x, over about `seconds`."""
    feed = {session.get_inputs()[0].name: x}
    session.run(None, feed)
    n, start = 0, time.perf_counter()
    while True:
        session.run(None, feed)
        n += len(x)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def bench(arch: str, args, tmp: Path) -> dict:
    import keras

    from xray_ai import load_image
    from xray_ai.batch import BatchJob, BatchRun, find_studies
    from xray_ai.batch.core import model_inputs, prepare_study
    from xray_ai.serving.artifacts import file_sha256
    from xray_ai.serving.manager import ModelManager
    from xray_ai.serving.onnx_backend import open_session
    from xray_ai.serving.preprocessing import prepare_batch
    from xray_ai.training.architectures import build_classifier

    keras.utils.set_random_seed(0)
    model = build_classifier(arch, (224, 224, 3))
    calibrate_batch_norm(keras, model)
    model_file = tmp / f"{arch}.keras"
    model.save(model_file)
    registry = bench_registry(tmp, arch, model_file, file_sha256(model_file), model_id=f"bench-{arch}")
    manager = ModelManager(registry, backend="auto")  # the cache: $XRAY_AI_ONNX_CACHE, set in main
    manager.export_onnx(f"bench-{arch}")
    loaded = manager.get("fracture")
    assert loaded.backend == "onnxruntime", loaded.backend_reason

    plain = tmp / f"{arch}.onnx"
    model.export(str(plain), format="onnx", verbose=False)
    bare = open_session(plain)
    served = loaded.analyzer.session
    image = load_image(args.image)
    x = np.repeat(prepare_batch([image.pixels], loaded.entry.input, loaded.entry.preprocessing), BATCH, axis=0)

    archive = tmp / f"archive-{arch}"
    n_images = _archive(archive, args.image, args.studies)
    # a warm-up run (page cache, first-call allocations), not counted
    BatchRun(BatchJob(source=archive, out=tmp / f"warm-{arch}.csv", condition="fracture", registry=registry,
                      batch_size=args.batch_size, workers=args.workers)).execute()
    studies = find_studies(archive)
    start = time.perf_counter()
    for study in studies:
        prepare_study(study, model_inputs(loaded))
    decode_ms = (time.perf_counter() - start) * 1000.0 / n_images
    rounds = []
    for r in range(args.rounds):
        before = _forward_rate(bare, x, args.forward_seconds)
        served_rate = _forward_rate(served, x, args.forward_seconds)
        run = BatchRun(BatchJob(source=archive, out=tmp / f"out-{arch}-{r}.csv", condition="fracture",
                                registry=registry, batch_size=args.batch_size, workers=args.workers,
                                pool=args.pool))
        summary = run.execute()
        assert summary.errors == 0 and summary.images == n_images, summary.line()
        after = _forward_rate(bare, x, args.forward_seconds)
        rounds.append({"bare": (before + after) / 2, "served": served_rate, "batch": summary.images_per_second,
                       "line": summary.line()})
    return {"rounds": rounds, "images": n_images, "decode_ms": decode_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["mobilenetv2", "densenet121"])
    parser.add_argument("--studies", type=int, default=80, help="study folders (1-3 views each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", choices=["thread", "process"], default="thread")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--forward-seconds", type=float, default=3.0, help="time per bare-forward measurement")
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "rg3_tibia.png")
    args = parser.parse_args()
    import keras
    import onnxruntime

    from xray_ai.serving.settings import session_threads

    print(f"ONNX Runtime {onnxruntime.__version__}, {session_threads()} cores, 224x224; predict-batch: "
          f"batch {args.batch_size}, {args.workers} {args.pool} decoders; archive: {args.studies} studies of "
          f"1-3 copies of {args.image.name}; {args.rounds} rounds")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XRAY_AI_ONNX_CACHE"] = str(Path(tmp) / "onnx_cache")
        for arch in args.archs:
            keras.backend.clear_session()
            gc.collect()
            results[arch] = bench(arch, args, Path(tmp))
    print(f"\n{'backbone':12s} {'bare ORT fwd b16':>17s} {'served export b16':>18s} {'predict-batch':>14s} "
          f"{'ratio':>7s}  (images/s; ratio = predict-batch / bare forward, median of rounds; target >= 0.8)")
    for arch, res in results.items():
        rs = res["rounds"]
        ratios = [r["batch"] / r["bare"] for r in rs]
        print(f"{arch:12s} {statistics.median(r['bare'] for r in rs):17.1f} "
              f"{statistics.median(r['served'] for r in rs):18.1f} {statistics.median(r['batch'] for r in rs):14.1f} "
              f"{statistics.median(ratios):6.2f}x  rounds: {', '.join(f'{q:.2f}' for q in ratios)}; "
              f"{res['images']} images")
    cores = session_threads()
    for arch, res in results.items():
        forward_core_ms = cores * 1000.0 / statistics.median(r["bare"] for r in res["rounds"])
        ceiling = forward_core_ms / (forward_core_ms + res["decode_ms"])
        print(f"  {arch}: decode + prepare {res['decode_ms']:.2f} ms per image on one thread, the forward "
              f"{forward_core_ms:.2f} core-ms per image: decode ceiling {ceiling:.2f}x on {cores} cores")
    for arch, res in results.items():
        print(f"  {arch}, last round: {res['rounds'][-1]['line']}")


if __name__ == "__main__":
    main()
