"""Training end to end on tiny phantoms (phantoms -> quick protocol -> evaluate -> register -> predict)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from xray_ai import phantoms
from xray_ai.cli import main
from xray_ai.training.config import PROTOCOLS
from xray_ai.training.fitting import set_trainable_fraction, stage_epochs


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    phantoms.write_dataset(root, "fracture", 24, layout="mura", seed=3, size=48)
    return root


def test_end_to_end_quick_protocol_through_the_cli(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    registry = tmp_path / "registry.json"
    shutil.copy(REPO / "model_registry.json", registry)
    import xray_ai.training.held_out as held_out

    seen = []
    real_choose = held_out.choose_threshold
    monkeypatch.setattr(held_out, "choose_threshold",
                        lambda y, p, *a, **k: seen.append(np.asarray(y).copy()) or real_choose(y, p, *a, **k))
    code = main([
        "train", "--protocol", "quick", "--condition", "fracture", "--arch", "mobilenetv2", "--data", str(tiny_dataset),
        "--layout", "mura", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "models"),
        "--learning-rate", "3e-4", "--registry", str(registry), "--register", "--activate", "--model-id", "fracture-tiny",
    ])
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert summary["split"] == "test" and summary["epochs_run"] == 1
    assert "epoch 1/1" in out.err  # progress a person can follow
    # 6 validation images cannot set a 99.5th percentile: said, and no check is written
    assert "input check not fitted: need at least 20 calibration images, got 6" in out.err
    assert not (tmp_path / "models" / "fracture-tiny.features.npz").exists()
    assert "lesion-mask supervision: weight 5" in out.err  # phantoms carry masks: on by default

    # The operating point was chosen on the validation split only.
    from xray_ai.training.datasets import read_mura

    df = read_mura(tiny_dataset)
    valid = df[df["split"] == "valid"]["label"].to_numpy()
    assert seen and all(len(y) == len(valid) and (y == valid).all() for y in seen)

    reg = json.loads(registry.read_text())
    entry = reg["models"]["fracture-tiny"]
    assert reg["active_models"]["fracture"] == "fracture-tiny"
    assert entry["trained_on"]["synthetic"] is True and "phantoms-1.0" in entry["trained_on"]["version"]
    assert entry["metrics"]["split"] == "test" and "ci95" in entry["metrics"]
    assert "validation split" in entry["threshold_method"]
    assert (tmp_path / "models" / "fracture-tiny.metrics.json").is_file()
    assert entry["metrics"]["training"]["lesion_mask_weight"] == 5.0
    assert entry["metrics"]["training"]["learning_rate"] == 3e-4  # --learning-rate overrides the protocol's 1e-3
    assert entry["metrics"]["training"]["fitted_with"].startswith("xray_ai train, TensorFlow ")  # and the device
    scaling = entry["metrics"]["temperature_scaling"]
    assert scaling["fitted_on"] == "valid" and scaling["temperature"] > 0
    assert scaling["applied_at_inference"] is (scaling["temperature"] != 1.0)
    assert scaling["valid_ece_after"] <= scaling["valid_ece_before"] and 0 <= scaling["test_ece_after"] <= 1
    import keras

    saved_model = keras.models.load_model(tmp_path / "models" / "fracture-tiny.keras")
    assert saved_model.layers[-1].name == "probability" and len(saved_model.outputs) == 1
    assert not any("lesion" in layer.name for layer in saved_model.layers)  # the training-only head is gone
    assert getattr(saved_model, "optimizer", None) is None  # no optimizer state in the shipped file

    image = next(tiny_dataset.glob("MURA-v1.1/test/*/*/*/image1.png"))
    assert main(["predict", str(image), "--condition", "fracture", "--json", "--registry", str(registry)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model_id"] == "fracture-tiny" and result["placeholder"] is False
    assert result["threshold"] == entry["threshold"]

    assert main(["evaluate", "--model", "fracture-tiny", "--data", str(tiny_dataset), "--layout", "mura",
                 "--split", "test", "--json", "--registry", str(registry)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == int((df["split"] == "test").sum())

    assert main(["explain-eval", "--model", "fracture-tiny", "--data", str(tiny_dataset), "--layout", "mura",
                 "--methods", "gradcam", "saliency", "--max-images", "3", "--registry", str(registry)]) == 0
    table = capsys.readouterr().out
    assert "gradcam" in table and "saliency" in table and "pointing" in table
    saved = json.loads((tmp_path / "models" / "fracture-tiny.explain.json").read_text())
    assert set(saved["methods"]) == {"gradcam", "saliency"} and 0 < saved["n_images"] <= 3


def test_training_fits_the_input_check_on_the_pipelines_images(tiny_dataset):
    """`train` fits the check on the training split's pooled Grad-CAM features, read through
    the training pipeline; the same images measured through analyze() sit at the same
    distances (pipeline and inference preprocessing agree)."""
    from xray_ai import load_image
    from xray_ai.explain.gradcam import GradCam
    from xray_ai.registry import InputSpec
    from xray_ai.serving.preprocessing import prepare_batch
    from xray_ai.training.architectures import build_classifier
    from xray_ai.training.datasets import read_mura
    from xray_ai.training.features import fit_input_check, pipeline_features

    df = read_mura(tiny_dataset)
    train = df[df["split"] == "train"].reset_index(drop=True)
    spec = InputSpec(32, 32, 3)
    model = build_classifier("compactcnn", spec.shape, dense_units=8)
    check = fit_input_check(pipeline_features(model, spec), train, train, "c" * 64, "tiny phantoms")
    assert check.source == f"tiny phantoms (train {len(train)}, valid {len(train)} images)"
    assert check.n_fit == check.n_calibration == len(train) and check.model_sha256 == "c" * 64
    pooled = GradCam(model)(prepare_batch([load_image(p).pixels for p in train["path"]], spec)).pooled_features
    distances = check.distances(pooled)
    assert np.mean(distances <= check.threshold) >= 0.95  # its own fitting images pass


def test_stage_epochs_sum_to_the_requested_epochs():
    assert stage_epochs(PROTOCOLS["quick"], 5) == [(1.0, 5)]
    stages = stage_epochs(PROTOCOLS["intensive"], 50)
    assert [f for f, _ in stages] == [0.0, 0.3, 1.0] and sum(n for _, n in stages) == 50
    assert sum(n for _, n in stage_epochs(PROTOCOLS["intensive"], 2)) == 2


def test_gradual_unfreezing_freezes_the_bottom_of_the_backbone():
    from xray_ai.training.architectures import build_classifier

    model = build_classifier("mobilenetv2", (32, 32, 3))
    set_trainable_fraction(model, 0.3)
    names = [layer.name for layer in model.layers]
    backbone = model.layers[names.index("input_norm") + 1 : names.index("gap")]
    trainable = [layer.trainable for layer in backbone]
    assert not trainable[0] and trainable[-1]
    assert sum(trainable) == pytest.approx(0.3 * len(backbone), abs=1)
    assert all(layer.trainable for layer in model.layers[names.index("gap"):])


def test_train_refuses_bad_arguments(tmp_path, capsys):
    assert main(["train", "--condition", "fracture", "--arch", "alexnet", "--data", str(tmp_path)]) == 2
    assert "alexnet" in capsys.readouterr().err
    assert main(["train", "--condition", "fracture", "--arch", "mobilenetv2", "--data", str(tmp_path / "none")]) == 2
    assert "no such dataset folder" in capsys.readouterr().err


def test_train_refuses_a_split_with_one_class(tmp_path):
    from xray_ai.training.splits import split_dataset

    df = pd.DataFrame({"path": ["a", "b", "c", "d"], "label": [1, 1, 0, 1], "split": ["train", "train", "valid", "valid"],
                       "study_id": list("abcd"), "patient_id": list("abcd")})
    with pytest.raises(ValueError, match="train split holds only positive images"):
        split_dataset(df, seed=0)


def test_a_folded_temperature_makes_the_model_serve_sigmoid_of_logit_over_t():
    from xray_ai.training.architectures import build_classifier
    from xray_ai.training.temperature import fold_temperature

    model = build_classifier("compactcnn", (32, 32, 3), dense_units=8)
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    p = np.asarray(model(x, training=False)).ravel().astype(np.float64)
    logits = np.log(p) - np.log1p(-p)
    fold_temperature(model, 2.5)
    np.testing.assert_allclose(np.asarray(model(x, training=False)).ravel(), 1 / (1 + np.exp(-logits / 2.5)), atol=1e-6)


def test_trained_on_names_a_pretrained_backbone(tmp_path):
    from xray_ai.training.config import TrainConfig
    from xray_ai.training.registration import describe_data

    phantoms.write_dataset(tmp_path / "ph", "fracture", 4, layout="folders", size=32, seed=1)
    plain = describe_data(TrainConfig("fracture", "compactcnn", tmp_path / "ph"))
    assert plain.synthetic and "pretrained" not in plain.version
    pretrained = describe_data(TrainConfig("fracture", "efficientnetlite0", tmp_path / "ph", weights="imagenet"))
    assert pretrained.synthetic and pretrained.version == f"{plain.version}; backbone pretrained: ImageNet weights"
    further = describe_data(TrainConfig("fracture", "efficientnetlite0", tmp_path / "ph", weights="imagenet",
                                        initial_model=tmp_path / "fast.keras", epochs=3))
    assert further.version == f"{pretrained.version}; fitted further from fast.keras"
    as_it_is = describe_data(TrainConfig("fracture", "compactcnn", tmp_path / "ph",
                                         initial_model=tmp_path / "fast.keras", epochs=0))
    assert as_it_is == plain  # evaluated as it is: the data of the evaluation, nothing fitted here


def test_a_body_part_head_trains_with_the_label_and_is_saved_beside_the_model(tiny_dataset, tmp_path, capsys):
    from xray_ai.serving import artifacts, body_part

    code = main(["train", "--condition", "fracture", "--arch", "compactcnn", "--data", str(tiny_dataset),
                 "--layout", "mura", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--body-part-weight", "1", "--out", str(tmp_path), "--model-id", "with-parts"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "body-part head: weight 1" in out.err
    model = tmp_path / "with-parts.keras"
    head, reason = body_part.load(artifacts.body_part_path(model), artifacts.file_sha256(model))
    assert reason is None and len(head.classes) >= 2 and head.kernel.shape[1] == len(head.classes)
    metrics = json.loads((tmp_path / "with-parts.metrics.json").read_text())
    assert metrics["body_part"]["split"] == "test" and 0 <= metrics["body_part"]["accuracy"] <= 1
    assert metrics["body_part"]["classes"] == list(head.classes) and metrics["training"]["body_part_weight"] == 1.0
    # a dataset without body parts has none to learn
    phantoms.write_dataset(tmp_path / "chest", "pneumonia", 40, layout="folders", size=32, seed=1)
    assert main(["train", "--condition", "pneumonia", "--arch", "compactcnn", "--data", str(tmp_path / "chest"),
                 "--image-size", "32", "--epochs", "1", "--body-part-weight", "1", "--out", str(tmp_path)]) == 2
    assert "needs training images of at least two body parts" in capsys.readouterr().err


def test_body_part_targets_index_the_listed_parts_and_weigh_unknown_ones_zero():
    from xray_ai.training.splits import body_part_targets

    df = pd.DataFrame({"body_part": ["wrist", None, "elbow", "knee"]})
    index, weight = body_part_targets(df, ("elbow", "wrist"))
    assert index.tolist() == [1, 0, 0, 0] and weight.tolist() == [1, 0, 1, 0]


def test_importing_the_training_steps_imports_neither_tensorflow_nor_keras():
    """Every step of `train` imports TensorFlow and Keras where it runs them, so that the CLI
    and models/fit_on_gpu.py (Keras on JAX) can import the steps without them."""
    import subprocess
    import sys

    code = ("import sys, xray_ai.training.trainer, xray_ai.training.datasets; "
            "assert not {'tensorflow', 'keras'} & set(sys.modules), 'tensorflow or keras imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
