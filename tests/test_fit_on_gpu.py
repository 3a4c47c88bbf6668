"""models/fit_on_gpu.py (a fit without tf.data) and `train --initial-model ... --epochs 0`."""

import importlib.util
import json
import shutil

import numpy as np
import pytest

from conftest import REPO
from xray_ai import phantoms
from xray_ai.cli import main

SIZE = 32


@pytest.fixture(scope="module")
def fit_on_gpu():
    spec = importlib.util.spec_from_file_location("fit_on_gpu", REPO / "models" / "fit_on_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    phantoms.write_dataset(root, "fracture", 40, layout="folders", seed=5, size=SIZE)
    return root


@pytest.fixture(scope="module")
def fitted(fit_on_gpu, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("fits")
    assert fit_on_gpu.main(["--condition", "fracture", "--arch", "compactcnn", "--data", str(dataset),
                            "--image-size", str(SIZE), "--epochs", "1", "--batch-size", "8", "--seed", "5",
                            "--model-id", "fracture-elsewhere", "--out", str(out), "--threads", "1"]) == 0
    return out / "fracture-elsewhere.keras"


def _train_args(dataset, initial, tmp_path, *extra):
    return ["train", "--condition", "fracture", "--arch", "compactcnn", "--data", str(dataset),
            "--image-size", str(SIZE), "--seed", "5", "--initial-model", str(initial), "--epochs", "0",
            "--model-id", "fracture-elsewhere", "--out", str(tmp_path / "models"), *extra]


def test_a_model_fitted_elsewhere_is_evaluated_and_registered_as_fitted(fitted, dataset, tmp_path, capsys,
                                                                          monkeypatch):
    record = json.loads(fitted.with_name("fracture-elsewhere.fit.json").read_text())
    assert record["architecture"] == "compactcnn" and len(record["split_digest"]) == 64
    assert record["training"]["epochs_run"] == 1 and "Keras" in record["training"]["fitted_with"]
    assert record["training"]["stopped_by"] == "epochs or early stopping"

    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    registry = tmp_path / "registry.json"
    shutil.copy(REPO / "model_registry.json", registry)
    code = main(_train_args(dataset, fitted, tmp_path, "--registry", str(registry), "--register"))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "no fitting (--epochs 0)" in out.err
    entry = json.loads(registry.read_text())["models"]["fracture-elsewhere"]
    training = entry["metrics"]["training"]
    # The fit's own figures, said to come from where it ran; the evaluation from here.
    assert training["fitted_with"] == record["training"]["fitted_with"] and training["epochs_run"] == 1
    assert training["evaluated_by"].startswith("train --epochs 0")
    from xray_ai.serving.artifacts import file_sha256

    assert training["initial_model"]["sha256"] == file_sha256(fitted)
    assert entry["metrics"]["split"] == "test" and "validation split" in entry["threshold_method"]
    assert entry["trained_on"]["synthetic"] is True


def test_a_model_fitted_on_another_split_is_refused(fitted, dataset, tmp_path, capsys):
    other = tmp_path / "fits"
    other.mkdir()
    shutil.copy(fitted, other / fitted.name)
    record = json.loads(fitted.with_name("fracture-elsewhere.fit.json").read_text())
    (other / "fracture-elsewhere.fit.json").write_text(json.dumps({**record, "split_digest": "0" * 64}))
    assert main(_train_args(dataset, other / fitted.name, tmp_path)) == 2
    assert "fitted on other data or another split" in capsys.readouterr().err

    (other / "fracture-elsewhere.fit.json").write_text(json.dumps({**record, "architecture": "mobilenetv2"}))
    assert main(_train_args(dataset, other / fitted.name, tmp_path)) == 2
    assert "fitted as 'mobilenetv2'" in capsys.readouterr().err


def test_epochs_zero_needs_an_initial_model_and_the_model_its_input_size(fitted, dataset, tmp_path, capsys):
    args = _train_args(dataset, fitted, tmp_path)
    without = args[:args.index("--initial-model")] + args[args.index("--initial-model") + 2:]
    assert main(without) == 2
    assert "0 only with --initial-model" in capsys.readouterr().err
    wrong_size = [a if a != str(SIZE) else "48" for a in args]
    assert main(wrong_size) == 2
    assert "fitted at 32 px, --image-size says 48" in capsys.readouterr().err
    alone = tmp_path / "alone" / fitted.name  # without its record, the model itself is checked
    alone.parent.mkdir()
    shutil.copy(fitted, alone)
    assert main([a if a != str(fitted) else str(alone) for a in wrong_size]) == 2
    assert "takes input (None, 32, 32, 3), --image-size asks for (None, 48, 48, 3)" in capsys.readouterr().err


def test_a_model_fitted_at_one_size_is_fitted_further_at_another(fitted, dataset, tmp_path, capsys, monkeypatch):
    """The intensive tier started from the fast model: same weights, rebuilt for the larger images."""
    import keras

    from xray_ai.registry import InputSpec
    from xray_ai.training.initial_model import load_initial_model

    original = keras.models.load_model(fitted, compile=False)
    larger = load_initial_model(fitted, InputSpec(48, 48, 3), resize=True)
    assert tuple(larger.inputs[0].shape) == (None, 48, 48, 3)
    assert [w.shape for w in larger.weights] == [w.shape for w in original.weights]
    for ours, theirs in zip(larger.get_weights(), original.get_weights()):
        np.testing.assert_array_equal(ours, theirs)

    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    registry = tmp_path / "registry.json"
    shutil.copy(REPO / "model_registry.json", registry)
    args = [a if a != str(SIZE) else "48" for a in _train_args(dataset, fitted, tmp_path)]
    args[args.index("--epochs") + 1] = "1"
    args[args.index("--model-id") + 1] = "fracture-larger"
    code = main([*args, "--registry", str(registry), "--register"])
    out = capsys.readouterr()
    assert code == 0, out.err
    entry = json.loads(registry.read_text())["models"]["fracture-larger"]
    training = entry["metrics"]["training"]
    assert entry["input"]["height"] == 48 and training["epochs_run"] == 1 and training["image_size"] == 48
    assert training["fitted_with"].startswith("xray_ai train") and "evaluated_by" not in training  # fitted here
    assert training["initial_model"]["file"] == fitted.name
    assert entry["trained_on"]["version"].endswith(f"fitted further from {fitted.name}")


def test_unaugmented_batches_match_the_tf_pipeline(fit_on_gpu, dataset):
    """Validation batches (images and lesion-cell targets) equal pipeline.make_dataset's."""
    from xray_ai.registry import InputSpec, load_registry
    from xray_ai.training.datasets import read_folders
    from xray_ai.training.pipeline import make_dataset

    condition = load_registry(REPO / "model_registry.json").condition("fracture")
    df = read_folders(dataset, condition.negative_label, condition.positive_label)
    df = df[df["split"] == "train"].reset_index(drop=True)
    spec, grid = InputSpec(SIZE, SIZE, 3), (4, 4)
    ours = fit_on_gpu.Batches(fit_on_gpu.read_images(df, spec, 1), df["label"].to_numpy(), batch_size=len(df),
                              channels=3, masks=fit_on_gpu.read_masks(df, spec, 1), grid=grid,
                              lesion_weight=np.ones(len(df), np.float32), workers=1)[0]
    theirs = next(iter(make_dataset(df, spec, batch_size=len(df), training=False, lesion_grid=grid)))
    np.testing.assert_allclose(ours[0], theirs[0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(ours[1]["lesion_map"], theirs[1]["lesion_map"].numpy())
    assert 0 < df["label"].mean() < 1 and ours[1]["lesion_map"].any()  # both classes; the masks reach the targets


def test_augmentation_warps_the_mask_with_the_image(fit_on_gpu):
    """An image that *is* its lesion mask keeps matching its lesion cells after augmentation."""
    import cv2

    from xray_ai.training.augment import AugmentConfig
    from xray_ai.training.pipeline import LESION_PRESENCE

    images = np.zeros((16, SIZE, SIZE), np.float32)
    for k in range(16):
        images[k, 4 + k % 8:12 + k % 8, 6:14] = 1.0
    batches = fit_on_gpu.Batches(images, np.ones(16), batch_size=16, channels=1, masks=images.copy(), grid=(4, 4),
                                 augment=AugmentConfig(brightness=0, contrast=0, fill_mode="constant"),
                                 lesion_weight=np.ones(16, np.float32), seed=3, workers=1)
    x, targets, _ = batches[0]
    assert not np.allclose(x[..., 0], images)  # it did move them
    share = np.stack([cv2.resize(im, (4, 4), interpolation=cv2.INTER_AREA) for im in x[..., 0]])
    np.testing.assert_array_equal(targets["lesion_map"], (share > LESION_PRESENCE).reshape(16, -1))


def test_the_time_limit_stops_before_an_epoch_that_would_overrun(fit_on_gpu, monkeypatch):
    clock = iter([100.0, 110.0, 118.0])
    monkeypatch.setattr(fit_on_gpu.time, "perf_counter", lambda: next(clock))

    class Model:
        stop_training = False

    limit = fit_on_gpu.TimeLimit(25.0)
    limit.set_model(Model())
    limit.on_train_begin()
    limit.on_epoch_end(0)  # 10 s for one epoch: a second would end at 20 s
    assert not limit.reached and not limit.model.stop_training
    limit.on_epoch_end(1)  # 18 s for two: a third would end at 27 s
    assert limit.reached and limit.model.stop_training
