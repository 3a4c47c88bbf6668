"""HiResCAM, LayerCAM and fusion on the TensorFlow path: layers by stride (nested models too),
several layers in one compiled pass, and the same maps as cam_math computes from the
exported features and gradients."""

import numpy as np
import pytest
import tensorflow as tf

from xray_ai.explain.base import normalise_map
from xray_ai.explain.cam_math import CAM_METHODS, HeatmapSpec, combine
from xray_ai.explain.gradcam import (GradCam, build_feature_gradient_model, find_target_layer, layers_by_stride)

PATHS = {"flat_model": "", "nested_model": "backbone/", "sequential_model": "seq_backbone/"}


@pytest.fixture(params=list(PATHS))
def kind(request):
    return request.param, request.getfixturevalue(request.param)


def _features_and_gradients(model, layers, x):
    """The reference: features and logit gradients from build_feature_gradient_model, eagerly."""
    grad_model = build_feature_gradient_model(model, layers)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        *features, logit, prob = grad_model(xt, training=False)
        score = tf.reduce_sum(logit)
    grads = tape.gradient(score, features)
    return [f.numpy() for f in features], [g.numpy() for g in grads], prob.numpy().ravel()


def test_layers_by_stride_in_flat_nested_and_sequential_models(kind):
    name, model = kind
    prefix = PATHS[name]
    assert layers_by_stride(model) == {2: f"{prefix}conv2", 1: f"{prefix}conv1"}
    assert next(iter(layers_by_stride(model).values())) == find_target_layer(model)


def test_layers_by_stride_of_mobilenetv2_are_the_expand_layers_before_each_downsampling(keras_mod):
    model = keras_mod.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=1,
                                               classifier_activation="sigmoid")
    found = layers_by_stride(model)
    assert (found[32], found[16], found[8]) == ("out_relu", "block_13_expand_relu", "block_6_expand_relu")
    assert not any("pad" in path for path in found.values())


@pytest.mark.parametrize("method", CAM_METHODS)
def test_each_method_matches_cam_math_on_the_exported_gradients(kind, method):
    name, model = kind
    prefix = PATHS[name]
    x = np.random.default_rng(5).random((3, 32, 32, 1), np.float32)
    for layers in ((f"{prefix}conv2",), (f"{prefix}conv1",), (f"{prefix}conv2", f"{prefix}conv1")):
        spec = HeatmapSpec(method, layers)
        out = GradCam(model, heatmap=spec)(x)
        features, grads, prob = _features_and_gradients(model, list(layers), x)
        ref = combine(spec, features, grads)
        assert out.heatmaps.shape == ref.shape == (3, *features[-1].shape[1:3])
        for got, raw in zip(out.heatmaps, ref):
            np.testing.assert_allclose(got, normalise_map(raw)[0], atol=1e-5)
        np.testing.assert_allclose(out.probabilities, prob, atol=1e-6)
        assert out.method == method and out.target_layer == "+".join(layers)


def test_no_setting_and_the_default_setting_are_todays_gradcam_bit_for_bit(kind):
    _, model = kind
    x = np.random.default_rng(6).random((2, 32, 32, 1), np.float32)
    today, default = GradCam(model)(x), GradCam(model, heatmap=HeatmapSpec.default())(x)
    np.testing.assert_array_equal(today.heatmaps, default.heatmaps)
    np.testing.assert_array_equal(today.pooled_features, default.pooled_features)
    assert today.method == "gradcam" and today.target_layer == find_target_layer(model)


def test_pooled_features_come_from_the_last_layer_whatever_the_maps_layer(kind):
    name, model = kind
    x = np.random.default_rng(7).random((2, 32, 32, 1), np.float32)
    fine = GradCam(model, heatmap=HeatmapSpec("layercam", (f"{PATHS[name]}conv1",)))(x)
    np.testing.assert_allclose(fine.pooled_features, GradCam(model)(x).pooled_features, atol=1e-6)
    assert fine.heatmaps.shape == (2, 32, 32)


