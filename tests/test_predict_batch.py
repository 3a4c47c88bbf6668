"""predict-batch: grouping, rows equal to `predict --json`, cross-study batches, error rows,
resuming, outputs, on both backends (TensorFlow and ONNX Runtime)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import types

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import EXAMPLES
from test_ensemble import ensemble_registry, model_b_file  # noqa: F401  (fixtures)
from xray_ai.batch import CSV_COLUMNS, BatchInputError, BatchJob, BatchRun, find_studies, read_rows
from xray_ai.batch.rows import RowWriter
from xray_ai.cli import main

TOLERANCE = 1e-5  # the same views forwarded in other batch compositions: float rounding only


def _png(path, seed, size=48):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _dicom(path, study_uid, source="phantom_fracture_normal.dcm"):
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(EXAMPLES / source)
    ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(path)
    return path


@pytest.fixture()
def archive(tmp_path):
    """Four PNG studies of 1-3 views, a two-view DICOM study spread over two folders, a
    DICOM without suffix, a phantom mask that is not an image, and a study with a bad file."""
    root = tmp_path / "archive"
    seed = 0
    for study, views in (("p1/s1", 3), ("p1/s2", 1), ("p2/s1", 2), ("p3/s1", 3)):
        for v in range(views):
            _png(root / study / f"view{v + 1}.png", seed := seed + 1)
    _png(root / "p3" / "s1" / "view1_mask.png", 99)
    _dicom(root / "dicom_a" / "one.dcm", "1.2.3.4.100")
    _dicom(root / "dicom_b" / "two.dcm", "1.2.3.4.100", "phantom_fracture_abnormal.dcm")
    _dicom(root / "dicom_b" / "IM0001", "1.2.3.4.200")  # no suffix: found by its DICM marker
    _png(root / "bad" / "good.png", 50)
    (root / "bad" / "broken.png").write_bytes(_png(tmp_path / "whole.png", 51).read_bytes()[:-60])
    return root


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _close(a, b, where="row"):
    """Equal, floats within TOLERANCE, recursively; names the first difference."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=TOLERANCE), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_a_folder_is_grouped_by_study_uid_and_by_folder(archive):
    studies = {s.study_id: s.names for s in find_studies(archive)}
    assert studies["p1/s1"] == ("p1/s1/view1.png", "p1/s1/view2.png", "p1/s1/view3.png")
    assert studies["p3/s1"] == ("p3/s1/view1.png", "p3/s1/view2.png", "p3/s1/view3.png")  # no mask
    assert studies["1.2.3.4.100"] == ("dicom_a/one.dcm", "dicom_b/two.dcm")  # one study over two folders
    assert studies["1.2.3.4.200"] == ("dicom_b/IM0001",)
    assert set(studies) == {"p1/s1", "p1/s2", "p2/s1", "p3/s1", "1.2.3.4.100", "1.2.3.4.200", "bad"}


def test_files_directly_in_input_are_a_study_named_after_it(tmp_path):
    _png(tmp_path / "single" / "a.png", 1)
    assert [(s.study_id, s.names) for s in find_studies(tmp_path / "single")] == [("single", ("a.png",))]


def test_mura_layout_gives_mura_study_ids(tmp_path):
    from xray_ai.phantoms import write_dataset

    write_dataset(tmp_path, "msk_abnormality", 4, layout="mura", size=48, splits=(("valid", 1.0),))
    listed = (tmp_path / "MURA-v1.1" / "valid_labeled_studies.csv").read_text().split()
    labelled = {line.split(",")[0].rstrip("/") for line in listed}
    studies = find_studies(tmp_path)
    assert {s.study_id for s in studies} == labelled  # rows join MURA's own label CSV
    assert all(s.study_id.startswith("MURA-v1.1/valid/XR_") for s in studies)
    assert all(not n.endswith("_mask.png") for s in studies for n in s.names)
    assert all(os.path.isfile(f) for s in studies for f in s.files)


