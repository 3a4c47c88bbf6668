"""Tests for xray_ai.outputs.overlay: blending, intensity, annotations, markers, watermark, speed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from xray_ai.outputs.overlay import Marker, display_pixels, finding_legend, render_overlay, strongest_region, to_rgb8
from xray_ai.result import FINDING, POSSIBLE_FINDING


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


def _annotated(size: int, finding, **kwargs):
    """(plain, annotated, box) for a size x size radiograph whose heatmap is hot in a block."""
    image = _radiograph(size, size)
    heatmap = _hot_square(16, 5, 4, 6)
    plain = render_overlay(image, heatmap, 0.5, annotate=False)
    annotated = render_overlay(image, heatmap, 0.5, finding=finding, **kwargs)
    return plain, annotated, strongest_region(heatmap, image.shape)


def _edge_runs(changed: np.ndarray) -> int:
    """How many separate runs of changed pixels a 1-D boolean line holds."""
    return int(np.count_nonzero(np.diff(changed.astype(np.int8)) == 1) + changed[0])


def test_no_finding_draws_no_box():
    """Nothing is marked unless the decision says so: None (below both points, out of scope,
    not assessable, placeholder) and the annotation switch off leave the overlay plain."""
    plain, annotated, _ = _annotated(256, None, probability=0.43)
    np.testing.assert_array_equal(annotated, plain)
    plain, switched_off, _ = _annotated(256, FINDING, annotate=False)
    np.testing.assert_array_equal(switched_off, plain)


def test_a_finding_gets_a_solid_box_and_a_possible_finding_a_dotted_one():
    plain, solid, (x0, y0, x1, y1) = _annotated(512, FINDING)
    _, dotted, _ = _annotated(512, POSSIBLE_FINDING)
    inner = slice(y0 + 12, y1 - 12)  # the left edge, away from the corners
    solid_edge = np.any(solid[inner, x0] != plain[inner, x0], axis=-1)
    dotted_edge = np.any(dotted[inner, x0] != plain[inner, x0], axis=-1)
    assert solid_edge.all() and _edge_runs(solid_edge) == 1
    assert 0.3 < dotted_edge.mean() < 0.85 and _edge_runs(dotted_edge) >= 6
    # Each is labelled above the box, the possible finding's label being the longer text.
    above = (slice(max(0, y0 - 30), y0 - 3), slice(0, 512))
    widths = [np.any(np.any(out[above] != plain[above], axis=-1), axis=0).sum() for out in (solid, dotted)]
    assert 40 < widths[0] < widths[1] < 0.5 * 512


def test_unknown_finding_level_raises():
    with pytest.raises(ValueError, match="finding"):
        render_overlay(_radiograph(), _hot_square(), finding="fracture")


@pytest.mark.parametrize("finding", [FINDING, POSSIBLE_FINDING])
def test_marks_scale_with_the_image(finding):
    """A box's line is a similar small share of a 64 px image's side as of a 2048 px one's, and
    widens with the image; the label is a similar share of a 512 and a 2048 px image, and left
    out where it would be too small to read (it once covered a third of a 64 px image)."""
    shares, lines, labels = {}, {}, {}
    for size in (64, 128, 512, 2048):
        plain, annotated, (x0, y0, x1, y1) = _annotated(size, finding)
        changed = np.any(annotated != plain, axis=-1)
        shares[size] = changed.mean()
        margin = max(2, size // 40)
        lines[size] = int(changed[y0 + margin : y1 - margin, : (x0 + x1) // 2].any(axis=0).sum())
        labels[size] = changed[: max(0, y0 - 2)].mean()
    assert max(shares.values()) < 0.05, shares
    assert all(1 <= lines[size] <= 0.02 * size for size in lines), lines
    assert lines[64] <= lines[512] < lines[2048], lines
    assert labels[64] == labels[128] == 0.0, labels
    assert 0 < labels[512] < 0.05 and 0.5 * labels[512] < labels[2048] < 2 * labels[512], labels


def test_display_pixels_upscales_small_images_only():
    small = _radiograph(64, 48)
    big = display_pixels(small)
    assert big.shape == (683, 512) and big.dtype == np.float32
    assert abs(float(big.mean()) - float(small.mean())) < 0.01
    large = _radiograph(600, 700)
    assert display_pixels(large) is large


def test_legend_names_both_styles_and_the_operating_points():
    from types import SimpleNamespace

    result = SimpleNamespace(threshold=0.493, threshold_method="Youden's J", high_sensitivity_threshold=0.255)
    solid, dotted, none = finding_legend(result)
    assert "Solid box" in solid and '"finding"' in solid and "0.493" in solid
    assert "Dotted box" in dotted and '"possible finding"' in dotted and "0.255" in dotted
    assert "No box" in none and "not assessable" in none
    above = SimpleNamespace(threshold=0.17, threshold_method="Youden's J", high_sensitivity_threshold=0.99)
    assert "not used by this model" in finding_legend(above)[1]


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


def test_a_flat_map_gets_no_box():
    image = _radiograph()
    for flat in (np.zeros((7, 7), np.float32), np.full((7, 7), 0.8, np.float32),
                 np.full((28, 28), 0.9, np.float32) + np.float32(0.001) * np.eye(28, dtype=np.float32)):
        assert strongest_region(flat, image.shape) is None
        plain = render_overlay(image, flat, 0.5, annotate=False)
        np.testing.assert_array_equal(render_overlay(image, flat, 0.5, finding="finding"), plain)


def test_a_fine_map_is_upsampled_from_its_own_grid():
    """A 28 x 28 map (a stride-8 layer at 224 px) boxes its hot cell, not a 7 x 7 cell."""
    image = _radiograph()
    fine = np.zeros((28, 28), np.float32)
    fine[10, 20] = 1.0
    x0, y0, x1, y1 = strongest_region(fine, image.shape)
    h, w = image.shape
    assert x0 <= (20.5 / 28) * w <= x1 and y0 <= (10.5 / 28) * h <= y1
    assert x1 - x0 < w / 7 and y1 - y0 < h / 7


def test_the_models_contour_level_cuts_the_region_and_outlines_it():
    image = _radiograph()
    yy, xx = np.mgrid[0:28, 0:28]
    heatmap = np.exp(-((yy - 14) ** 2 + (xx - 14) ** 2) / 40.0).astype(np.float32)
    low, high = (strongest_region(heatmap, image.shape, level) for level in (0.3, 0.8))
    assert low[0] < high[0] and low[2] > high[2]  # a lower level outlines a larger region
    boxed = render_overlay(image, heatmap, 0.5, finding="finding", threshold_level=0.8)
    outlined = render_overlay(image, heatmap, 0.5, finding="finding", contour_level=0.8)
    inside = (slice(high[1] + 3, high[3] - 2), slice(high[0] + 3, high[2] - 2))
    assert (outlined[inside] != boxed[inside]).any()  # the outline is drawn inside the same box
    with pytest.raises(ValueError, match="contour_level"):
        render_overlay(image, heatmap, 0.5, contour_level=0.0)
