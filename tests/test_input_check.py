"""The input check: is an image like the ones the model was trained on?"""

import dataclasses
import json

import numpy as np
import pytest

from xray_ai import XRay

from xray_ai import analyze

from xray_ai.serving import input_check
from xray_ai.serving.artifacts import input_check_path
from xray_ai.analysis import pooled_features
from xray_ai.serving.manager import ModelManager
from conftest import REPO, bright_square_data

SHIPPED = json.loads((REPO / "model_registry.json").read_text())


def _gaussian(n, seed, shift=0.0, k=8):
    rng = np.random.default_rng(seed)
    cov = np.diag(np.linspace(0.5, 2.0, k))
    return rng.multivariate_normal(np.full(k, 1.0 + shift), cov, size=n)


def test_distance_is_the_scaled_mahalanobis_distance():
    precision = np.diag([4.0, 1.0])
    dist = input_check.FeatureDistribution(np.array([1.0, 2.0]), precision, 1.0, 99.5, 10, 30, "sha", "test")
    # z = (1, 2): z' P z = 4 + 4 = 8, over K = 2 features: sqrt(4) = 2
    assert dist.distances(np.array([[2.0, 4.0], [1.0, 2.0]])) == pytest.approx([2.0, 0.0])


def test_fit_sets_the_threshold_at_the_calibration_percentile():
    dist = input_check.fit(_gaussian(2000, 0), _gaussian(1000, 1), "sha", "gaussian", percentile=99.0)
    calibration = dist.distances(_gaussian(1000, 1))
    assert np.mean(calibration > dist.threshold) == pytest.approx(0.01, abs=0.002)
    fresh = dist.distances(_gaussian(2000, 2))  # unseen in-distribution images: about 1% flagged
    assert np.mean(fresh > dist.threshold) < 0.03
    shifted = dist.distances(_gaussian(200, 3, shift=3.0))  # every feature 3 (1.2 to 4 sd) off
    assert np.mean(shifted > dist.threshold) > 0.99


def test_fit_refuses_too_few_calibration_images_or_mismatched_widths():
    with pytest.raises(ValueError, match="at least 20 calibration"):
        input_check.fit(_gaussian(100, 0), _gaussian(10, 1), "sha", "x")
    with pytest.raises(ValueError, match="do not match"):
        input_check.fit(_gaussian(100, 0), _gaussian(50, 1, k=5), "sha", "x")


def test_saved_distribution_loads_only_for_its_own_model(tmp_path):
    dist = input_check.fit(_gaussian(300, 0), _gaussian(100, 1), "a" * 64, "gaussian")
    path = input_check.save(dist, input_check_path(tmp_path / "m.keras"))
    assert path == tmp_path / "m.features.npz"
    loaded, reason = input_check.load(path, "a" * 64)
    assert reason is None and loaded.threshold == pytest.approx(dist.threshold)
    assert loaded.source == "gaussian" and loaded.n_fit == 300 and loaded.n_calibration == 100
    x = _gaussian(5, 9)
    np.testing.assert_allclose(loaded.distances(x), dist.distances(x), rtol=1e-12)  # fit returns what save stores
    other, reason = input_check.load(path, "b" * 64)
    assert other is None and "another model file" in reason
    missing, reason = input_check.load(tmp_path / "nope.features.npz", "a" * 64)
    assert missing is None and "no input-check file" in reason
    (tmp_path / "bad.features.npz").write_bytes(b"not an npz")
    bad, reason = input_check.load(tmp_path / "bad.features.npz", "a" * 64)
    assert bad is None and "unreadable" in reason


