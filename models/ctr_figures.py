"""The CTR model's figures on fresh phantoms (seeds no training run used), printed as JSON:

    python models/ctr_figures.py [--count 400] [--seed 9119] [--model models/cardiomegaly-ctr-unet.keras]

Writes a chest phantom dataset to a temporary folder, measures every image (all its splits:
none was seen in training) with the model and the calibration stored in its metrics file,
and prints `training.ctr.evaluate_ctr`'s figures (CTR MAE, Bland-Altman, Dice, the rule's
AUC, sensitivity, specificity, kappa, bootstrap 95% CIs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=REPO / "models" / "cardiomegaly-ctr-unet.keras")
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--seed", type=int, default=9119)
    args = p.parse_args()

    import keras

    from xray_ai.phantoms import write_dataset
    from xray_ai.registry import InputSpec
    from xray_ai.serving.artifacts import metrics_path
    from xray_ai.training import ctr

    model = keras.models.load_model(args.model)
    size = int(model.input.shape[1])
    scale = json.loads(metrics_path(args.model).read_text())["calibration_scale"]
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, "cardiomegaly", args.count, layout="folders", seed=args.seed, size=224)
        rows = [r for part in ctr.read_ctr_dataset(Path(tmp)).values() for r in part]
        data = ctr.load_split(Path(tmp), rows, InputSpec(size, size, 1), "cardiomegaly")
    report = ctr.evaluate_ctr(model, data, scale, split=f"fresh phantoms (seed {args.seed}, {len(rows)} images)")
    keys = ("split", "n", "n_positive", "auc", "accuracy", "sensitivity", "specificity", "kappa", "ci95")
    print(json.dumps({**{k: report[k] for k in keys}, "measurement": report["measurement"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
