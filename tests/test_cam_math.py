"""The CAM arithmetic both backends share (numpy only): layer maps, fusion, the heatmap setting."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from xray_ai.explain.cam_math import (CAM_METHODS, HeatmapSpec, combine, cost_rank, fuse_maps, layer_map,
                                      resize_bilinear)


def _pair(shape=(2, 4, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(shape, np.float32), rng.normal(size=shape).astype(np.float32)


def test_layer_maps_follow_their_definitions():
    a, g = _pair()
    n, h, w, k = a.shape
    for i in range(n):
        weights = g[i].mean(axis=(0, 1))
        by_hand = {
            "gradcam": np.maximum(sum(a[i, :, :, c] * weights[c] for c in range(k)), 0),
            "hirescam": np.maximum(sum(a[i, :, :, c] * g[i, :, :, c] for c in range(k)), 0),
            "layercam": np.maximum(sum(a[i, :, :, c] * np.maximum(g[i, :, :, c], 0) for c in range(k)), 0),
        }
        for method in CAM_METHODS:
            out = layer_map(method, a, g)
            assert out.shape == (n, h, w) and out.dtype == np.float32
            np.testing.assert_allclose(out[i], by_hand[method], rtol=1e-5, atol=1e-6)


def test_layercam_keeps_only_positive_gradients_and_differs_from_gradcam():
    a = np.ones((1, 2, 2, 2), np.float32)
    g = np.array([[[[1.0, -1.0], [1.0, -1.0]], [[1.0, -1.0], [-3.0, 2.0]]]], np.float32)
    np.testing.assert_allclose(layer_map("layercam", a, g)[0], [[1, 1], [1, 2]])
    np.testing.assert_allclose(layer_map("hirescam", a, g)[0], [[0, 0], [0, 0]])  # 1 - 1, and ReLU(-1)
    np.testing.assert_allclose(layer_map("gradcam", a, g)[0], np.zeros((2, 2)))  # mean weights 0 and -0.25


def test_layer_map_refuses_bad_shapes_and_methods():
    a, g = _pair()
    with pytest.raises(ValueError, match="both be"):
        layer_map("gradcam", a, g[..., :2])
    with pytest.raises(ValueError, match="unknown CAM method 'occlusion'"):
        layer_map("occlusion", a, g)


@pytest.mark.parametrize("src,dst", [((7, 7), (28, 28)), ((14, 14), (28, 28)), ((5, 3), (9, 12)), ((28, 28), (7, 7))])
def test_resize_bilinear_is_opencvs_linear_resize(src, dst):
    maps = np.random.default_rng(1).random((2, *src), np.float32)
    ours = resize_bilinear(maps, dst)
    for m, o in zip(maps, ours):
        np.testing.assert_allclose(o, cv2.resize(m, dst[::-1], interpolation=cv2.INTER_LINEAR), atol=1e-5)


def test_one_layer_combines_to_its_layer_map_exactly():
    a, g = _pair()
    for method in CAM_METHODS:
        spec = HeatmapSpec(method, ("x",))
        np.testing.assert_array_equal(combine(spec, [a], [g]), layer_map(method, a, g))


def test_fusion_scales_each_layer_resizes_to_the_finest_grid_and_averages():
    coarse, fine = _pair((2, 7, 7, 4), 2), _pair((2, 14, 14, 3), 3)
    spec = HeatmapSpec("layercam", ("c", "f"))
    out = combine(spec, [coarse[0], fine[0]], [coarse[1], fine[1]])
    assert out.shape == (2, 14, 14)
    for i in range(2):
        parts = []
        for a, g in (coarse, fine):
            m = layer_map("layercam", a, g)[i]
            m = (m - m.min()) / (m.max() - m.min() + 1e-7)
            parts.append(cv2.resize(m, (14, 14), interpolation=cv2.INTER_LINEAR))
        np.testing.assert_allclose(out[i], np.mean(parts, axis=0), atol=1e-5)
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_fusion_of_an_empty_layer_stays_finite():
    maps = [np.zeros((1, 7, 7), np.float32), np.random.default_rng(4).random((1, 14, 14), np.float32)]
    out = fuse_maps(maps)
    assert np.isfinite(out).all() and out.shape == (1, 14, 14)


def test_combine_checks_it_has_a_pair_per_layer():
    a, g = _pair()
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        combine(HeatmapSpec("gradcam", ("x", "y")), [a], [g])


def test_heatmap_spec_round_trips_the_registry_field():
    field = {"method": "layercam", "layers": ["backbone/block_13_expand_relu"], "contour_level": 0.4,
             "chosen_on": "validation split", "pointing_game_tolerant": 0.91, "candidates": {"gradcam@32": 0.1}}
    spec = HeatmapSpec.from_json(field)
    assert spec.method == "layercam" and spec.layers == ("backbone/block_13_expand_relu",)
    assert spec.contour_level == 0.4 and spec.provenance["chosen_on"] == "validation split"
    assert spec.to_json() == field
    assert spec == HeatmapSpec("layercam", ("backbone/block_13_expand_relu",))  # the map, not its record
    assert hash(spec) == hash(HeatmapSpec("layercam", ("backbone/block_13_expand_relu",)))


def test_the_default_setting_is_last_layer_gradcam():
    spec = HeatmapSpec.default()
    assert spec.is_default and spec.method == "gradcam" and spec.layers == ()
    assert HeatmapSpec.from_json({"method": "gradcam"}).is_default
    assert not HeatmapSpec("gradcam", ("conv2",)).is_default


@pytest.mark.parametrize("field,message", [
    ({"method": "occlusion", "layers": ["a"]}, "'occlusion' is not one of gradcam, hirescam, layercam"),
    ({"layers": ["a"]}, "heatmap.method: missing"),
    ({"method": "layercam", "layers": "a"}, "must be a list"),
    ({"method": "layercam", "layers": ["a", "a"]}, "twice"),
    ({"method": "layercam", "layers": ["a//b"]}, "empty part"),
    ({"method": "layercam", "layers": [" a"]}, "list of layer paths"),
    ({"method": "layercam", "layers": ["a"], "contour_level": 0}, "contour_level"),
    ({"method": "layercam", "layers": ["a"], "contour_level": True}, "contour_level"),
    ([], "must be an object"),
])
def test_a_bad_heatmap_field_is_a_clear_error(field, message):
    with pytest.raises(ValueError, match=message):
        HeatmapSpec.from_json(field)


def test_cost_rank_prefers_coarse_single_layers_and_gradcam():
    strides = {"a32": 32, "a16": 16, "a8": 8}
    specs = [HeatmapSpec("layercam", ("a16", "a8")), HeatmapSpec("layercam", ("a8",)), HeatmapSpec("hirescam", ("a16",)),
             HeatmapSpec("gradcam", ("a16",)), HeatmapSpec("gradcam", ("a32",))]
    ordered = sorted(specs, key=lambda s: cost_rank(s, strides))
    assert [s.label for s in ordered] == ["gradcam at a32", "gradcam at a16", "hirescam at a16", "layercam at a8",
                                          "layercam fusion of a16 + a8"]


def test_cam_math_imports_numpy_only():
    code = ("import sys, xray_ai.explain.cam_math; "
            "print([m for m in ('tensorflow', 'keras', 'cv2', 'streamlit') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
