"""Both tiers of a condition scored on the same images, to choose the active one on validation.

Scores the intensive and the fast model on the validation and the test split of one dataset
(the figures `python -m xray_ai evaluate` gives: xray_ai.training.evaluation), and a paired
bootstrap of the validation AUC difference (intensive - fast; 2,000 resamples of the same
images for both models). The intensive model is "better on validation" only where that
difference's 95% interval lies above 0; otherwise the fast model, which answers in less time,
stays the one to activate. Test figures are reported, never used to choose. Written to one
JSON file (models/<intensive id>.tiers.json).

Run:  python models/compare_tiers.py --data DIR --layout folders --intensive ID --fast ID
      --out models/ID.tiers.json [--activate]
--activate makes the chosen one active (`python -m xray_ai registry activate`, audited).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FIGURES = ("n", "auc", "accuracy", "sensitivity", "specificity", "kappa", "threshold")
RESAMPLES = 2000


def paired_auc_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, seed: int = 0) -> dict:
    """AUC(a) - AUC(b) on the same images, with a percentile-bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    diffs = []
    while len(diffs) < RESAMPLES:
        i = rng.integers(0, len(y), len(y))
        if y[i].min() != y[i].max():  # a resample with one class has no AUC
            diffs.append(roc_auc_score(y[i], p_a[i]) - roc_auc_score(y[i], p_b[i]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"difference": float(roc_auc_score(y, p_a) - roc_auc_score(y, p_b)), "ci95": [float(low), float(high)],
            "resamples": RESAMPLES, "seed": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--layout", default="folders")
    parser.add_argument("--intensive", required=True)
    parser.add_argument("--fast", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--activate", action="store_true")
    args = parser.parse_args()

    from xray_ai.serving.forward import over_image_files, predict_probabilities
    from xray_ai.serving.manager import ModelManager
    from xray_ai.training.datasets import read_dataset
    from xray_ai.training.evaluation import evaluation_report

    manager = ModelManager()
    ids = {"intensive": args.intensive, "fast": args.fast}
    loaded = {tier: manager.get(model_id=model_id) for tier, model_id in ids.items()}
    assert not any(m.placeholder for m in loaded.values()), "a model file is unusable"
    condition = manager.registry.condition(loaded["fast"].entry.condition)
    df = read_dataset(args.layout, args.data, condition.negative_label, condition.positive_label)
    scores: dict = {tier: {} for tier in ids}
    probs: dict = {}
    for split in ("valid", "test"):
        part = df[df["split"] == split].reset_index(drop=True)
        y = part["label"].to_numpy()
        # each image decoded once, scored by both models: column t = tier t
        both = over_image_files(part["path"], lambda pixels: np.stack(
            [predict_probabilities(model, pixels) for model in loaded.values()], axis=1))
        for t, (tier, model) in enumerate(loaded.items()):
            p = both[:, t]
            probs[tier, split] = p
            metrics = evaluation_report(y, p, model.entry.threshold, split=split,
                                        study_ids=part["study_id"].to_numpy())
            kept = {name: metrics.get(name) for name in FIGURES}
            kept["ci95"] = {name: metrics["ci95"][name] for name in ("auc", "accuracy", "kappa")}
            scores[tier][split] = kept
    y_valid = df.loc[df["split"] == "valid", "label"].to_numpy()
    difference = paired_auc_difference(y_valid, probs["intensive", "valid"], probs["fast", "valid"])
    chosen = "intensive" if difference["ci95"][0] > 0 else "fast"
    record = {
        "data": {"path": str(args.data), "layout": args.layout,
                 "phantoms": json.loads((args.data / "phantoms.json").read_text())},
        "models": ids, "sha256": {tier: model.entry.sha256 for tier, model in loaded.items()},  # what was scored
        "scores": scores, "valid_auc_difference_intensive_minus_fast": difference,
        "active": ids[chosen],
        "chosen_by": "intensive only where the paired-bootstrap 95% interval of its validation AUC minus the "
                     "fast model's lies above 0; otherwise the fast model (less time per analysis). "
                     "Test figures are not used.",
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for tier in ids:
        v, t = scores[tier]["valid"], scores[tier]["test"]
        print(f"{ids[tier]:40s} valid AUC {v['auc']:.4f} kappa {v['kappa']:.3f} | test AUC {t['auc']:.3f} "
              f"acc {t['accuracy']:.3f} kappa {t['kappa']:.3f}")
    low, high = difference["ci95"]
    print(f"validation AUC, intensive - fast: {difference['difference']:+.4f} (95% CI {low:+.4f} to {high:+.4f}); "
          f"active: {ids[chosen]} -> {args.out}")
    if args.activate:
        subprocess.run([sys.executable, "-m", "xray_ai", "registry", "activate", condition.id, ids[chosen]],
                       check=True)


if __name__ == "__main__":
    main()
