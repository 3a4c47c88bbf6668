"""Synthetic phantoms: determinism, masks, writers (MURA and folders), shortcut check, CLI."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from xray_ai import phantoms as P

SIZE = 64


@pytest.mark.parametrize("condition", P.CONDITIONS)
def test_generate_is_deterministic_and_well_formed(condition):
    a = P.generate(condition, abnormal=True, seed=7, size=SIZE)
    b = P.generate(condition, abnormal=True, seed=7, size=SIZE)
    c = P.generate(condition, abnormal=True, seed=8, size=SIZE)
    assert a.image.dtype == np.float32 and a.image.shape == (SIZE, SIZE)
    assert a.mask.dtype == bool and a.mask.shape == (SIZE, SIZE)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0 and np.isfinite(a.image).all()
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert (a.body_part, a.view, a.severity, a.finding) == (b.body_part, b.view, b.severity, b.finding)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("condition", P.CONDITIONS)
def test_masks_non_empty_exactly_for_abnormal(condition):
    for seed in range(4):
        ab = P.generate(condition, abnormal=True, seed=seed, size=SIZE)
        no = P.generate(condition, abnormal=False, seed=seed, size=SIZE)
        assert ab.mask.any() and ab.abnormal and ab.severity > 0 and ab.finding
        assert not no.mask.any() and not no.abnormal and no.severity == 0 and no.finding is None
        assert ab.mask.mean() < 0.6  # a finding, not the whole picture


def test_every_mura_part_and_msk_finding_renders():
    for part in P.MURA_PARTS:
        for finding in ("fracture", "lytic_lesion", "implant", "dislocation"):
            ph = P.generate("msk_abnormality", abnormal=True, seed=3, size=SIZE, body_part=part,
                            finding=finding, severity=0.8)
            assert ph.body_part == part and ph.finding == finding and ph.mask.any()
    with pytest.raises(ValueError, match="knee"):
        P.generate("msk_abnormality", abnormal=True, seed=0, body_part="knee")
    with pytest.raises(ValueError, match="unknown condition"):
        P.generate("gout", abnormal=True, seed=0)


def test_cardiothoracic_ratio_separates_the_classes():
    from xray_ai.phantoms.chest import normal_ctr
    rng = np.random.default_rng(0)
    ctrs = np.array([normal_ctr(rng) for _ in range(2000)])
    assert ctrs.max() < 0.5 and 0.42 < ctrs.mean() < 0.46 and ctrs.std() > 0.02


def test_views_of_a_study_share_the_patient_and_finding():
    a = P.generate("fracture", abnormal=True, seed=11, size=SIZE, body_part="forearm", view="AP", view_index=0)
    b = P.generate("fracture", abnormal=True, seed=11, size=SIZE, body_part="forearm", view="lateral", view_index=1)
    assert (a.severity, a.finding) == (b.severity, b.finding) and a.view != b.view
    assert a.mask.any() and b.mask.any()


def test_mura_layout_reads_back(tmp_path):
    pd = pytest.importorskip("pandas")
    s = P.write_dataset(tmp_path, "msk_abnormality", 12, layout="mura", seed=1, size=SIZE,
                        splits=(("train", 0.75), ("valid", 0.25)))
    root = tmp_path / "MURA-v1.1"
    assert s["generator_version"] == P.GENERATOR_VERSION
    for split in ("train", "valid"):
        paths = pd.read_csv(root / f"{split}_image_paths.csv", header=None)
        studies = pd.read_csv(root / f"{split}_labeled_studies.csv", header=None, names=["study", "label"])
        assert paths.shape[1] == 1 and len(paths) == s["splits"][split]["images"]
        assert not paths[0].str.contains("_mask").any()
        assert paths[0].str.match(rf"MURA-v1\.1/{split}/XR_[A-Z]+/patient\d{{5}}/study\d+_(positive|negative)/image\d+\.png$").all()
        assert studies["study"].str.endswith("/").all()
        assert set(studies["label"]) <= {0, 1}
        assert (studies["label"] == 1).sum() == s["splits"][split]["abnormal"]
        assert (studies["label"] == 0).sum() == s["splits"][split]["normal"]
        # the label in the folder name matches the CSV, and every image belongs to a listed study
        assert ((studies["study"].str.contains("_positive/")) == (studies["label"] == 1)).all()
        by_study = paths[0].str.rsplit("/", n=1).str[0] + "/"
        assert set(by_study) == set(studies["study"])
        assert by_study.value_counts().max() <= 3
        for p, lab in zip(paths[0], by_study.map(dict(zip(studies["study"], studies["label"])))):
            mask = tmp_path / p.replace(".png", "_mask.png")
            import cv2
            m = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
            assert m is not None and bool(m.any()) == bool(lab)
    assert s["splits"]["train"]["studies"] >= 9


def test_folder_layout_16bit_and_dicom(tmp_path):
    import cv2
    import pydicom
    from xray_ai.phantoms.files import is_side_file

    s = P.write_dataset(tmp_path / "f", "pneumonia", 6, layout="folders", seed=2, size=SIZE, bit_depth=16)
    pngs = sorted(p for p in (tmp_path / "f").rglob("*.png") if not is_side_file(p.name))
    assert len(pngs) == 6 == s["images"]
    assert {p.parent.name for p in pngs} <= {"normal", "pneumonia"}
    img = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (SIZE, SIZE)
    P.write_dataset(tmp_path / "d", "fracture", 4, layout="folders", seed=3, size=SIZE, fmt="dicom")
    dcms = sorted((tmp_path / "d").rglob("*.dcm"))
    assert len(dcms) == 4
    ds = pydicom.dcmread(dcms[0])
    assert ds.Modality in ("CR", "DX") and ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
    assert ds.pixel_array.shape == (SIZE, SIZE)
    assert {pydicom.dcmread(p).PhotometricInterpretation for p in dcms} == {"MONOCHROME1", "MONOCHROME2"}


def test_write_dataset_is_deterministic(tmp_path):
    import cv2
    for d in ("a", "b"):
        P.write_dataset(tmp_path / d, "arthritis", 4, layout="folders", seed=5, size=SIZE)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 8
    for f in files:
        assert np.array_equal(cv2.imread(str(tmp_path / "a" / f)), cv2.imread(str(tmp_path / "b" / f)))


#: Upper bound on the histogram-shortcut AUC at count=200, size=128 (64 px hides the
#: cardiomegaly shortcut: the old generator passed 0.65 there). Measured, seeds 0-2, all six
#: conditions: 0.37-0.62 with this generator (sd about 0.05 from sampling alone; seed 0 at
#: most 0.55); the generator before the wider normal ranges gave osteoporosis 0.67/0.66 and
#: cardiomegaly 0.65/0.66 (seeds 0/1), which this bound fails.
SHORTCUT_AUC_MAX = 0.63


@pytest.mark.parametrize("condition", P.CONDITIONS)
def test_histogram_shortcut_stays_near_chance(condition):
    auc = P.histogram_shortcut_auc(condition, count=200, seed=0, size=128)
    assert auc <= SHORTCUT_AUC_MAX, f"{condition}: global histogram gives the label away (AUC {auc:.3f})"


def _parser():
    p = argparse.ArgumentParser()
    P.add_cli_arguments(p)
    return p


def test_cli_unknown_condition_returns_2(tmp_path, capsys):
    rc = P.run_cli(_parser().parse_args(["--condition", "gout", "--count", "2", "--out", str(tmp_path)]))
    err = capsys.readouterr().err
    assert rc == 2 and "gout" in err and len(err.strip().splitlines()) == 1


def test_cli_writes_dataset_and_gallery(tmp_path):
    rc = P.run_cli(_parser().parse_args(["--condition", "osteoporosis", "--count", "3", "--out", str(tmp_path / "o"),
                                         "--size", "48", "--seed", "4"]))
    assert rc == 0
    assert len([p for p in (tmp_path / "o").rglob("*.png") if not p.name.endswith("_mask.png")]) == 3
    grid = P.make_gallery(tmp_path / "g.png", size=48, seed=0)
    assert (tmp_path / "g.png").stat().st_size > 0 and grid.ndim == 3 and grid.shape[0] > 48 * 10


def test_chest_phantoms_carry_heart_and_thorax_outlines_and_their_true_ctr():
    """Issue 19's truth: the CTR the generator drew, and the outlines it is measured on."""
    from xray_ai.measurement.ctr import measure_ctr

    errors = []
    for seed in range(12):
        ph = P.generate("cardiomegaly", abnormal=seed % 2 == 0, seed=seed, size=224)
        assert set(ph.outlines) == {"heart", "thorax"} and all(o.dtype == bool for o in ph.outlines.values())
        assert (ph.ctr > 0.5) == ph.abnormal
        errors.append(measure_ctr(ph.outlines["heart"], ph.outlines["thorax"]).ctr - ph.ctr)
    # the outlines show the drawn ratio: a pixel of rasterisation, a thorax cut by the field now and then
    assert np.median(np.abs(errors)) < 0.01 and max(np.abs(errors)) < 0.04, errors
    limb = P.generate("fracture", abnormal=True, seed=1, size=128)
    assert limb.ctr is None and limb.outlines == {}


def test_a_chest_dataset_writes_outlines_and_measurements_the_readers_skip(tmp_path):
    import csv

    from xray_ai.training.datasets import read_folders

    s = P.write_dataset(tmp_path / "c", "cardiomegaly", 8, layout="folders", seed=3, size=SIZE)
    with open(tmp_path / "c" / "measurements.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == s["images"] == 8 and "measurements" in s and "outlines" in s
    for row in rows:
        image = tmp_path / "c" / row["image"]
        assert image.is_file() and (float(row["ctr"]) > 0.5) == (row["label"] == "cardiomegaly")
        for name in ("heart", "thorax"):
            assert image.with_name(f"{image.stem}_{name}.png").is_file()
    assert len(read_folders(tmp_path / "c", "normal", "cardiomegaly")) == 8  # no outline read as an image
