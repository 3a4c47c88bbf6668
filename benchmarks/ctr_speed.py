"""The CTR measurement model: analyze() against its segmentation network's bare ONNX Runtime
forward pass, side by side, in one process.

For each input (the RG1 chest DICOM of examples/, 512 x 482, and a 224 px chest phantom), on the shipped
`cardiomegaly-ctr-unet` and its shipped export:
  - analyze(): the whole pipeline (decode done beforehand; resize to 192 px, one ONNX Runtime
    pass, the two widths and the CTR from the masks, the input check, the scope gate, the
    result object);
  - the bare forward: the same ONNX Runtime session's run() on the already prepared batch.
The calls alternate (each timed call preceded by an untimed one of the same kind) and the
medians are compared, so that machine load drifts affect both alike.

Run:  python benchmarks/ctr_speed.py [--repeats 30]
Target (issue 19): analyze() within 1.5x the bare forward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODEL_ID = "cardiomegaly-ctr-unet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    from xray_ai import load_image
    from xray_ai.analysis import analyze
    from xray_ai.phantoms import generate
    from xray_ai.images import XRay
    from xray_ai.serving.manager import ModelManager
    from xray_ai.serving.preprocessing import prepare_batch

    manager = ModelManager(REPO / "model_registry.json", backend="onnx")
    loaded = manager.get(model_id=MODEL_ID)
    if loaded.backend != "onnxruntime":
        sys.exit(f"{MODEL_ID} is not served by ONNX Runtime here ({loaded.backend_reason}); "
                 f"run `python -m xray_ai export-onnx --ship {MODEL_ID}`")
    session = loaded.analyzer.session
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    phantom = generate("cardiomegaly", abnormal=True, seed=7, size=224)
    rg1 = load_image(REPO / "examples" / "rg1_chest.dcm")
    inputs = {f"RG1 chest DICOM ({rg1.pixels.shape[1]} x {rg1.pixels.shape[0]})": rg1,
              "chest phantom (224 x 224)": XRay(pixels=phantom.image, filename="phantom.png")}
    print(f"{os.cpu_count()} CPU cores, model {MODEL_ID} ({loaded.entry.input.height} px), "
          f"backend {loaded.backend}, repeats {args.repeats}")
    print(f"{'input':32} {'analyze()':>11} {'bare forward':>13} {'ratio':>7}")
    for label, xray in inputs.items():
        batch = prepare_batch([xray.pixels], loaded.entry.input, loaded.entry.preprocessing)
        calls = {"analyze": lambda: analyze(xray, None, manager, model_id=MODEL_ID),
                 "forward": lambda: session.run(names, {input_name: batch})}
        samples: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                call()  # untimed: the same kind of call warms the same caches
                start = time.perf_counter()
                call()
                samples[name].append((time.perf_counter() - start) * 1000.0)
        a, f = (statistics.median(samples[k]) for k in ("analyze", "forward"))
        print(f"{label:32} {a:9.1f} ms {f:10.1f} ms {a / f:6.2f}x")
    result = analyze(inputs["chest phantom (224 x 224)"], None, manager, model_id=MODEL_ID)  # a sanity line
    print(f"(the phantom: true CTR {phantom.ctr:.3f}, measured {result.measurements['ctr']:.3f})")


if __name__ == "__main__":
    main()
