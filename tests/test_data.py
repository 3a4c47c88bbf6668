"""Training data: MURA and folder readers, patient splits, class balance, the tf.data pipeline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from xray_ai.images import load_image
from xray_ai.phantoms import LABELS, MURA_PARTS, generate, write_dataset
from xray_ai.serving.preprocessing import prepare_batch
from xray_ai.registry import InputSpec
from xray_ai.training.augment import AugmentConfig
from xray_ai.training.datasets import COLUMNS, read_folders, read_mura
from xray_ai.training.pipeline import LESION_PRESENCE, make_dataset, measure_throughput
from xray_ai.training.splits import assert_no_patient_leakage, class_weights, oversample_minority, split_by_patient

SIZE = 64
NEG, POS = LABELS["fracture"]


@pytest.fixture(scope="module")
def mura(tmp_path_factory):
    root = tmp_path_factory.mktemp("mura")
    summary = write_dataset(root, "fracture", 12, layout="mura", size=SIZE, seed=1)
    return root, summary


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    summary = write_dataset(root, "fracture", 24, layout="folders", size=SIZE, seed=2)
    return root, summary


@pytest.fixture(scope="module")
def mura_df(mura):
    return read_mura(mura[0])


@pytest.fixture(scope="module")
def tf_mod():
    return pytest.importorskip("tensorflow")


def _batches(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y, *_ in ds])
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------- readers


def test_read_mura_matches_what_the_writer_wrote(mura, mura_df):
    root, summary = mura
    df = mura_df
    assert list(df.columns) == list(COLUMNS)
    assert set(df.split) == set(summary["splits"])
    for split, stats in summary["splits"].items():
        part = df[df.split == split]
        studies = part.groupby("study_id")["label"].agg(["nunique", "first"])
        assert len(part) == stats["images"]
        assert len(studies) == stats["studies"]
        assert (studies["nunique"] == 1).all()  # one label per study
        assert (studies["first"] == 1).sum() == stats[POS] and (studies["first"] == 0).sum() == stats[NEG]
    for row in df.itertuples():
        assert Path(row.path).is_absolute() and Path(row.path).is_file()
        assert row.study_id in row.path and row.study_id.endswith("positive" if row.label else "negative")
        assert row.patient_id in row.study_id and row.patient_id.startswith("patient")
        assert row.body_part in MURA_PARTS and f"XR_{row.body_part.upper()}" in row.path
        assert row.mask_path == row.path[:-4] + "_mask.png"
    # The MURA-v1.1 folder itself is accepted, and reading only some splits works.
    same = read_mura(root / "MURA-v1.1")
    pd.testing.assert_frame_equal(same, df)
    assert set(read_mura(root, splits=["valid"]).split) == {"valid"}


def test_read_mura_label_disagreeing_with_folder_raises(mura, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(mura[0], copy)
    csv_path = copy / "MURA-v1.1" / "train_labeled_studies.csv"
    lines = csv_path.read_text().splitlines()
    study, label = lines[0].rsplit(",", 1)
    lines[0] = f"{study},{1 - int(label)}"
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=study.rstrip("/")):
        read_mura(copy)


def test_read_mura_missing_files_raise_naming_the_path(mura, tmp_path):
    with pytest.raises(ValueError, match="not a MURA"):
        read_mura(tmp_path)
    copy = tmp_path / "m"
    shutil.copytree(mura[0], copy)
    (copy / "MURA-v1.1" / "train_labeled_studies.csv").unlink()
    with pytest.raises(ValueError, match="train_labeled_studies.csv"):
        read_mura(copy)
    shutil.rmtree(copy)
    shutil.copytree(mura[0], copy)
    first = (copy / "MURA-v1.1" / "valid_image_paths.csv").read_text().splitlines()[0]
    (copy / first).unlink()
    with pytest.raises(ValueError, match="not found"):
        read_mura(copy)


def test_read_folders_counts_masks_and_flat_root(folders, tmp_path):
    root, summary = folders
    df = read_folders(root, NEG, POS)
    assert list(df.columns) == list(COLUMNS)
    for split, stats in summary["splits"].items():
        part = df[df.split == split]
        assert (part.label == 1).sum() == stats[POS] and (part.label == 0).sum() == stats[NEG]
    assert not df.path.str.endswith("_mask.png").any()
    assert df.mask_path.map(lambda p: p is not None and Path(p).is_file()).all()
    assert (df.patient_id == df.path.map(lambda p: Path(p).stem)).all()
    assert df.body_part.isna().all()
    # A root without split folders: split 'all'; masks may be absent (None); patientNNNNN is used.
    flat = tmp_path / "flat"
    for sub, name in ((NEG, "a.png"), (POS, "patient00042/b.png")):
        (flat / sub / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(flat / sub / name), np.zeros((8, 8), np.uint8))
    df2 = read_folders(flat, NEG, POS)
    assert list(df2.split) == ["all", "all"] and list(df2.label) == [0, 1]
    assert list(df2.patient_id) == ["a", "patient00042"]
    assert df2.mask_path.tolist() == [None, None]
    with pytest.raises(ValueError, match="no images"):
        read_folders(root, "nope", "neither")


# --------------------------------------------------------------------------- splits


def test_read_folders_matches_class_folders_spelled_otherwise(tmp_path):
    for split in ("train", "valid"):
        for folder in ("NO_FRACTURE", "Fracture"):
            (tmp_path / split / folder).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / split / folder / "1.png"), np.zeros((4, 4), np.uint8))
    df = read_folders(tmp_path, "no fracture", "fracture")
    assert sorted(zip(df["split"], df["label"])) == [("train", 0), ("train", 1), ("valid", 0), ("valid", 1)]


def test_split_by_patient_has_no_leakage_and_is_deterministic(mura_df):
    df = mura_df
    a = split_by_patient(df, valid_fraction=0.25, seed=3, test_fraction=0.2)
    b = split_by_patient(df.sample(frac=1.0, random_state=0), valid_fraction=0.25, seed=3, test_fraction=0.2)
    assert_no_patient_leakage(a)
    assert (a.source_split == df.split).all()
    assert a.split.tolist() == b.loc[a.index, "split"].tolist()  # row order does not matter
    assert set(a.split) == {"train", "valid", "test"}
    assert len(a) == len(df) and (a.path == df.path).all()


def test_split_by_patient_fractions_and_strata():
    rng = np.random.default_rng(0)
    n_pat = 200
    counts = rng.integers(1, 4, n_pat)
    df = pd.DataFrame({"path": [f"p{i}_{k}" for i in range(n_pat) for k in range(counts[i])],
                       "patient_id": [f"patient{i:05d}" for i in range(n_pat) for _ in range(counts[i])],
                       "label": [int(i % 3 == 0) for i in range(n_pat) for _ in range(counts[i])],
                       "split": "train"})
    s = split_by_patient(df, valid_fraction=0.2, seed=1, test_fraction=0.1)
    assert_no_patient_leakage(s)
    share = s.split.value_counts(normalize=True)
    assert abs(share["valid"] - 0.2) < 0.03 and abs(share["test"] - 0.1) < 0.03
    for split in ("train", "valid", "test"):  # stratified: each split keeps the positive rate
        assert abs(s[s.split == split].label.mean() - df.label.mean()) < 0.05
    other = split_by_patient(df, valid_fraction=0.2, seed=2, test_fraction=0.1)
    assert not (other.split == s.split).all()
    with pytest.raises(ValueError, match="below 1"):
        split_by_patient(df, 0.6, 0, test_fraction=0.4)


def test_assert_no_patient_leakage_names_the_leaking_patient(mura_df):
    df = mura_df.copy()
    assert_no_patient_leakage(df)  # MURA keeps patients apart
    victim = df.patient_id.iloc[0]
    df.loc[df.index[0], "split"] = "valid" if df.split.iloc[0] != "valid" else "train"
    with pytest.raises(ValueError, match=victim):
        assert_no_patient_leakage(df)


# --------------------------------------------------------------------------- class balance


@pytest.mark.parametrize("labels", [[0] * 7 + [1] * 3, [0] * 2 + [1] * 9, [0, 1] * 4])
def test_class_weights_match_sklearn_balanced_and_equalise_class_sums(labels):
    from sklearn.utils.class_weight import compute_class_weight

    w = class_weights(labels)
    ref = compute_class_weight("balanced", classes=np.array([0, 1]), y=np.array(labels))
    assert w == pytest.approx({0: ref[0], 1: ref[1]})
    y = np.array(labels)
    assert w[0] * (y == 0).sum() == pytest.approx(w[1] * (y == 1).sum())
    assert np.mean([w[v] for v in labels]) == pytest.approx(1.0)  # the loss scale is kept


def test_class_weights_refuse_bad_labels():
    with pytest.raises(ValueError, match="no samples"):
        class_weights([0, 0, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        class_weights([0, 1, 2])


def test_oversample_minority_balances_with_duplicates_only(mura_df):
    out = oversample_minority(mura_df, seed=0)
    counts = out.label.value_counts()
    assert counts[0] == counts[1] == mura_df.label.value_counts().max()
    assert set(out.path) == set(mura_df.path)
    pd.testing.assert_frame_equal(out, oversample_minority(mura_df, seed=0))


# --------------------------------------------------------------------------- pipeline


def test_eval_dataset_shapes_range_and_deterministic_order(tf_mod, mura_df):
    spec = InputSpec(32, 40, 3)
    ds = make_dataset(mura_df, spec, batch_size=4, training=False, class_weight=class_weights(mura_df.label))
    first = list(ds)
    x, y, w = first[0]
    assert x.shape == (4, 32, 40, 3) and x.dtype == tf_mod.float32
    assert y.shape == (4,) and y.dtype == tf_mod.float32 and w.dtype == tf_mod.float32
    images, labels = _batches(first)
    assert len(images) == len(mura_df) and labels.tolist() == mura_df.label.tolist()  # row order kept
    assert 0.0 <= images.min() and images.max() <= 1.0 and np.isfinite(images).all()
    assert np.array_equal(images[..., 0], images[..., 2])  # gray replicated
    again, _ = _batches(ds)
    assert np.array_equal(images, again)


@pytest.mark.parametrize("size", [(48, 48), (32, 40), (96, 80), (40, 100)])
def test_pipeline_resize_matches_inference_preprocessing(tf_mod, mura_df, size):
    """Training and inference must see the same pixels: compare with prepare_batch(load_image)."""
    spec = InputSpec(*size, 1)
    images, _ = _batches(make_dataset(mura_df, spec, batch_size=8, training=False, cache=False))
    ref = prepare_batch([load_image(p).pixels for p in mura_df.path], spec)
    assert np.abs(images - ref).mean() < 0.02
    assert np.abs(images - ref).max() < 0.02  # in fact ~1e-6: same interpolation rules


def test_pipeline_decodes_16bit_png_dicom_and_jpeg_like_load_image(tf_mod, tmp_path):
    from PIL import Image

    png16 = write_dataset(tmp_path / "p16", "fracture", 2, layout="folders", size=SIZE, bit_depth=16,
                          splits=(("train", 1.0),))
    dcm = write_dataset(tmp_path / "dcm", "fracture", 2, layout="folders", size=SIZE, fmt="dicom",
                        splits=(("train", 1.0),))
    assert png16["images"] == dcm["images"] == 2
    img = generate("fracture", abnormal=True, seed=5, size=SIZE).image
    jpg, rotated = tmp_path / "a.jpg", tmp_path / "b.jpg"
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(jpg, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: load_image rotates it upright, tf alone would not
    Image.fromarray(np.round(img[:, :48] * 255).astype(np.uint8)).save(rotated, exif=exif)
    paths = [str(p) for p in sorted((tmp_path / "p16").rglob("*.png")) + sorted((tmp_path / "dcm").rglob("*.dcm"))
             if not p.name.endswith("_mask.png")] + [str(jpg), str(rotated)]
    assert len(paths) == 6
    df = pd.DataFrame({"path": paths, "label": [0, 1] * 3})
    spec = InputSpec(SIZE, SIZE, 1)
    images, _ = _batches(make_dataset(df, spec, batch_size=6, training=False))
    ref = prepare_batch([load_image(p).pixels for p in paths], spec)
    assert np.abs(images - ref).max() < 1e-4
    assert load_image(paths[0]).metadata["bits"] == 16


def test_training_augmentation_changes_images_keeps_range_and_is_seeded(tf_mod, mura_df):
    spec = InputSpec(32, 32, 1)
    plain, _ = _batches(make_dataset(mura_df, spec, batch_size=len(mura_df), training=False))
    cfg = AugmentConfig(blur=True, shear=True, noise=True)
    ds = make_dataset(mura_df, spec, batch_size=5, training=True, augment=cfg, seed=7)
    epoch1, labels1 = _batches(ds)
    epoch2, _ = _batches(ds)
    assert epoch1.shape == plain.shape and 0.0 <= epoch1.min() and epoch1.max() <= 1.0
    assert sorted(labels1.tolist()) == sorted(mura_df.label.tolist())
    # Every augmented image differs from every plain one (no image came through unchanged).
    dist = np.abs(epoch1[:, None] - plain[None]).mean(axis=(2, 3, 4))
    assert dist.min() > 1e-3
    assert not np.array_equal(epoch1, epoch2)  # new draws each epoch
    same, _ = _batches(make_dataset(mura_df, spec, batch_size=5, training=True, augment=cfg, seed=7))
    assert np.array_equal(epoch1, same)  # same seed, same batches


def test_training_labels_stay_aligned_with_their_images(tf_mod, tmp_path):
    """Dark images are labelled 0, bright ones 1; heavy augmentation must not break the pairing."""
    paths, labels = [], []
    for i in range(16):
        label = i % 2
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.full((20, 24), 230 if label else 25, np.uint8))
        paths.append(str(path))
        labels.append(label)
    df = pd.DataFrame({"path": paths, "label": labels})
    cfg = AugmentConfig(brightness=0.2, contrast=0.3, noise=True, blur=True, shear=True)
    ds = make_dataset(df, InputSpec(16, 16, 3), batch_size=3, training=True, augment=cfg, seed=0,
                        class_weight={0: 0.5, 1: 2.0})
    for x, y, w in ds:
        bright = x.numpy().mean(axis=(1, 2, 3)) > 0.5
        assert bright.tolist() == (y.numpy() == 1).tolist()
        assert np.allclose(w.numpy(), np.where(y.numpy() == 1, 2.0, 0.5))


def _lesion_rows(folders_root):
    df = read_folders(folders_root, NEG, POS)
    return df[df["split"] == "train"].reset_index(drop=True)


def test_lesion_targets_mark_the_grid_cells_the_mask_touches(tf_mod, folders):
    rows = _lesion_rows(folders[0])
    rows.loc[rows.index[rows["label"] == 1][0], "mask_path"] = None  # an abnormal image whose lesion is unknown
    spec, grid = InputSpec(32, 32, 1), (4, 4)
    ds = make_dataset(rows, spec, batch_size=len(rows), training=False, lesion_grid=grid,
                        class_weight={0: 0.75, 1: 1.5})
    (x, targets, weights), = list(ds)
    cells, lesion_w = targets["lesion_map"].numpy(), weights["lesion_map"].numpy()
    assert cells.shape == (len(rows), 16) and 0.0 <= cells.min() and cells.max() <= 1.0
    assert np.allclose(weights["probability"].numpy(), np.where(rows["label"] == 1, 1.5, 0.75))
    for i, row in rows.iterrows():
        if row["label"] == 0:
            assert cells[i].max() == 0 and lesion_w[i] == 1  # a normal image: an empty map is the target
        elif row["mask_path"] is None:
            assert lesion_w[i] == 0  # unknown lesion: no lesion loss at all
        else:
            mask = cv2.imread(row["mask_path"], cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
            at_input = cv2.resize(mask, (32, 32), interpolation=cv2.INTER_AREA)
            expected = (at_input.reshape(4, 8, 4, 8).mean(axis=(1, 3)).ravel() > LESION_PRESENCE).astype(np.float32)
            assert lesion_w[i] == 1 and np.array_equal(cells[i], expected)
    assert any(cells[i].max() > 0 for i in range(len(rows)) if rows["mask_path"][i] is not None)


def test_augmentation_warps_the_lesion_mask_with_its_image(tf_mod, folders):
    """Feed each mask as its own image: with only geometric augmentation, the warped image
    pooled to the grid must equal the lesion targets (same warp, same place)."""
    rows = _lesion_rows(folders[0])
    rows = rows[rows["mask_path"].notna() & (rows["label"] == 1)].copy()
    rows["path"] = rows["mask_path"]
    cfg = AugmentConfig(brightness=0.0, contrast=0.0, fill_mode="constant")
    ds = make_dataset(rows, InputSpec(32, 32, 1), batch_size=4, training=True, augment=cfg, seed=3,
                        lesion_grid=(4, 4))
    for x, targets, _ in ds:
        share = x.numpy()[..., 0].reshape(-1, 4, 8, 4, 8).mean(axis=(2, 4)).reshape(-1, 16)
        clear = np.abs(share - LESION_PRESENCE) > 1e-5  # cells not on the threshold's edge
        assert clear.mean() > 0.9
        assert np.array_equal((share > LESION_PRESENCE)[clear], targets["lesion_map"].numpy()[clear] == 1)


def test_training_batches_mix_classes_even_with_a_small_shuffle_buffer(tf_mod, tmp_path):
    """Readers list images class by class; batches must not follow that order (a model could
    track the drifting label mix through its bias and look as if it learned)."""
    paths = []
    for i in range(120):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.full((8, 8), i, np.uint8))
        paths.append(str(path))
    df = pd.DataFrame({"path": paths, "label": [0] * 60 + [1] * 60})
    ds = make_dataset(df, InputSpec(8, 8, 1), batch_size=20, training=True, shuffle_buffer=4, seed=0)
    first_half = np.concatenate([y.numpy() for _, y in ds.take(3)])
    assert 0.25 < first_half.mean() < 0.75


def test_file_cache_and_throughput(tf_mod, mura_df, tmp_path):
    ds = make_dataset(mura_df, InputSpec(32, 32, 1), batch_size=4, training=True,
                        augment=AugmentConfig(), cache=str(tmp_path / "cache" / "mura"))
    t = measure_throughput(ds, batches=3)
    assert t.images_first_epoch == len(mura_df) and 0 < t.images_cached <= 12
    assert t.first_epoch > 0 and t.cached > 0
    assert list((tmp_path / "cache").glob("mura.*.index"))  # the cache was written to files


def test_make_dataset_and_augment_config_refuse_bad_input(mura_df):
    with pytest.raises(ValueError, match="rotation_degrees"):
        AugmentConfig(rotation_degrees=-1)
    with pytest.raises(ValueError, match="fill_mode"):
        AugmentConfig(fill_mode="mirror")
    with pytest.raises(ValueError, match="no rows"):
        make_dataset(mura_df.iloc[:0], InputSpec(32, 32, 1), batch_size=2, training=False)
    with pytest.raises(ValueError, match="0 or 1"):
        make_dataset(mura_df.assign(label=2), InputSpec(32, 32, 1), batch_size=2, training=False)


def test_readers_do_not_import_tensorflow():
    code = ("import sys, xray_ai.training.datasets, xray_ai.training.augment, xray_ai.training.pipeline; "
            "import xray_ai.training.splits as s; s.class_weights([0, 1]); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
