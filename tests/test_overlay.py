"""Tests for xray_ai.outputs.overlay: blending, intensity, annotations, markers, watermark, speed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from xray_ai.outputs.overlay import Marker, render_overlay, strongest_region, to_rgb8


def _radiograph(height: int = 256, width: int = 192) -> np.ndarray:
    """A smooth 'bone' band on a dark background, float32 H x W in [0, 1]."""
    yy, xx = np.mgrid[0:1:complex(height), 0:1:complex(width)].astype(np.float32)
    return (0.15 + 0.7 * np.exp(-((xx - 0.5) ** 2) / 0.02 - ((yy - 0.5) ** 2) / 0.3)).astype(
        np.float32
    )


def _hot_square(size: int = 16, top: int = 4, left: int = 9, side: int = 4) -> np.ndarray:
    heatmap = np.zeros((size, size), dtype=np.float32)
    heatmap[top : top + side, left : left + side] = 1.0
    return heatmap


def _expected_gray(image: np.ndarray) -> np.ndarray:
    gray = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return np.stack([gray] * 3, axis=-1)


def test_shape_dtype_at_original_resolution():
    image = _radiograph(300, 200)
    out = render_overlay(image, _hot_square(), 0.5)
    assert out.shape == (300, 200, 3)
    assert out.dtype == np.uint8


def test_to_rgb8_matches_rounded_gray():
    image = _radiograph(40, 30)
    np.testing.assert_array_equal(to_rgb8(image), _expected_gray(image))


def test_intensity_zero_is_exactly_the_gray_image():
    image = _radiograph()
    image[0, 0], image[0, 1] = 0.5 / 255, 1.5 / 255  # rounding edge cases (half to even)
    out = render_overlay(image, _hot_square(), 0.0, annotate=False)
    np.testing.assert_array_equal(out, _expected_gray(image))


def test_no_heatmap_no_colour():
    image = _radiograph()
    np.testing.assert_array_equal(render_overlay(image, None, 1.0), _expected_gray(image))


def test_intensity_one_is_a_strong_overlay():
    image = _radiograph(256, 256)
    heatmap = _hot_square(16, 4, 4, 6)  # image rows/cols 64..160 are hot
    gray = _expected_gray(image).astype(int)
    weak = render_overlay(image, heatmap, 0.2, annotate=False).astype(int)
    strong = render_overlay(image, heatmap, 1.0, annotate=False).astype(int)
    hot = (slice(80, 140), slice(80, 140))
    assert np.abs(strong[hot] - gray[hot]).mean() > 60
    # Monotonic in intensity, and cold areas stay the plain radiograph.
    assert np.abs(strong[hot] - gray[hot]).mean() > 2 * np.abs(weak[hot] - gray[hot]).mean()
    np.testing.assert_array_equal(strong[230:, 230:], gray[230:, 230:])
    # Jet at the peak is dark red: red channel dominates in the hot core.
    core = strong[100:120, 100:120]
    assert (core[..., 0] > core[..., 2] + 50).all()


@pytest.mark.parametrize("intensity", [-0.1, 1.5, float("nan")])
def test_out_of_range_intensity_raises(intensity):
    with pytest.raises(ValueError, match="intensity"):
        render_overlay(_radiograph(), _hot_square(), intensity)


def test_unknown_colormap_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="colormap"):
        render_overlay(_radiograph(), _hot_square(), colormap="rainbowish")
    with pytest.raises(ValueError, match="2-D"):
        render_overlay(np.zeros((8, 8, 3), np.float32), None)
    with pytest.raises(ValueError, match="heatmap"):
        render_overlay(_radiograph(), np.zeros((2, 2, 2), np.float32))


def test_heatmap_of_different_size_is_resized_to_the_image():
    image = _radiograph(200, 300)
    heatmap = np.zeros((7, 7), np.float32)
    heatmap[:, 5:] = 1.0  # right two sevenths hot
    out = render_overlay(image, heatmap, 1.0, annotate=False)
    gray = _expected_gray(image)
    assert out.shape == (200, 300, 3)
    changed = np.any(out != gray, axis=2)
    assert changed[:, 270:].all()  # the right edge is coloured over the full height
    assert not changed[:, :150].any()  # the left half is untouched


def test_strongest_region_finds_the_hot_square():
    heatmap = _hot_square(16, top=4, left=9, side=4)  # centre at heatmap (11, 6) px
    heatmap[12, 2] = 0.7  # a weaker, separate spot
    shape = (320, 480)
    box = strongest_region(heatmap, shape)
    assert box is not None
    x0, y0, x1, y1 = box
    centre_x, centre_y = 11 / 16 * 480, 6 / 16 * 320
    assert x0 <= centre_x <= x1 and y0 <= centre_y <= y1
    # The box is the hot square (resized), not the whole image nor the weak spot.
    assert 0.15 * 480 < x1 - x0 < 0.45 * 480
    assert x0 > 2 / 16 * 480 + 30


def test_strongest_region_of_empty_heatmap_is_none():
    assert strongest_region(np.zeros((7, 7), np.float32), (100, 100)) is None


def test_annotation_draws_the_box_edge():
    image = _radiograph(256, 256)
    heatmap = _hot_square(16, 4, 4, 6)
    plain = render_overlay(image, heatmap, 0.5, annotate=False)
    annotated = render_overlay(image, heatmap, 0.5, annotate=True, probability=0.87)
    x0, y0, x1, y1 = strongest_region(heatmap, image.shape)
    edge_row = annotated[(y0 + y1) // 2, x0 - 1 : x0 + 2]
    assert np.any(edge_row != plain[(y0 + y1) // 2, x0 - 1 : x0 + 2])
    # The probability label sits just above the box.
    label_area = (slice(max(0, y0 - 20), y0), slice(x0, x0 + 40))
    assert np.any(annotated[label_area] != plain[label_area])


def test_markers_change_pixels_near_their_position_only():
    image = _radiograph(400, 400)
    plain = render_overlay(image, None)
    marked = render_overlay(image, None, markers=[Marker(0.25, 0.75, "callus")])
    diff = np.any(marked != plain, axis=2)
    cy, cx = round(0.75 * 399), round(0.25 * 399)
    assert diff[cy - 30 : cy + 30, cx - 30 : cx + 30].sum() > 50
    assert not diff[:150, :].any()  # far away (top of the image) unchanged


def test_placeholder_watermark_is_red():
    for size in (96, 512, 1500):
        image = np.full((size, size), 0.5, np.float32)
        out = render_overlay(image, None, placeholder=True).astype(int)
        red = (out[..., 0] > 180) & (out[..., 1] < 80) & (out[..., 2] < 80)
        assert red.sum() > 0.01 * size * size, size
    plain = render_overlay(image, None).astype(int)
    assert not ((plain[..., 0] > 180) & (plain[..., 1] < 80)).any()


def test_importing_overlay_and_report_does_not_import_tensorflow_or_streamlit():
    code = (
        "import sys, xray_ai.outputs.overlay, xray_ai.outputs.report; "
        "bad = [m for m in ('tensorflow', 'keras', 'streamlit') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
