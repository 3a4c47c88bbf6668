import numpy as np
import pytest

from xray_ai import XRay

from xray_ai import analyze

from xray_ai import load_image
from xray_ai.serving.manager import ModelManager
from xray_ai.serving.preprocessing import prepare_batch, resize_image
from xray_ai.registry import InputSpec
from xray_ai.result import BodyPartEstimate
from conftest import EXAMPLES, write_tiny_registry


@pytest.fixture()
def manager(tiny_registry):
    return ModelManager(tiny_registry)


def test_single_view_result_carries_provenance(manager):
    image = load_image(EXAMPLES / "rg3_tibia.png")
    result = analyze(image, "fracture", manager=manager)
    assert result.model_id == "tiny-test" and result.model_version == "0.0.1-test"
    assert result.intended_use == "unit tests only" and result.threshold == 0.5
    assert not result.placeholder and result.heatmap_method == "gradcam"
    view = result.views[0]
    assert view.heatmap.ndim == 2 and view.heatmap.dtype == np.float32
    assert 0 <= view.heatmap.min() and view.heatmap.max() <= 1 and not np.isnan(view.heatmap).any()
    expected = manager.get("fracture").model(prepare_batch([image.pixels], InputSpec(32, 32, 1))).numpy()[0, 0]
    assert result.probability == pytest.approx(float(expected), abs=1e-6)
    assert any("synthetic" in w for w in result.warnings)  # the fixture says synthetic: true


def test_study_probability_is_the_mean_of_views(manager):
    rng = np.random.default_rng(0)
    views = [XRay(rng.random((40 + 7 * i, 50), dtype=np.float32), {}, f"v{i}.png") for i in range(3)]
    result = analyze(views, "fracture", manager=manager)
    probs = [v.probability for v in result.views]
    assert result.probability == pytest.approx(np.mean(probs))
    assert [v.filename for v in result.views] == ["v0.png", "v1.png", "v2.png"]
    assert result.to_json()["views"][1]["file"] == "v1.png"


def test_decision_follows_the_registry_threshold(tiny_registry):
    import json

    raw = json.loads(tiny_registry.read_text())
    raw["models"]["tiny-test"]["threshold"] = 0.0
    tiny_registry.write_text(json.dumps(raw))
    result = analyze(XRay(np.zeros((32, 32), np.float32)), "fracture", manager=ModelManager(tiny_registry))
    assert result.decision == "fracture" and result.to_json()["decision"] == "fracture"


def test_image_warnings_are_carried_with_the_file_name(manager):
    image = XRay(np.zeros((32, 32), np.float32), {"warnings": ["multi-frame: first frame used"]}, "cine.dcm")
    result = analyze(image, "fracture", manager=manager)
    assert "cine.dcm: multi-frame: first frame used" in result.warnings


def test_placeholder_result_cannot_pass_for_real(tmp_path):
    registry = write_tiny_registry(tmp_path, tmp_path / "gone.keras", sha256="0" * 64)
    result = analyze(XRay(np.zeros((64, 64), np.float32)), "fracture", manager=ModelManager(registry))
    data = result.to_json()
    assert data["placeholder"] is True and data["sha256"] is None
    assert data["architecture"].startswith("placeholder") and "untrained" in data["trained_on"]
    assert data["warnings"][0].startswith("PLACEHOLDER MODEL")


def test_no_images_or_too_many(manager):
    with pytest.raises(ValueError, match="no images"):
        analyze([], "fracture", manager=manager)
    with pytest.raises(ValueError, match="at most 16"):
        analyze([XRay(np.zeros((8, 8), np.float32))] * 17, "fracture", manager=manager)


@pytest.mark.parametrize(
    "mode, expected",
    [("unit", 0.5), ("imagenet_tf", 0.0), ("raw255", 127.5), ("imagenet_caffe", 127.5 - 103.939)],
)
def test_prepare_batch_modes(mode, expected):
    batch = prepare_batch([np.full((10, 20), 0.5, np.float32)], InputSpec(8, 8, 3), mode)
    assert batch.shape == (1, 8, 8, 3) and batch.dtype == np.float32
    assert batch[0, 0, 0, 0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("shape, size", [((512, 512), (224, 224)), ((300, 250), (96, 96)), ((1000, 700), (224, 160)),
                                         ((65, 97), (64, 32)), ((40, 40), (8, 8))])
def test_shrinking_is_exact_area_averaging(shape, size):
    """The sparse area resize gives what cv2.INTER_AREA (and the training pipeline's
    tf.image.resize area) gives, at integer and fractional scales, every pixel, C-contiguous."""
    import cv2

    img = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    out = resize_image(img, *size)
    assert out.shape == size and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA), atol=1e-6)


