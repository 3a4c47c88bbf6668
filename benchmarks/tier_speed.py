"""Milliseconds per analysis of every registered model on this machine: the comparison's
"ms per analysis" column (source 004's Table 1; the performance page and the README Status).

For each registered classifier and measurement model (ensembles are their members' sum), on
the backend the app serves it with (the shipped, pinned ONNX export: ONNX Runtime), warm:
analyze() of one image, the abnormal example phantom of the model's condition
(examples/examples.json; decoded beforehand, as the app decodes an upload once), timed
`--repeats` times after three untimed calls; the median. Models run one after the other in
one process, so load drifts are shared within a run.

Writes models/analysis_speed.json (with --write): per model id its sha256 (a figure counts
only for the file it was measured on), the median and the spread in ms, the backend, and for
the run the date, cores, ONNX Runtime version and the command.

Run:  python benchmarks/tier_speed.py [--repeats 30] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

OUT = REPO / "models" / "analysis_speed.json"


def example_for(condition: str) -> Path:
    examples = json.loads((REPO / "examples" / "examples.json").read_text())["examples"]
    found = [e for e in examples if e.get("condition") == condition and e.get("kind") == "phantom" and e.get("abnormal")]
    return REPO / "examples" / found[0]["file"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(REPO)}")
    args = parser.parse_args()
    import onnxruntime

    from xray_ai import analysis, load_image
    from xray_ai.serving.manager import ModelManager
    from xray_ai.serving.settings import session_threads

    manager = ModelManager()
    registry = manager.registry
    figures = {}
    for entry in registry.models.values():
        if entry.is_ensemble:
            continue
        image = example_for(entry.condition)
        xray = load_image(image)
        loaded = manager.get(model_id=entry.id)
        for _ in range(3):
            analysis.analyze(xray, None, manager=manager, model_id=entry.id)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            analysis.analyze(xray, None, manager=manager, model_id=entry.id)
            times.append(1000.0 * (time.perf_counter() - start))
        q = statistics.quantiles(times, n=10)
        figures[entry.id] = {"sha256": entry.sha256, "ms_median": round(statistics.median(times), 2),
                             "ms_p10": round(q[0], 2), "ms_p90": round(q[-1], 2), "backend": loaded.backend,
                             "image": image.name, "input": f"{entry.input.height} x {entry.input.width}"}
        print(f"{entry.id:42s} {figures[entry.id]['ms_median']:7.1f} ms  (p10 {q[0]:.1f}, p90 {q[-1]:.1f}; "
              f"{loaded.backend}, {entry.input.height} px, {image.name})")
    record = {
        "measured": datetime.date.today().isoformat(), "cores": session_threads(),
        "onnxruntime": onnxruntime.__version__, "repeats": args.repeats,
        "command": f"python benchmarks/tier_speed.py --repeats {args.repeats} --write",
        "what": "warm analyze() of one decoded image (the condition's abnormal example phantom), median",
        "models": figures,
    }
    if args.write:
        OUT.write_text(json.dumps(record, indent=2) + "\n")
        print(f"-> {OUT}")


if __name__ == "__main__":
    main()