def test_a_csv_lists_files_with_a_study_column(tmp_path):
    for i in range(3):
        _png(tmp_path / "imgs" / f"{i}.png", i)
    (tmp_path / "list.csv").write_text("Path,Study\nimgs/0.png,A\nimgs/2.png,B\nimgs/1.png,A\n")
    studies = find_studies(tmp_path / "list.csv")
    assert [(s.study_id, s.names) for s in studies] == [("A", ("imgs/0.png", "imgs/1.png")), ("B", ("imgs/2.png",))]
    assert studies[0].files[0] == str(tmp_path / "imgs" / "0.png")
    (tmp_path / "bad.csv").write_text("image,patient\nimgs/0.png,A\n")
    with pytest.raises(BatchInputError, match="study column"):
        find_studies(tmp_path / "bad.csv")


@pytest.mark.parametrize("backend", ["tensorflow", "onnx"])
def test_rows_are_predict_json_and_bad_files_are_error_rows(backend, archive, tiny_registry, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.setenv("XRAY_AI_ONNX_CACHE", str(tmp_path / "cache"))  # an export of our own ("onnx" builds it)
    out = tmp_path / "rows.jsonl"
    code, stdout, err = _run(["predict-batch", str(archive), "--condition", "fracture", "--out", str(out),
                              "--registry", str(tiny_registry), "--backend", backend, "--batch-size", "4"], capsys)
    assert code == 0, err
    assert "predict-batch: 7 studies (" in stdout and "1 errors" in stdout and "images/s" in stdout
    rows = {r["study"]: r for r in read_rows(out)}
    assert len(rows) == 7
    bad = rows["bad"]
    assert bad["status"] == "error" and "broken.png" in bad["error"] and bad["model_id"] == "tiny-test"
    for study in find_studies(archive):
        if study.study_id == "bad":
            continue
        row = rows[study.study_id]
        assert row["status"] == "ok" and row["backend"] == ("onnxruntime" if backend == "onnx" else "tensorflow")
        # predict's default method: the model's own map, from the scoring pass, as predict-batch gives it
        code, stdout, err = _run(["predict", *study.files, "--condition", "fracture", "--json",
                                  "--registry", str(tiny_registry), "--backend", backend], capsys)
        assert code == 0, err
        alone = json.loads(stdout)
        assert len(alone["views"]) == len(study.files)
        got = {k: v for k, v in row.items() if k in alone and k != "created"}
        _close(got, {k: v for k, v in alone.items() if k != "created"}, study.study_id)


def test_views_of_several_studies_share_one_forward(archive, tiny_registry):
    """Full batches across study boundaries (a study may straddle two), results as analyze()'s."""
    from xray_ai import analyze, load_image
    from xray_ai.batch.core import Scorer, model_inputs, prepare_study
    from xray_ai.serving.manager import ModelManager

    manager = ModelManager(tiny_registry, backend="tensorflow")
    loaded = manager.get("fracture")
    sizes = []

    class Recording:  # the analyzer, counting the views of each call
        def __getattr__(self, name):
            return getattr(loaded.analyzer, name)

        def __call__(self, batch):
            sizes.append(len(batch))
            return loaded.analyzer(batch)

    spy = dataclasses.replace(loaded, analyzer=Recording())
    studies = [s for s in find_studies(archive) if s.study_id != "bad"]
    scorer = Scorer(manager, spy, manager.registry, batch_size=4)
    done = []
    for study in studies:
        done += scorer.add(prepare_study(study, model_inputs(loaded)))
    done += scorer.flush()
    views = sum(len(s.files) for s in studies)
    assert sizes == [4] * (views // 4) + ([views % 4] if views % 4 else [])
    assert [d.study.study_id for d in done] == [s.study_id for s in studies]
    for scored, study in zip(done, studies):
        expected = analyze([load_image(f) for f in study.files], "fracture", manager=manager)
        for got, want in zip(scored.result.views, expected.views):
            assert got.probability == pytest.approx(want.probability, abs=TOLERANCE)
            np.testing.assert_allclose(got.heatmap, want.heatmap, atol=1e-4)
        assert scored.result.decision == expected.decision


def test_csv_rows_flatten_the_jsonl_rows(archive, tiny_registry, tmp_path, capsys):
    base = ["--condition", "fracture", "--registry", str(tiny_registry), "--backend", "tensorflow"]
    assert _run(["predict-batch", str(archive), "--out", str(tmp_path / "r.jsonl"), *base], capsys)[0] == 0
    assert _run(["predict-batch", str(archive), "--out", str(tmp_path / "r.csv"), *base, "--workers", "0"],
                capsys)[0] == 0
    jsonl = {r["study"]: r for r in read_rows(tmp_path / "r.jsonl")}
    table = {r["study"]: r for r in read_rows(tmp_path / "r.csv")}
    assert set(jsonl) == set(table) and list(next(iter(table.values()))) == list(CSV_COLUMNS)
    row, cells = jsonl["p1/s1"], table["p1/s1"]
    assert cells["extra"] == ""  # every field of the result has its own column
    assert float(cells["probability"]) == pytest.approx(row["probability"], abs=TOLERANCE)
    assert json.loads(cells["view_file"]) == [v["file"] for v in row["views"]]
    assert json.loads(cells["files"]) == row["files"] == ["p1/s1/view1.png", "p1/s1/view2.png", "p1/s1/view3.png"]
    assert cells["assessable"] in ("true", "false") and cells["decision"] == row["decision"]
    assert table["bad"]["status"] == "error" and "broken.png" in table["bad"]["error"]


def test_a_rerun_skips_written_studies_and_an_interrupted_run_resumes(archive, tiny_registry, tmp_path, capsys):
    out = tmp_path / "rows.csv"
    job = BatchJob(source=archive, out=out, condition="fracture", registry=tiny_registry, backend="tensorflow",
                   batch_size=2)
    run = BatchRun(job)

    def crash(row):
        if len(run.writer.done) == 3:
            raise KeyboardInterrupt  # as a user's Ctrl-C, or a kill, after the third row

    with pytest.raises(KeyboardInterrupt):
        run.execute(on_row=crash)
    assert len(read_rows(out)) == 3
    with out.open("a") as fh:  # what a crash in the middle of a write would leave
        fh.write('p9/s9,ok,,"[""half')
    run = BatchRun(job)
    assert run.skipped == 3 and len(run.todo) == 4  # the torn line is dropped, its study not done
    summary = run.execute()
    assert summary.studies == 4 and summary.skipped == 3
    rows = read_rows(out)
    assert [r["study"] for r in rows if r["status"] == "error"] == ["bad"]
    assert sorted(r["study"] for r in rows) == sorted(s.study_id for s in find_studies(archive))  # once each
    code, stdout, _ = _run(["predict-batch", str(archive), "--condition", "fracture", "--out", str(out),
                            "--registry", str(tiny_registry)], capsys)
    assert code == 0 and "0 studies" in stdout and "7 already in" in stdout
    assert len(read_rows(out)) == 7


def test_a_file_of_another_model_or_format_is_refused(archive, tiny_registry, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    out.write_text(json.dumps({"study": "x", "status": "ok", "model_id": "other-model"}) + "\n")
    code, _, err = _run(["predict-batch", str(archive), "--condition", "fracture", "--out", str(out),
                         "--registry", str(tiny_registry)], capsys)
    assert code == 2 and "other-model" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(["predict-batch", str(archive), "--condition", "fracture", "--out", str(tmp_path / "r.txt"),
                         "--registry", str(tiny_registry)], capsys)
    assert code == 2 and ".csv or .jsonl" in err
    code, _, err = _run(["predict-batch", str(tmp_path / "nowhere"), "--condition", "fracture", "--out",
                         str(tmp_path / "r.csv"), "--registry", str(tiny_registry)], capsys)
    assert code == 2 and "nowhere" in err
    code, _, err = _run(["predict-batch", str(archive), "--condition", "gout", "--out", str(tmp_path / "r.csv"),
                         "--registry", str(tiny_registry)], capsys)
    assert code == 2 and "gout" in err


def test_two_runs_cannot_write_one_file(tmp_path):
    with RowWriter(tmp_path / "rows.csv", "m"):
        with pytest.raises(ValueError, match="another predict-batch run"):
            RowWriter(tmp_path / "rows.csv", "m")


def test_heatmaps_and_reports_are_written_beside_the_rows(archive, tiny_registry, tmp_path, capsys):
    out, heat, reports = tmp_path / "rows.jsonl", tmp_path / "heat", tmp_path / "reports"
    code, _, err = _run(["predict-batch", str(archive), "--condition", "fracture", "--out", str(out),
                         "--registry", str(tiny_registry), "--heatmaps", str(heat), "--reports", str(reports)], capsys)
    assert code == 0, err
    rows = {r["study"]: r for r in read_rows(out)}
    row = rows["p1/s1"]
    assert len(row["heatmaps"]) == 3 and row["output_error"] is None
    assert Image.open(row["heatmaps"][0]).size == (48, 48)  # the overlay at the image's resolution
    assert open(row["report"], "rb").read(4) == b"%PDF"
    assert rows["bad"]["heatmaps"] == [] and rows["bad"]["report"] is None
    assert len(list(reports.glob("*.pdf"))) == 6  # one per scored study, none for the error


def test_dicom_out_writes_results_into_the_source_study(archive, tiny_registry, tmp_path, capsys):
    pytest.importorskip("xray_ai.outputs.dicom_results", reason="the DICOM results writer (issue 21) is not here")
    out, dicom = tmp_path / "rows.jsonl", tmp_path / "dicom"
    code, _, err = _run(["predict-batch", str(archive), "--condition", "fracture", "--out", str(out),
                         "--registry", str(tiny_registry), "--dicom-out", str(dicom)], capsys)
    assert code == 0, err
    rows = {r["study"]: r for r in read_rows(out)}
    written = rows["1.2.3.4.100"]["dicom"]
    assert written and rows["1.2.3.4.100"]["output_error"] is None
    assert {str(pydicom.dcmread(p).StudyInstanceUID) for p in written} == {"1.2.3.4.100"}
    assert rows["p1/s1"]["dicom"] == [] and "DICOM" in rows["p1/s1"]["output_error"]  # PNGs have no study


def test_dicom_out_without_the_writer_exits_2_before_any_work(archive, tiny_registry, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "xray_ai.outputs.dicom_results", None)  # import now raises ImportError
    out = tmp_path / "rows.csv"
    code, _, err = _run(["predict-batch", str(archive), "--condition", "fracture", "--out", str(out),
                         "--registry", str(tiny_registry), "--dicom-out", str(tmp_path / "d")], capsys)
    assert code == 2 and "--dicom-out" in err and not out.exists()


def test_process_decoders_give_the_rows_threads_give(archive, tiny_registry, tmp_path, monkeypatch):
    # A spawned worker reruns the parent's __main__ file: under pytest, after Streamlit's
    # AppTest, that can be an app page. `python -m xray_ai` is never rerun (a package's __main__).
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    rows = {}
    for pool in ("thread", "process"):
        out = tmp_path / f"{pool}.jsonl"
        BatchRun(BatchJob(source=archive, out=out, condition="fracture", registry=tiny_registry,
                          backend="tensorflow", workers=2, pool=pool)).execute()
        rows[pool] = {r["study"]: {k: v for k, v in r.items() if k != "created"} for r in read_rows(out)}
    _close(rows["thread"], rows["process"])


def test_a_study_over_the_view_limit_is_an_error_row(tmp_path, tiny_registry):
    for v in range(17):
        _png(tmp_path / "big" / "s" / f"{v:02d}.png", v, size=40)
    out = tmp_path / "rows.jsonl"
    summary = BatchRun(BatchJob(source=tmp_path / "big", out=out, condition="fracture", registry=tiny_registry,
                                backend="tensorflow")).execute()
    (row,) = read_rows(out)
    assert summary.errors == 1 and row["status"] == "error" and "at most 16 views" in row["error"]
    shutil.rmtree(tmp_path / "big")


def test_an_ensemble_batches_each_member_with_its_own_input(ensemble_registry, archive, tmp_path, capsys):
    """Members of other input sizes and preprocessing: each gets its own batch; rows as predict's."""
    out = tmp_path / "rows.jsonl"
    code, _, err = _run(["predict-batch", str(archive), "--condition", "fracture", "--out", str(out),
                         "--registry", str(ensemble_registry), "--backend", "tensorflow", "--batch-size", "3"], capsys)
    assert code == 0, err
    rows = {r["study"]: r for r in read_rows(out)}
    for study in [s for s in find_studies(archive) if s.study_id in ("p1/s1", "1.2.3.4.100")]:
        row = rows[study.study_id]
        assert row["members"] == ["tiny-test", "tiny-b"]
        code, stdout, err = _run(["predict", *study.files, "--condition", "fracture", "--json",
                                  "--registry", str(ensemble_registry), "--backend", "tensorflow"], capsys)
        alone = json.loads(stdout)
        _close({k: v for k, v in row.items() if k in alone and k != "created"},
               {k: v for k, v in alone.items() if k != "created"}, study.study_id)