def test_area_resize_at_integer_scale_is_the_block_mean():
    img = np.arange(36, dtype=np.float32).reshape(6, 6)
    expected = img.reshape(2, 3, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(resize_image(img, 2, 2), expected, rtol=1e-6)
    assert resize_image(np.full((7, 9), 0.25, np.float32), 3, 4) == pytest.approx(np.full((3, 4), 0.25), abs=1e-7)


def test_prepare_batch_never_writes_into_the_callers_images():
    """Clipping happens in place on resized copies only: an image already at the input size
    (resize returns it as it is) and outside [0, 1] is left untouched."""
    at_size = np.linspace(-0.5, 1.5, 64, dtype=np.float32).reshape(8, 8)
    larger = np.linspace(-0.5, 1.5, 256, dtype=np.float32).reshape(16, 16)
    kept = at_size.copy(), larger.copy()
    batch = prepare_batch([at_size, larger], InputSpec(8, 8, 3))
    assert np.array_equal(at_size, kept[0]) and np.array_equal(larger, kept[1])
    assert batch.min() == 0.0 and batch.max() == 1.0
    np.testing.assert_array_equal(batch[0], np.repeat(np.clip(at_size, 0, 1)[:, :, None], 3, axis=2))


def test_prepare_batch_rejects_colour_arrays():
    with pytest.raises(ValueError, match="2-D gray"):
        prepare_batch([np.zeros((4, 4, 3), np.float32)], InputSpec(8, 8, 1))


def test_placeholder_report_carries_the_watermark(tmp_path):
    """End to end: a missing model file -> placeholder -> PDF whose text says so."""
    import io

    from pypdf import PdfReader

    from xray_ai import build_report

    registry = write_tiny_registry(tmp_path, tmp_path / "gone.keras", sha256=None)
    result = analyze(load_image(EXAMPLES / "rg3_tibia.png"), "fracture", manager=ModelManager(registry))
    pdf = build_report(result)
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "PLACEHOLDER MODEL - NOT A DIAGNOSTIC RESULT" in " ".join(text.split())
    assert "tiny-test" in text


@pytest.mark.parametrize("backend", ["tensorflow", "onnx"])
def test_a_body_part_head_beside_the_model_names_the_part_of_each_view(tiny_registry, tiny_model_file, backend):
    from xray_ai.serving import body_part

    _, sha = tiny_model_file
    kernel = np.zeros((8, 2))
    kernel[:, 1] = 1.0  # any activation at all favours "wrist"
    body_part.save(body_part.BodyPartHead(("elbow", "wrist"), kernel, np.zeros(2), sha),
                   tiny_registry.parent / "tiny.bodypart.npz")
    manager = ModelManager(tiny_registry, backend=backend)
    loaded = manager.get("fracture")
    views = [load_image(EXAMPLES / "rg3_tibia.png"), XRay(np.full((40, 40), 0.7, np.float32), {}, "flat.png")]
    result = analyze(views, "fracture", manager=manager)
    pooled = loaded.analyzer(prepare_batch([v.pixels for v in views], InputSpec(32, 32, 1))).pooled_features
    expected = loaded.body_part_head.predict(pooled)
    for view, (part, p) in zip(result.views, expected):
        assert view.body_part == BodyPartEstimate("tiny-test", part, pytest.approx(p))
    assert result.to_json()["views"][0]["body_part"] == {"model_id": "tiny-test", "part": expected[0][0],
                                                         "probability": round(expected[0][1], 6)}
    assert result.body_part_summary.startswith(f"view 1: {expected[0][0]} ({expected[0][1]:.0%}); view 2:")
    assert "the model's own estimate" in result.body_part_summary

    # A head fitted for another model file is not used.
    body_part.save(body_part.BodyPartHead(("elbow", "wrist"), kernel, np.zeros(2), "0" * 64),
                   tiny_registry.parent / "tiny.bodypart.npz")
    result = analyze(views, "fracture", manager=ModelManager(tiny_registry, backend=backend))
    assert all(v.body_part is None for v in result.views) and result.body_part_summary is None
    assert result.to_json()["views"][0]["body_part"] is None
