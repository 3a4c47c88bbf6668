import numpy as np
import pytest

from conftest import bright_square_data
from xray_ai.explain.base import METHOD_NAMES, METHOD_TABLE, METHODS
from xray_ai.explain.methods import Explainer

GRADIENT_METHODS = ("default", "gradcam", "gradcam++", "hirescam", "layercam", "layercam-fusion", "saliency", "smoothgrad")


@pytest.fixture(scope="module")
def square_model():
    """A small CNN trained to detect a bright 8x8 square in noise (32x32x1)."""
    import keras

    keras.utils.set_random_seed(11)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(logit))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    x_train, y_train, _ = bright_square_data(400, seed=0)
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    x_test, y_test, _ = bright_square_data(40, seed=1)
    assert model.evaluate(x_test, y_test, verbose=0)[1] >= 0.9
    return model


@pytest.fixture(params=["flat_model", "nested_model"])
def tiny(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_clean_2d_map(tiny, method):
    explainer = Explainer(tiny, lime_samples=60, lime_segments=12)
    x = np.random.default_rng(0).random((1, 32, 32, 1), np.float32)
    out = explainer.explain(x, method)
    assert out.heatmap.ndim == 2 and out.heatmap.dtype == np.float32
    assert not np.isnan(out.heatmap).any() and 0 <= out.heatmap.min() and out.heatmap.max() <= 1
    # "default" names the map it stands for (here, without a registry setting, Grad-CAM)
    assert out.method == ("gradcam" if method == "default" else method) and out.seconds >= 0


def _square_hits(model, method, n=10):
    explainer = Explainer(model, lime_samples=200, lime_segments=30)
    x_test, y_test, boxes = bright_square_data(2 * n, seed=5)
    hits = 0
    for i in [i for i in range(len(y_test)) if y_test[i]]:
        cam = explainer.explain(x_test[i : i + 1], method).heatmap
        pr, pc = np.unravel_index(np.argmax(cam), cam.shape)
        scale = 32 / cam.shape[0]
        cy, cx = (pr + 0.5) * scale, (pc + 0.5) * scale
        r, c = boxes[i]
        hits += (r - 1 <= cy <= r + 9) and (c - 1 <= cx <= c + 9)
    return hits / n


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_methods_peak_inside_the_square(square_model, method):
    assert _square_hits(square_model, method) >= 0.9


def test_lime_top_superpixel_overlaps_the_square(square_model):
    explainer = Explainer(square_model, lime_samples=200, lime_segments=30)
    x_test, y_test, boxes = bright_square_data(10, seed=6)
    overlaps = 0
    positives = [i for i in range(len(y_test)) if y_test[i]]
    for i in positives:
        cam = explainer.explain(x_test[i : i + 1], "lime").heatmap
        top = cam >= cam.max() - 1e-6  # the top superpixel(s)
        r, c = boxes[i]
        overlaps += bool(top[r : r + 8, c : c + 8].any()) and cam.max() > 0
    assert overlaps / len(positives) >= 0.8


def test_lime_reports_progress(tiny):
    seen = []
    Explainer(tiny, lime_samples=60, lime_segments=8).explain(np.zeros((1, 32, 32, 1), np.float32), "lime", seen.append)
    assert seen and seen[-1] == pytest.approx(1.0)


def test_the_method_table_names_each_method_once_and_every_implementation_exists():
    assert METHODS == ("default", "gradcam", "gradcam++", "hirescam", "layercam", "layercam-fusion", "saliency",
                       "smoothgrad", "lime")  # the order the app offers: the model's default first
    assert list(METHOD_NAMES) == list(METHODS) and all(METHOD_NAMES.values())
    for spec in METHOD_TABLE:
        assert callable(spec.load()), spec


def test_the_method_table_imports_no_tensorflow():
    """The pages and the CLI read it before any model is loaded."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, xray_ai.explain.base; "
            "print([m for m in ('tensorflow', 'keras', 'streamlit') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_unknown_method_lists_the_valid_ones(flat_model):
    with pytest.raises(ValueError, match="gradcam\\+\\+"):
        Explainer(flat_model).explain(np.zeros((1, 32, 32, 1), np.float32), "occlusion")


def test_deletion_insertion_reward_a_faithful_map(square_model):
    from xray_ai.explain.scores import deletion_insertion

    x_test, y_test, boxes = bright_square_data(6, seed=8)
    i = int(np.flatnonzero(y_test)[0])
    r, c = boxes[i]
    good = np.zeros((32, 32), np.float32)
    good[r : r + 8, c : c + 8] = 1.0
    bad = 1.0 - good  # points everywhere but the square
    predict = lambda b: square_model(b, training=False).numpy().ravel()
    d_good, i_good = deletion_insertion(predict, x_test[i], good)
    d_bad, i_bad = deletion_insertion(predict, x_test[i], bad)
    assert d_good < d_bad and i_good > i_bad


def test_evaluate_explanations_table(square_model):
    from xray_ai.explain.evaluate import evaluate_explanations, format_table

    x_test, y_test, boxes = bright_square_data(8, seed=9)
    images, masks = [], []
    for i in np.flatnonzero(y_test):
        r, c = boxes[i]
        mask = np.zeros((32, 32), bool)
        mask[r : r + 8, c : c + 8] = True
        images.append(x_test[i])
        masks.append(mask)
    explainer = Explainer(square_model, lime_samples=100, lime_segments=20)
    predict = lambda b: square_model(b, training=False).numpy().ravel()
    report = evaluate_explanations(explainer, predict, images, masks, ["gradcam", "saliency"], model_id="toy")
    assert report["n_images"] == len(images)
    assert report["methods"]["gradcam"]["pointing_game"] >= 0.75
    assert "gradcam" in format_table(report) and "saliency" in format_table(report)
