"""Per-image analyze() (probability + Grad-CAM) against the bare forward pass, side by side.

For each backbone at 224 x 224, batch 1, in one process and on the same weights:
  - analyze(): the full pipeline the app and CLI call (preprocessing from a real example
    radiograph, one compiled pass giving the probability and Grad-CAM, the result object);
  - the compiled TensorFlow forward pass alone (`tf.function(model)`);
  - ONNX Runtime's forward pass (the model exported with keras' ONNX export);
  - `model.predict` for reference.
The calls are interleaved round-robin and the medians compared, so machine load drifts
affect all of them alike. Weights are random (speed does not depend on them).

Run:  python benchmarks/analysis_speed.py [--archs densenet121 mobilenetv2] [--repeats 30]
Targets (issue 2): analyze() <= 1.3x compiled forward and <= 2.5x ONNX Runtime (DenseNet121).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def _registry(tmp: Path, arch: str, model_file: Path, sha: str) -> Path:
    entry = {
        "condition": "fracture", "architecture": arch, "path": model_file.name, "sha256": sha,
        "version": "bench", "input": {"height": 224, "width": 224, "channels": 3},
        "threshold": 0.5, "threshold_method": "benchmark", "profile": "fast",
        "trained_on": {"dataset": "random weights (benchmark)", "version": "", "synthetic": True},
        "intended_use": "speed benchmark only", "metrics": {}, "created": "2026-11-22",
    }
    reg = {
        "schema_version": 1,
        "conditions": {"fracture": {"name": "Fracture", "positive_label": "fracture", "negative_label": "no fracture"}},
        "models": {"bench": entry}, "active_models": {"fracture": "bench"},
    }
    path = tmp / "registry.json"
    path.write_text(json.dumps(reg))
    return path


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def bench(arch: str, repeats: int, tmp: Path) -> dict[str, float]:
    import keras
    import onnxruntime as ort
    import tensorflow as tf

    from xray_ai import analyze, load_image
    from xray_ai.architectures import build_classifier
    from xray_ai.manager import ModelManager, file_sha256
    from xray_ai.preprocessing import prepare_batch

    keras.utils.set_random_seed(0)
    model = build_classifier(arch, (224, 224, 3))
    model_file = tmp / f"{arch}.keras"
    model.save(model_file)
    manager = ModelManager(_registry(tmp, arch, model_file, file_sha256(model_file)))
    t0 = time.perf_counter()
    loaded = manager.get("fracture")
    load_s = time.perf_counter() - t0
    assert not loaded.placeholder, loaded.placeholder_reason

    image = load_image(REPO / "examples" / "rg3_tibia.png")
    x = prepare_batch([image.pixels], loaded.entry.input, loaded.entry.preprocessing)
    compiled = tf.function(lambda t: loaded.model(t, training=False))
    xt = tf.constant(x)
    compiled(xt)

    onnx_path = tmp / f"{arch}.onnx"
    loaded.model.export(str(onnx_path), format="onnx", verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}

    runs = {
        "analyze()": lambda: analyze(image, "fracture", manager=manager),
        "compiled forward (tf.function)": lambda: compiled(xt).numpy(),
        "ONNX Runtime forward": lambda: session.run(None, feed),
        "model.predict": lambda: loaded.model.predict(x, verbose=0),
    }
    # sanity: same weights, same answer
    p_analyze = analyze(image, "fracture", manager=manager).probability
    p_ort = float(session.run(None, feed)[0].ravel()[0])
    for fn in runs.values():  # warm-up
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            samples[name].append(_time(fn))
    medians = {name: statistics.median(v) for name, v in samples.items()}
    medians["_load_s"] = load_s
    medians["_prob_diff"] = abs(p_analyze - p_ort)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["densenet121", "mobilenetv2"])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, batch 1, 224x224, repeats {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            m = bench(arch, args.repeats, Path(tmp))
            a, c, o = m["analyze()"], m["compiled forward (tf.function)"], m["ONNX Runtime forward"]
            print(f"\n{arch}: model load + verify + warm-up {m['_load_s']:.2f} s; "
                  f"|p(analyze) - p(ONNX)| = {m['_prob_diff']:.1e}")
            for name, ms in m.items():
                if not name.startswith("_"):
                    print(f"  {name:32s} {ms:8.1f} ms (median)")
            print(f"  analyze() / compiled forward     {a / c:8.2f}x   (target <= 1.3x)")
            print(f"  analyze() / ONNX Runtime forward {a / o:8.2f}x   (target <= 2.5x for densenet121)")


if __name__ == "__main__":
    main()
