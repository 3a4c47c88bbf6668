"""predict-batch --engine ray: the same rows as the local engine, on a local Ray (2 CPUs)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import REPO, write_tiny_registry
from test_predict_batch import _close, _png

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from xray_ai.batch import BatchJob, BatchRun, read_rows  # noqa: E402
from xray_ai.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_file):
    """The tiny model in a registry, its ONNX export in a private cache, and a local Ray
    whose workers see that cache and this checkout."""
    from xray_ai.serving.manager import ModelManager

    root = tmp_path_factory.mktemp("ray")
    src, sha = tiny_model_file
    shutil.copy(src, root / src.name)
    registry = write_tiny_registry(root, root / src.name, sha256=sha)
    old = os.environ.get("XRAY_AI_ONNX_CACHE")
    os.environ["XRAY_AI_ONNX_CACHE"] = str(root / "cache")  # before ray.init: its workers inherit it
    ModelManager(registry, backend="onnx").export_onnx("tiny-test")
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "XRAY_AI_ONNX_CACHE": str(root / "cache")}})
    yield registry
    ray.shutdown()
    if old is None:
        os.environ.pop("XRAY_AI_ONNX_CACHE", None)
    else:
        os.environ["XRAY_AI_ONNX_CACHE"] = old


def test_ray_rows_equal_the_local_engines_row_by_row(served, tmp_path, capsys):
    archive = tmp_path / "archive"
    seed = 0
    for study, views in (("a/1", 2), ("a/2", 1), ("b/1", 3), ("c/1", 1)):
        for v in range(views):
            _png(archive / study / f"v{v}.png", seed := seed + 1)
    (archive / "d" / "1").mkdir(parents=True)
    (archive / "d" / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    rows = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        code = main(["predict-batch", str(archive), "--condition", "fracture", "--out", str(out),
                     "--registry", str(served), "--engine", engine, "--workers", "1", "--batch-size", "4"])
        stdout = capsys.readouterr().out
        assert code == 0 and "5 studies (4 assessable, 1 errors)" in stdout, stdout
        rows[engine] = {r["study"]: {k: v for k, v in r.items() if k != "created"} for r in read_rows(out)}
    assert set(rows["ray"]) == {"a/1", "a/2", "b/1", "c/1", "d/1"}
    assert {r["backend"] for r in rows["ray"].values() if r["status"] == "ok"} == {"onnxruntime"}  # a session per actor
    assert "broken.png" in rows["ray"]["d/1"]["error"]
    for study, local in rows["local"].items():
        _close(rows["ray"][study], local, study)


def test_a_ray_run_resumes_the_same_file(served, tmp_path):
    archive = tmp_path / "archive"
    for i in range(3):
        _png(archive / f"s{i}" / "v.png", i)
    out = tmp_path / "rows.csv"
    job = BatchJob(source=archive, out=out, condition="fracture", registry=served, engine="ray", workers=1)
    assert BatchRun(job).execute().studies == 3
    _png(archive / "s3" / "v.png", 3)
    run = BatchRun(job)
    assert run.skipped == 3 and [s.study_id for s in run.todo] == ["s3"]
    assert run.execute().studies == 1
    assert sorted(r["study"] for r in read_rows(out)) == ["s0", "s1", "s2", "s3"]
    assert json.loads(read_rows(out)[0]["files"]) == ["s0/v.png"]
