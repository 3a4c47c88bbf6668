"""The `python -m xray_ai` contract: JSON fields, outputs, exit status and one-line errors."""

import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, REPO
from xray_ai.cli import main

CONTRACT_FIELDS = {
    "condition", "model_id", "model_version", "architecture", "probability", "decision", "threshold",
    "placeholder", "placeholder_reason", "heatmap_method", "target_layer", "views", "warnings",
}


def _png_claiming(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _truncated_png():
    import io

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()[:-40]


BAD_INPUTS = {
    "empty.png": b"",
    "random.png": np.random.default_rng(1).bytes(4096),
    "truncated.png": _truncated_png(),
    "notes.dcm": b"Patient notes, definitely not DICOM\n" * 20,
    "bomb.png": _png_claiming(30000, 30000),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_naming_the_file(tmp_path, capsys, name):
    path = tmp_path / name
    path.write_bytes(BAD_INPUTS[name])
    code = main(["predict", str(path), "--condition", "fracture", "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and name in err and "Traceback" not in err


def test_bomb_reason_mentions_size(tmp_path, capsys):
    path = tmp_path / "bomb.png"
    path.write_bytes(BAD_INPUTS["bomb.png"])
    main(["predict", str(path), "--condition", "fracture"])
    assert "30000" in capsys.readouterr().err


def test_missing_file_and_unknown_condition_exit_2(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.png"), "--condition", "fracture"]) == 2
    assert "nope.png: no such file" in capsys.readouterr().err
    assert main(["predict", str(EXAMPLES / "rg3_tibia.png"), "--condition", "gout"]) == 2
    err = capsys.readouterr().err
    assert "unknown condition 'gout'" in err and len(err.strip().splitlines()) == 1


def test_invalid_registry_exits_2(tmp_path, capsys):
    bad = tmp_path / "registry.json"
    bad.write_text('{"schema_version": 1}')
    assert main(["predict", str(EXAMPLES / "rg3_tibia.png"), "--condition", "fracture", "--registry", str(bad)]) == 2
    assert "registry.json" in capsys.readouterr().err


def test_predict_json_with_a_verified_model(tiny_registry, tmp_path, capsys):
    heat, pdf = tmp_path / "heat.png", tmp_path / "report.pdf"
    code = main([
        "predict", str(EXAMPLES / "rg3_tibia.png"), "--condition", "fracture", "--json",
        "--registry", str(tiny_registry), "--heatmap", str(heat), "--intensity", "0.7", "--report", str(pdf),
    ])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert CONTRACT_FIELDS <= set(result)
    assert result["placeholder"] is False and result["placeholder_reason"] is None
    assert result["model_id"] == "tiny-test" and result["target_layer"] == "conv2"
    assert result["heatmap_method"] == "gradcam"
    assert 0 <= result["probability"] <= 1
    assert result["decision"] == ("fracture" if result["probability"] >= 0.5 else "no fracture")
    source = Image.open(EXAMPLES / "rg3_tibia.png")
    assert Image.open(heat).size == source.size  # overlay at the original resolution
    assert pdf.read_bytes().startswith(b"%PDF")


def test_several_images_are_one_study_scored_by_the_mean(tiny_registry, capsys):
    images = [str(EXAMPLES / "rg3_tibia.png"), str(EXAMPLES / "rg3_tibia.dcm")]
    assert main(["predict", *images, "--condition", "fracture", "--json", "--registry", str(tiny_registry)]) == 0
    result = json.loads(capsys.readouterr().out)
    views = [v["probability"] for v in result["views"]]
    assert len(views) == 2 and result["probability"] == pytest.approx(np.mean(views), abs=1e-6)


def test_placeholder_is_flagged_in_json_and_on_stderr(tmp_path, capsys):
    from conftest import write_tiny_registry

    registry = write_tiny_registry(tmp_path, tmp_path / "gone.keras", sha256=None)
    assert main(["predict", str(EXAMPLES / "rg3_tibia.png"), "--condition", "fracture", "--json", "--registry", str(registry)]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["placeholder"] is True and "gone.keras not found" in result["placeholder_reason"]
    assert result["architecture"].startswith("placeholder")
    assert "PLACEHOLDER MODEL - NOT A DIAGNOSTIC RESULT" in out.err
    assert any("PLACEHOLDER" in w for w in result["warnings"])


def test_python_m_entry_point_on_the_shipped_registry_and_examples():
    """The real command line, on the repository's own registry and example DICOM."""
    done = subprocess.run(
        [sys.executable, "-m", "xray_ai", "predict", str(EXAMPLES / "rg3_tibia.dcm"), "--condition", "fracture", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert CONTRACT_FIELDS <= set(result)
    registry = json.loads((REPO / "model_registry.json").read_text())
    entry = registry["models"][result["model_id"]]
    assert result["model_id"] == registry["active_models"]["fracture"]
    assert result["threshold"] == entry["threshold"]
    # Whatever the repo ships, a placeholder must say so and a real model must be verified.
    model_file = REPO / entry["path"]
    assert result["placeholder"] is (not model_file.is_file())
    assert "Traceback" not in done.stderr


def test_registry_commands(tmp_path, capsys, tiny_registry, monkeypatch):
    monkeypatch.delenv("XRAY_AI_AUDIT_DB", raising=False)
    assert main(["registry", "list", "--registry", str(tiny_registry)]) == 0
    assert "* tiny-test" in capsys.readouterr().out
    assert main(["registry", "validate", "--registry", str(tiny_registry)]) == 0
    assert "tiny-test: ok" in capsys.readouterr().out
    assert main(["registry", "activate", "fracture", "nope", "--registry", str(tiny_registry)]) == 2
    assert "unknown model id 'nope'" in capsys.readouterr().err


def test_validate_strict_fails_on_tampered_active_model(tiny_registry, capsys):
    model_file = tiny_registry.parent / "tiny.keras"
    model_file.write_bytes(model_file.read_bytes() + b"x")
    assert main(["registry", "validate", "--registry", str(tiny_registry)]) == 0
    assert "the registry expects" in capsys.readouterr().out
    assert main(["registry", "validate", "--strict", "--registry", str(tiny_registry)]) == 2


def test_activate_switches_and_audits(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XRAY_AI_AUDIT_DB", raising=False)
    from conftest import write_tiny_registry
    from xray_ai.registry import load_registry, read_audit_log

    path = write_tiny_registry(tmp_path, None, sha256=None)
    raw = json.loads(path.read_text())
    raw["models"]["tiny-2"] = dict(raw["models"]["tiny-test"], version="0.0.2")
    path.write_text(json.dumps(raw))
    assert main(["registry", "activate", "fracture", "tiny-2", "--registry", str(path), "--user", "admin"]) == 0
    assert load_registry(path).active_models["fracture"] == "tiny-2"
    entry = read_audit_log(path)[0]
    assert entry["user"] == "admin" and entry["action"] == "activate"
    assert "active_models.fracture: 'tiny-test' -> 'tiny-2'" in entry["changes"]


def test_registry_env_variable_is_the_default(tiny_registry, capsys, monkeypatch):
    monkeypatch.setenv("XRAY_AI_REGISTRY", str(tiny_registry))
    assert main(["registry", "list"]) == 0
    assert "tiny-test" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["gradcam++", "saliency", "smoothgrad"])
def test_predict_with_other_heatmap_methods(tiny_registry, capsys, method):
    assert main(["predict", str(EXAMPLES / "rg3_tibia.png"), "--condition", "fracture", "--json",
                 "--method", method, "--registry", str(tiny_registry)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["heatmap_method"] == method
    assert result["target_layer"] == ("conv2" if method == "gradcam++" else None)


def test_a_closed_pipe_is_not_an_internal_error():
    """`python -m xray_ai registry list | head` may close stdout while we print."""
    script = ("import sys\n"
              "import xray_ai.cli.entry as cli\n"
              "def closed(args): raise BrokenPipeError(32, 'Broken pipe')\n"
              "cli._COMMANDS['registry'] = closed\n"
              "sys.exit(cli.main(['registry', 'list']))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 141 and "internal error" not in run.stderr and "Traceback" not in run.stderr


def test_the_parser_and_every_command_module_load_without_tensorflow():
    """`--help` and `phantoms` build the whole parser: the commands import tensorflow lazily."""
    script = ("import sys\n"
              "import xray_ai.cli.misc, xray_ai.cli.models, xray_ai.cli.predict, xray_ai.cli.registry\n"
              "from xray_ai.cli.entry import build_parser\n"
              "build_parser().parse_args(['phantoms', '--gallery', 'x.png'])\n"
              "print([m for m in ('tensorflow', 'keras') if m in sys.modules])\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr
