"""`train --task ctr` (xray_ai.training.ctr, ctr_train): the CTR segmentation model's data,
calibration, figures and registration, end to end on a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xray_ai.training import ctr

REPO = Path(__file__).resolve().parent.parent


def test_the_calibration_keeps_the_rule_and_fits_only_the_slope():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.4, 0.6, 4000)
    labels = rng.random(4000) < ctr.calibrated(values, 0.02)  # drawn from a known slope
    scale = ctr.fit_calibration(values, labels)
    assert scale == pytest.approx(0.02, rel=0.15)
    assert ctr.calibrated(np.array([0.5]), scale)[0] == pytest.approx(0.5)  # the rule's limit stays 0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctr")
    data = root / "chest"
    subprocess.run([sys.executable, "-m", "xray_ai", "phantoms", "--condition", "cardiomegaly", "--count", "160",
                    "--layout", "folders", "--size", "128", "--seed", "5", "--out", str(data)], cwd=REPO, check=True,
                   capture_output=True)
    registry = json.loads((REPO / "model_registry.json").read_text())
    registry.update(models={}, active_models={})
    (root / "model_registry.json").write_text(json.dumps(registry))
    done = subprocess.run([sys.executable, "-m", "xray_ai", "train", "--task", "ctr", "--condition", "cardiomegaly",
                           "--data", str(data), "--image-size", "32", "--epochs", "1", "--batch-size", "16",
                           "--out", str(root / "models"), "--model-id", "ctr-tiny", "--register",
                           "--registry", str(root / "model_registry.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return root, json.loads(done.stdout)


def test_train_task_ctr_saves_measures_and_registers_a_measurement_model(trained):
    from xray_ai.registry import load_registry

    root, printed = trained
    assert printed["kind"] == "measurement" and printed["split"] == "test" and printed["epochs_run"] == 1
    entry = load_registry(root / "model_registry.json").model("ctr-tiny")
    assert entry.is_measurement and entry.architecture == "ctr-unet" and entry.threshold == 0.5
    assert entry.input.shape == (32, 32, 1) and entry.trained_on.synthetic
    assert entry.measurement["calibrated_on"].startswith("validation split")
    measured = entry.metrics["measurement"]
    for key in ("ctr_mae", "ctr_mae_ci95", "bland_altman", "dice_heart", "dice_thorax", "n_not_measured"):
        assert key in measured, key
    assert {"auc", "accuracy", "sensitivity", "specificity", "kappa", "ci95"} <= set(entry.metrics)
    assert (root / "models" / "ctr-tiny.keras").is_file() and (root / "models" / "ctr-tiny.metrics.json").is_file()
    assert "cardiomegaly" not in load_registry(root / "model_registry.json").active_models  # no --activate


def test_a_dataset_without_measurements_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "xray_ai", "train", "--task", "ctr", "--condition", "cardiomegaly",
                           "--data", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "measurements.csv: no such file" in done.stderr


def test_only_cardiomegaly_is_measured(tmp_path):
    done = subprocess.run([sys.executable, "-m", "xray_ai", "train", "--task", "ctr", "--condition", "fracture",
                           "--data", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--condition must be cardiomegaly" in done.stderr
