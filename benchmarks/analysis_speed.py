"""Per-image analyze() (probability + Grad-CAM) against the bare forward pass, side by side.

For each backbone at 224 x 224, batch 1, in one process and on the same weights:
  - analyze() on the TensorFlow backend: the full pipeline the app and CLI call
    (preprocessing from a real example radiograph, one compiled pass giving the
    probability and Grad-CAM, the result object);
  - analyze() on the ONNX Runtime backend: the same pipeline, served from the model's
    verified export (one ONNX Runtime pass giving the pooled features, the exact raw
    Grad-CAM map and the probability; numpy scales the map);
  - the compiled TensorFlow forward pass alone (`tf.function(model)`);
  - ONNX Runtime's bare forward pass of the whole model (keras' ONNX export, the same
    session settings as the backend);
  - `model.predict` for reference.
The calls are interleaved round-robin (each timed call preceded by a 50 ms pause and an
untimed call of the same kind, so that one runtime's idle-spinning threads do not bill the
next) and the medians compared, so machine load drifts affect all of them alike. Weights are random (speed does not depend on them); batch-norm
statistics are set from one random batch so that the heatmaps are not empty.

Run:  python benchmarks/analysis_speed.py [--archs densenet121 mobilenetv2 efficientnetlite0] [--repeats 30]
          [--heatmap gradcam | layercam:16 | layercam:16+8 | hirescam:8 ...]
Targets: issue 2, analyze() (TensorFlow) <= 1.3x compiled forward and <= 2.5x ONNX Runtime
(DenseNet121); issue 7, analyze() on ONNX Runtime <= 1.2x the bare ONNX Runtime forward;
issue 16, with a model's default map at finer layers (--heatmap), <= 1.5x on both backends.
"""

from __future__ import annotations

import argparse
import gc
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

from bench_models import bench_registry, calibrate_batch_norm  # noqa: E402  (beside this script)


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def heatmap_setting(model, choice: str) -> dict | None:
    """`gradcam` (last layer, closed form) -> None; `METHOD:STRIDE[+STRIDE]` (e.g. layercam:16,
    layercam:16+8) -> the registry's heatmap field at the last layer of each stride."""
    if choice == "gradcam":
        return None
    from xray_ai.explain.layers import layers_by_stride

    method, strides = choice.split(":")
    by_stride = layers_by_stride(model)
    return {"method": method, "layers": [by_stride[int(s)] for s in strides.split("+")]}