def test_a_setting_the_model_cannot_take_falls_back_to_gradcam_and_says_so(flat_model):
    x = np.random.default_rng(8).random((1, 32, 32, 1), np.float32)
    cam = GradCam(flat_model, heatmap=HeatmapSpec("layercam", ("no_such_layer",)))
    out = cam(x)
    assert cam.method == "gradcam" and cam.target_layer == "conv2"
    assert "heatmap setting unusable" in out.flags[0] and "no_such_layer" in out.flags[0]
    np.testing.assert_array_equal(out.heatmaps, GradCam(flat_model)(x).heatmaps)
    with pytest.raises(ValueError, match="no layer 'no_such_layer' in 'tiny_flat'"):
        GradCam(flat_model, heatmap=HeatmapSpec("layercam", ("no_such_layer",)), strict=True)
    with pytest.raises(ValueError, match="'gap' of 'tiny_flat' has no 4-D"):
        GradCam(flat_model, heatmap=HeatmapSpec("hirescam", ("gap",)), strict=True)


def test_build_feature_gradient_model_gives_features_logit_and_probability(nested_model):
    grad_model = build_feature_gradient_model(nested_model, ["backbone/conv2", "backbone/conv1"])
    x = np.random.default_rng(9).random((2, 32, 32, 1), np.float32)
    f2, f1, logit, prob = (t.numpy() for t in grad_model(x, training=False))
    assert f2.shape == (2, 16, 16, 8) and f1.shape == (2, 32, 32, 4) and logit.shape == prob.shape == (2, 1)
    np.testing.assert_allclose(prob, nested_model(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logit)), atol=1e-6)  # the logit, not the probability
    with pytest.raises(ValueError, match="no layers"):
        build_feature_gradient_model(nested_model, [])


def test_the_explainer_shows_the_models_default_setting(flat_model):
    from xray_ai.explain.methods import Explainer, explainer_for

    x = np.random.default_rng(10).random((1, 32, 32, 1), np.float32)
    spec = HeatmapSpec("layercam", ("conv1",), 0.4)
    out = Explainer(flat_model, heatmap=spec).explain(x, "default")
    assert out.method == "layercam" and out.target_layer == "conv1" and out.heatmap.shape == (32, 32)
    np.testing.assert_allclose(out.heatmap, GradCam(flat_model, heatmap=spec)(x).heatmaps[0], atol=1e-6)
    plain = Explainer(flat_model).explain(x, "default")  # no setting: last-layer Grad-CAM
    assert plain.method == "gradcam" and plain.target_layer == "conv2"
    assert explainer_for(flat_model, spec).heatmap == spec and explainer_for(flat_model).heatmap == spec


def test_a_trained_detector_points_at_the_square_with_layercam_at_the_finest_layer(keras_mod):
    """The finer map (stride 1 here) localises the 8x8 square at least as well as stride 2."""
    from conftest import bright_square_data
    from xray_ai.explain.scores import pointing_game

    keras = keras_mod
    keras.utils.set_random_seed(7)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalMaxPooling2D()(x))
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    x_train, y_train, _ = bright_square_data(400, seed=0)
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    x_test, y_test, boxes = bright_square_data(40, seed=1)
    positives = np.flatnonzero(y_test)
    masks = []
    for i in positives:
        mask = np.zeros((32, 32), bool)
        r, c = boxes[i]
        mask[r : r + 8, c : c + 8] = True
        masks.append(mask)
    hits = {}
    for spec in (HeatmapSpec("layercam", ("c1",)), HeatmapSpec("hirescam", ("c1",)), HeatmapSpec("layercam", ("c2", "c1"))):
        maps = GradCam(model, heatmap=spec)(x_test[positives]).heatmaps
        hits[spec.label] = pointing_game(list(maps), masks)
    assert min(hits.values()) >= 0.9, hits
