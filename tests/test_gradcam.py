import numpy as np
import pytest
import tensorflow as tf

from conftest import bright_square_data
from xray_ai.explain.base import normalise_map
from xray_ai.explain.gradcam import GradCam, compute_gradcam, find_target_layer


@pytest.fixture(params=["flat_model", "nested_model", "sequential_model"])
def any_model(request):
    return request.getfixturevalue(request.param)


def test_target_layer_paths(flat_model, nested_model, sequential_model):
    assert find_target_layer(flat_model) == "conv2"
    assert find_target_layer(nested_model) == "backbone/conv2"
    assert find_target_layer(sequential_model) == "seq_backbone/conv2"


def test_no_4d_layer_is_a_clear_error(keras_mod):
    keras = keras_mod
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs), name="mlp")
    with pytest.raises(ValueError, match="'mlp' has no layer with a 4-D"):
        find_target_layer(model)
    out = GradCam(model)(np.zeros((1, 8), np.float32))  # falls back, flagged, no NaN
    assert out.method == "none" and out.flags[0].startswith("Grad-CAM unavailable")


def test_heatmap_is_2d_in_unit_range_without_nan(any_model):
    x = np.random.default_rng(1).random((1, 32, 32, 1), np.float32)
    cam = compute_gradcam(any_model, x)
    assert cam.shape == (16, 16) and cam.dtype == np.float32
    assert not np.isnan(cam).any() and cam.min() >= 0 and cam.max() <= 1


def test_probability_matches_model_output(any_model):
    x = np.random.default_rng(2).random((3, 32, 32, 1), np.float32)
    out = GradCam(any_model)(x)
    np.testing.assert_allclose(out.probabilities, any_model(x).numpy().ravel(), atol=1e-6)
    assert out.heatmaps.shape == (3, 16, 16)


def _reference_gradcam(features_fn, head_logit_fn, x):
    """Eager Grad-CAM written out by hand: features -> logit, gradient of the logit."""
    with tf.GradientTape() as tape:
        feats = features_fn(x)
        tape.watch(feats)
        logit = head_logit_fn(feats)
    grads = tape.gradient(logit, feats)
    cam = tf.nn.relu(tf.reduce_sum(feats * tf.reduce_mean(grads, axis=(1, 2), keepdims=True), -1))[0].numpy()
    return normalise_map(cam)[0]


def test_nested_model_matches_hand_written_reference(nested_model):
    m = nested_model
    x = np.random.default_rng(3).random((1, 32, 32, 1), np.float32)
    head = m.get_layer("head")
    ref = _reference_gradcam(
        lambda t: m.get_layer("backbone")(m.get_layer("norm")(t)),
        lambda f: tf.matmul(m.get_layer("gap")(f), head.kernel) + head.bias,  # logit, not sigmoid
        x,
    )
    np.testing.assert_allclose(compute_gradcam(m, x), ref, atol=1e-5)


def test_flat_model_matches_hand_written_reference(flat_model):
    m = flat_model
    x = np.random.default_rng(4).random((1, 32, 32, 1), np.float32)
    ref = _reference_gradcam(
        lambda t: m.get_layer("conv2")(m.get_layer("pool1")(m.get_layer("conv1")(t))),
        lambda f: m.get_layer("logit")(m.get_layer("gap")(f)),
        x,
    )
    np.testing.assert_allclose(compute_gradcam(m, x), ref, atol=1e-5)


def test_saturated_sigmoid_still_gives_a_map(keras_mod):
    """Differentiating the logit keeps the map alive where d(sigmoid) underflows to 0."""
    keras = keras_mod
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv",
                            kernel_initializer="ones")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(50.0),
                             bias_initializer=keras.initializers.Constant(100.0))(x)
    model = keras.Model(inputs, out)
    x = np.random.default_rng(5).random((1, 32, 32, 1), np.float32)
    assert float(model(x)[0, 0]) == 1.0  # fully saturated in float32
    cam = compute_gradcam(model, x)
    assert cam.max() == pytest.approx(1.0, abs=1e-4)


def test_zero_gradient_gives_zeros_and_flag(keras_mod):
    keras = keras_mod
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros")(x)
    model = keras.Model(inputs, out)
    res = GradCam(model)(np.ones((1, 32, 32, 1), np.float32))
    assert not res.heatmaps.any() and "zero gradient" in res.flags[0]


def test_input_must_be_a_single_batch(flat_model):
    with pytest.raises(ValueError, match=r"\(1, H, W, C\)"):
        compute_gradcam(flat_model, np.zeros((2, 32, 32, 1), np.float32))


@pytest.mark.parametrize("kind", ["flat", "nested"])
def test_trained_bright_square_detector_points_at_the_square(keras_mod, kind):
    keras = keras_mod
    keras.utils.set_random_seed(7)
    inputs = keras.Input((32, 32, 1))
    if kind == "flat":
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="features")(x)
    else:
        b_in = keras.Input((32, 32, 1))
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(b_in)
        y = keras.layers.MaxPooling2D(2)(y)
        y = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="features")(y)
        x = keras.Model(b_in, y, name="inner")(inputs)
    x = keras.layers.GlobalMaxPooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    x_train, y_train, _ = bright_square_data(400, seed=0)
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    x_test, y_test, boxes = bright_square_data(40, seed=1)
    assert model.evaluate(x_test, y_test, verbose=0)[1] >= 0.9  # it learned the task
    cam_runner = GradCam(model)
    hits = 0
    positives = [i for i in range(len(y_test)) if y_test[i]]
    for i in positives:
        cam = cam_runner(x_test[i : i + 1]).heatmaps[0]
        pr, pc = np.unravel_index(np.argmax(cam), cam.shape)
        scale = 32 / cam.shape[0]
        r, c = boxes[i]
        # cell centre in image pixels must lie in the 8x8 square (1 px tolerance for the cell grid)
        cy, cx = (pr + 0.5) * scale, (pc + 0.5) * scale
        hits += (r - 1 <= cy <= r + 9) and (c - 1 <= cx <= c + 9)
    assert hits / len(positives) >= 0.9


def test_normalise_map_scales_by_the_peak_and_zeroes_what_it_cannot_use():
    cam = np.array([[-1.0, 0.5], [2.0, 0.0]], np.float32)
    out, flag = normalise_map(cam)
    assert flag is None and out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.25], [1.0, 0.0]], atol=1e-6)
    assert cam[0, 0] == -1.0  # the caller's map is left alone
    bad, flag = normalise_map(np.array([[np.nan, 1.0], [np.inf, -np.inf]], np.float32))
    assert flag is None
    np.testing.assert_allclose(bad, [[0.0, 1.0], [0.0, 0.0]], atol=1e-6)
    for empty in (np.zeros((2, 2), np.float32), np.full((2, 2), -3.0, np.float32), np.full((2, 2), np.nan, np.float32)):
        zeros, flag = normalise_map(empty)
        assert flag and "zero gradient" in flag and not zeros.any()