def bench(arch: str, repeats: int, tmp: Path, heatmap: str = "gradcam") -> dict[str, float]:
    import keras
    import tensorflow as tf

    from xray_ai import analyze

    from xray_ai import load_image
    from xray_ai.training.architectures import build_classifier
    from xray_ai.serving.artifacts import file_sha256
    from xray_ai.serving.manager import ModelManager
    from xray_ai.serving.onnx_backend import open_session
    from xray_ai.serving.preprocessing import prepare_batch

    keras.utils.set_random_seed(0)
    model = build_classifier(arch, (224, 224, 3))
    calibrate_batch_norm(keras, model)
    model_file = tmp / f"{arch}.keras"
    model.save(model_file)
    setting = heatmap_setting(model, heatmap)
    registry = bench_registry(tmp, arch, model_file, file_sha256(model_file), **({'heatmap': setting} if setting else {}))
    cache = tmp / "onnx_cache"
    manager = ModelManager(registry, backend="tensorflow")
    t0 = time.perf_counter()
    loaded = manager.get("fracture")
    load_s = time.perf_counter() - t0
    assert not loaded.placeholder, loaded.placeholder_reason
    ort_manager = ModelManager(registry, backend="auto", onnx_cache=cache)
    t0 = time.perf_counter()
    ort_manager.export_onnx("bench")
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ort_loaded = ort_manager.get("fracture")
    ort_load_s = time.perf_counter() - t0
    assert ort_loaded.backend == "onnxruntime", ort_loaded.backend_reason

    image = load_image(REPO / "examples" / "rg3_tibia.png")
    x = prepare_batch([image.pixels], loaded.entry.input, loaded.entry.preprocessing)
    compiled = tf.function(lambda t: loaded.model(t, training=False))
    xt = tf.constant(x)
    compiled(xt)

    onnx_path = tmp / f"{arch}.onnx"
    loaded.model.export(str(onnx_path), format="onnx", verbose=False)
    session = open_session(onnx_path)  # the backend's settings: intra-op threads = cores
    feed = {session.get_inputs()[0].name: x}
    backend_session = ort_loaded.analyzer.session  # the export the backend runs, with its extra outputs
    backend_feed = {backend_session.get_inputs()[0].name: x}

    runs = {
        "analyze() (TensorFlow backend)": lambda: analyze(image, "fracture", manager=manager),
        "analyze() on ONNX Runtime backend": lambda: analyze(image, "fracture", manager=ort_manager),
        "compiled forward (tf.function)": lambda: compiled(xt).numpy(),
        "ONNX Runtime forward": lambda: session.run(None, feed),
        "ONNX Runtime forward, backend's export": lambda: backend_session.run(None, backend_feed),
        "model.predict": lambda: loaded.model.predict(x, verbose=0),
    }
    # sanity: same weights, same answer
    p_analyze = analyze(image, "fracture", manager=manager).probability
    p_ort = float(session.run(None, feed)[0].ravel()[0])
    on_ort = analyze(image, "fracture", manager=ort_manager)
    assert on_ort.backend == "onnxruntime"
    tf_map, ort_map = analyze(image, "fracture", manager=manager).views[0].heatmap, on_ort.views[0].heatmap
    for fn in runs.values():  # warm-up
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            # A pause, then an untimed call: the thread pools of the function timed just before
            # (ONNX Runtime's and TensorFlow's workers spin for a while after a run) would
            # otherwise bill this one for their spinning. In the app one runtime serves at a time.
            time.sleep(0.05)
            fn()
            samples[name].append(_time(fn))
    medians = {name: statistics.median(v) for name, v in samples.items()}
    medians["_load_s"] = load_s
    medians["_export_s"] = export_s
    medians["_ort_load_s"] = ort_load_s
    medians["_prob_diff"] = abs(p_analyze - p_ort)
    medians["_backend_prob_diff"] = abs(p_analyze - on_ort.probability)
    medians["_heatmap_corr"] = (
        float(np.corrcoef(tf_map.ravel(), ort_map.ravel())[0, 1]) if tf_map.std() > 0 and ort_map.std() > 0
        else float(np.array_equal(tf_map, ort_map))  # both empty (random weights can do that): 1.0 if equal
    )
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["densenet121", "mobilenetv2", "efficientnetlite0"])
    parser.add_argument("--heatmap", default="gradcam",
                        help="the model's default map: gradcam (last layer, closed form) or METHOD:STRIDE[+STRIDE], "
                             "e.g. layercam:16 or layercam:16+8 (gradients through the tail in the export)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, batch 1, 224x224, repeats {args.repeats}, "
          f"default heatmap {args.heatmap}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            # Each backbone on its own: drop the previous one's models, sessions and graphs
            # (keras models hold reference cycles that only the collector frees).
            keras.backend.clear_session()
            gc.collect()
            m = bench(arch, args.repeats, Path(tmp), args.heatmap)
            a, c, o = m["analyze() (TensorFlow backend)"], m["compiled forward (tf.function)"], m["ONNX Runtime forward"]
            b, ob = m["analyze() on ONNX Runtime backend"], m["ONNX Runtime forward, backend's export"]
            print(f"\n{arch}: model load + verify + warm-up {m['_load_s']:.2f} s (TensorFlow), "
                  f"{m['_ort_load_s']:.2f} s (ONNX Runtime); export {m['_export_s']:.1f} s (once per model file)")
            print(f"  |p(analyze TF) - p(ONNX full model)| = {m['_prob_diff']:.1e}; "
                  f"|p(analyze TF) - p(analyze ONNX backend)| = {m['_backend_prob_diff']:.1e}; "
                  f"heatmap correlation {m['_heatmap_corr']:.6f}")
            for name, ms in m.items():
                if not name.startswith("_"):
                    print(f"  {name:34s} {ms:8.1f} ms (median)")
            print(f"  analyze() TF / compiled forward    {a / c:8.2f}x   (target <= 1.3x)")
            print(f"  analyze() TF / ONNX Runtime forward {a / o:7.2f}x   (target <= 2.5x for densenet121)")
            print(f"  analyze() ONNX backend / ONNX Runtime forward {b / o:5.2f}x   (target <= 1.2x)")
            print(f"  analyze() ONNX backend / its export's forward  {b / ob:4.2f}x")

if __name__ == "__main__":
    main()