def _ill_conditioned(k=200, seed=0):
    """A precision like the shipped models': feature variances over 2 decades (1e-5 to 1e-3)
    and one common mode of variance 100 (condition number ~1e7); samples from it, and far from it."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    cov = (q * np.geomspace(1e-5, 1e-3, k)) @ q.T
    common = rng.standard_normal(k) / np.sqrt(k)
    cov += 100 * np.outer(common, common)
    precision = np.linalg.inv(cov)
    inside = rng.multivariate_normal(np.zeros(k), cov, size=300)
    outside = np.vstack([rng.standard_normal((100, k)) * np.sqrt(np.diag(cov)), 3 * inside[:100],
                         inside[:100] + rng.standard_normal(k) * 0.3])
    return (precision + precision.T) / 2, inside, outside


def test_factored_precision_keeps_distances_of_an_ill_conditioned_matrix():
    precision, inside, outside = _ill_conditioned()
    assert np.linalg.cond(precision) > 1e6
    dense = input_check.FeatureDistribution(np.zeros(200), precision, 1.0, 99.5, 10, 30, "sha", "t")
    factored = dataclasses.replace(dense, precision=input_check.FactoredPrecision.of(precision))
    assert 0 < len(factored.precision.eigenvalues) <= 64  # the ill-conditioned directions, kept exactly
    for z in (inside, outside):
        np.testing.assert_allclose(factored.distances(z), dense.distances(z), rtol=1e-4)
    np.testing.assert_allclose(factored.precision.dense(), precision, rtol=0, atol=1e-4 * np.abs(precision).max())
    # what the files held before: float16 of the matrix is far too coarse for such a spectrum
    half = dataclasses.replace(dense, precision=precision.astype(np.float16).astype(np.float64))
    assert np.max(np.abs(half.distances(outside) / dense.distances(outside) - 1)) > 1e-2


def test_factored_precision_refuses_a_matrix_that_is_not_positive_definite():
    with pytest.raises(ValueError, match="not positive definite"):
        input_check.FactoredPrecision.of(np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="square"):
        input_check.FactoredPrecision.of(np.ones((2, 3)))


def test_saved_file_is_small_and_saving_what_was_loaded_changes_nothing(tmp_path):
    precision, inside, _ = _ill_conditioned(k=256)
    dist = input_check.FeatureDistribution(np.zeros(256), precision, 1.5, 99.5, 10, 30, "a" * 64, "t")
    first = input_check.save(dist, tmp_path / "a.features.npz")
    assert first.stat().st_size < 0.3 * 256 * 256 * 4  # the full float32 matrix: 262 kB before compression
    loaded, reason = input_check.load(first, "a" * 64)
    assert reason is None and isinstance(loaded.precision, input_check.FactoredPrecision)
    np.testing.assert_allclose(loaded.distances(inside), dist.distances(inside), rtol=1e-4)
    second = input_check.save(loaded, tmp_path / "b.features.npz")
    with np.load(first) as a, np.load(second) as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[f], b[f]) for f in a.files)


def test_old_format_files_still_load_and_convert_without_changing_a_decision(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "models"))
    import shrink_features

    precision, inside, outside = _ill_conditioned()
    meta = json.dumps({"threshold": 1.25, "percentile": 99.5, "n_fit": 4200, "n_calibration": 900,
                       "model_sha256": "a" * 64, "source": "old"})
    old = tmp_path / "old.features.npz"
    np.savez_compressed(old, mean=np.full(200, 0.5, np.float32), precision=precision.astype(np.float32),
                        meta=np.array(meta))  # the format of the files shipped until 2026-12
    reference, reason = input_check.load(old, "a" * 64)
    assert reason is None and isinstance(reference.precision, np.ndarray) and reference.threshold == 1.25
    shrink_features.convert(old.read_bytes(), tmp_path / "new.features.npz")
    new, reason = input_check.load(tmp_path / "new.features.npz", "a" * 64)
    assert reason is None and isinstance(new.precision, input_check.FactoredPrecision)
    with np.load(tmp_path / "new.features.npz") as data:
        assert str(data["meta"]) == meta and "precision" not in data.files
    z = np.vstack([inside, outside]) + 0.5
    worst, flips, _, _ = shrink_features.measure(reference, new, z)
    assert worst < 1e-4 and flips == 0


def test_a_factored_file_whose_arrays_do_not_fit_is_unreadable(tmp_path):
    dist = input_check.fit(_gaussian(300, 0), _gaussian(100, 1), "a" * 64, "gaussian")
    path = input_check.save(dist, tmp_path / "m.features.npz")
    with np.load(path) as data:
        arrays = {f: data[f] for f in data.files}
    arrays["factor_step"] = arrays["factor_step"][:-1]
    np.savez_compressed(tmp_path / "bad.features.npz", **arrays)
    bad, reason = input_check.load(tmp_path / "bad.features.npz", "a" * 64)
    assert bad is None and "unreadable" in reason and "do not fit" in reason


@pytest.mark.parametrize("model_id", [m for m, e in SHIPPED["models"].items()
                                      if e.get("path") and (REPO / e["path"]).is_file()])
def test_shipped_input_check_files_are_factored_and_small(model_id):
    path = input_check_path(REPO / SHIPPED["models"][model_id]["path"])
    assert path.stat().st_size < 1.5e6
    loaded, reason = input_check.load(path, SHIPPED["models"][model_id]["sha256"])
    assert reason is None and isinstance(loaded.precision, input_check.FactoredPrecision)
    assert loaded.precision.width == len(loaded.mean)


def _fit_beside_the_model(manager, images_fit, images_cal):
    loaded = manager.get("fracture")
    dist = input_check.fit(pooled_features(loaded, images_fit), pooled_features(loaded, images_cal),
                           loaded.entry.sha256, "bright-square noise images")
    input_check.save(dist, input_check_path(loaded.entry.resolve_path(manager.registry.base_dir)))
    manager.clear()  # the check is read when the model loads
    return dist


def test_analysis_flags_an_image_unlike_the_training_images(tiny_registry):
    x, _, _ = bright_square_data(240, seed=3)
    images = [img[:, :, 0] for img in x]
    manager = ModelManager(tiny_registry)
    assert manager.get("fracture").input_check is None  # nothing fitted yet: no check, no warning
    assert analyze(XRay(images[0], filename="a.png"), "fracture", manager=manager).views[0].input_checks == ()
    dist = _fit_beside_the_model(manager, images[:160], images[160:])
    assert manager.get("fracture").input_check is not None

    like = analyze(XRay(bright_square_data(1, seed=99)[0][0, :, :, 0], filename="like.png"), "fracture", manager=manager)
    (model_id, distance, threshold), = like.views[0].input_checks
    assert model_id == "tiny-test" and threshold == pytest.approx(dist.threshold)
    assert not like.views[0].unlike_training_data and not any("UNLIKE" in w for w in like.warnings)

    blank = analyze(XRay(np.ones((32, 32), np.float32), filename="white.png"), "fracture", manager=manager)
    assert blank.views[0].unlike_training_data
    assert any(w.startswith("white.png: UNLIKE THE IMAGES tiny-test WAS TRAINED ON") for w in blank.warnings)
    check, = blank.to_json()["views"][0]["input_check"]
    assert check["model_id"] == "tiny-test" and check["unlike_training_data"] is True
    assert check["distance"] > check["threshold"]


def test_cli_fits_the_check_then_predict_reports_it(tiny_registry, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from xray_ai.cli import main

    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    x, y, _ = bright_square_data(120, seed=5)
    data = tmp_path / "data"
    for i, (img, label) in enumerate(zip(x, y)):
        split = "train" if i < 80 else "valid"
        folder = data / split / ("fracture" if label else "no fracture")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[:, :, 0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    assert main(["fit-input-check", "--model", "tiny-test", "--data", str(data), "--registry", str(tiny_registry)]) == 0
    out = capsys.readouterr().out
    assert "fitted on 80 images" in out and "40 valid images" in out
    assert (tiny_registry.parent / "tiny.features.npz").is_file()

    white = tmp_path / "white.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(white)
    assert main(["predict", str(white), "--condition", "fracture", "--json", "--registry", str(tiny_registry)]) == 0
    view = json.loads(capsys.readouterr().out)["views"][0]
    assert view["input_check"][0]["unlike_training_data"] is True


def test_cli_refuses_a_dataset_without_a_valid_split(tiny_registry, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from xray_ai.cli import main

    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    for i, label in enumerate(("fracture", "no fracture")):
        (tmp_path / "d" / "train" / label).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "d" / "train" / label / f"{i}.png")
    assert main(["fit-input-check", "--model", "tiny-test", "--data", str(tmp_path / "d"),
                 "--registry", str(tiny_registry)]) == 2
    assert "needs a train and a valid split" in capsys.readouterr().err


@pytest.mark.parametrize("model_id", [m for m, e in SHIPPED["models"].items()
                                      if e.get("path") and (REPO / e["path"]).is_file()])
def test_every_shipped_model_has_an_input_check_that_knows_its_own_images(model_id):
    """Fresh phantoms of the model's own condition (seeds it never saw), rendered at the size
    it was trained on (224 px, or the intensive tier's 320), pass; the real RG3 tibia
    radiograph (no shipped model was trained on a tibia) is flagged."""
    from xray_ai import load_image, phantoms

    manager = ModelManager(REPO / "model_registry.json", backend="tensorflow")
    loaded = manager.get(model_id=model_id)
    assert loaded.input_check is not None, loaded.input_check_reason
    condition = loaded.entry.condition
    size = max(224, loaded.entry.input.height)  # the phantoms were rendered at 224 px for 224 px models
    own = [XRay(phantoms.generate(condition, abnormal=bool(i % 2), seed=900_000 + i, size=size).image) for i in range(12)]
    flagged = [v.unlike_training_data for v in analyze(own, None, manager=manager, model_id=model_id).views]
    assert sum(flagged) <= 1, f"{sum(flagged)} of 12 of its own kind of images flagged"
    tibia = analyze(load_image(REPO / "examples" / "rg3_tibia.png"), None, manager=manager, model_id=model_id)
    assert tibia.views[0].unlike_training_data, tibia.views[0].input_checks


def test_cli_will_not_fit_the_check_of_a_placeholder(tmp_path, capsys, monkeypatch):
    from conftest import write_tiny_registry
    from xray_ai.cli import main

    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    from PIL import Image

    registry = write_tiny_registry(tmp_path, None, sha256=None)  # its model file is missing
    for i, label in enumerate(("fracture", "no fracture")):
        (tmp_path / "d" / "train" / label).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "d" / "train" / label / f"{i}.png")
    assert main(["fit-input-check", "--model", "tiny-test", "--data", str(tmp_path / "d"),
                 "--registry", str(registry)]) == 2
    err = capsys.readouterr().err
    assert "tiny-test: cannot fit its input check" in err and "missing.keras" in err


@pytest.mark.parametrize("model_id", [m for m, e in SHIPPED["models"].items()
                                      if e.get("path") and (REPO / e["path"]).is_file()
                                      and (REPO / e["path"]).with_suffix(".bodypart.npz").is_file()])
def test_a_shipped_body_part_head_names_the_part_of_fresh_phantoms(model_id):
    """Two fresh phantoms (seeds it never saw) of each MURA body part: the head names the
    part of at least 12 of the 14; and the RG3 tibia radiograph gets some answer, but the
    input check flags it (a body-part estimate is no check that the image is in scope)."""
    from xray_ai import phantoms

    manager = ModelManager(REPO / "model_registry.json", backend="tensorflow")
    assert manager.get(model_id=model_id).body_part_head is not None
    views = [XRay(phantoms.generate("msk_abnormality", abnormal=bool(i), seed=910_000 + 10 * k + i, size=224,
                                    body_part=part).image)
             for k, part in enumerate(phantoms.MURA_PARTS) for i in range(2)]
    named = [v.body_part.part for v in analyze(views, None, manager=manager, model_id=model_id).views]
    expected = [part for part in phantoms.MURA_PARTS for _ in range(2)]
    assert sum(n == e for n, e in zip(named, expected)) >= 12, list(zip(named, expected))
