"""`python -m xray_ai ...`: predict, registry administration, ONNX export, training, phantoms.

Exit status (DESIGN.md): 0 success; 2 bad input (unreadable, unsupported or oversized
image, unknown condition or model id, invalid registry), with one stderr line naming the
file and the reason and no traceback; 1 internal error (set XRAY_AI_DEBUG=1 for the
traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

from xray_ai.explain.base import METHODS  # numpy only

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """A user error: reported in one line, exit status 2."""


def _add_registry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="registry file (default: $XRAY_AI_REGISTRY, else model_registry.json at the repository root)",
    )


def _intensity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"intensity must be a number in 0..1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"intensity must be in 0..1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xray_ai",
        description="Decision support for radiographs: never a diagnosis; a clinician decides.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="score one study (several images = its views) and explain it")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG, JPEG or DICOM files")
    p.add_argument("--condition", help="condition id (see `registry list`)")
    p.add_argument("--model", dest="model_id", help="a registered model id instead of the active one")
    p.add_argument("--method", default="gradcam", choices=METHODS,
                   help="heatmap method (default gradcam; the others run on TensorFlow after the scoring pass)")
    p.add_argument("--heatmap", type=Path, help="write the overlay PNG here (one per view: NAME_viewN.png)")
    p.add_argument("--intensity", type=_intensity, default=0.5, help="heatmap intensity 0..1 (default 0.5)")
    p.add_argument("--no-annotations", action="store_true", help="overlay without contour and box")
    p.add_argument("--report", type=Path, help="write the PDF report here")
    p.add_argument("--include-patient", action="store_true", help="put DICOM patient fields in the report")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument(
        "--backend",
        choices=["auto", "onnx", "tensorflow"],
        default=None,
        help="auto (default, or $XRAY_AI_BACKEND): ONNX Runtime when the model's export exists, else "
        "TensorFlow; onnx: export now if needed; tensorflow: never ONNX Runtime",
    )
    _add_registry_arg(p)

    x = sub.add_parser("export-onnx", help="build the ONNX Runtime exports of registered models ahead of time")
    x.add_argument("model_ids", nargs="*", metavar="MODEL_ID", help="default: every model whose file verifies")
    x.add_argument("--force", action="store_true", help="re-export even when a verified export exists")
    _add_registry_arg(x)

    r = sub.add_parser("registry", help="list, validate or switch registered models")
    rsub = r.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    rl = rsub.add_parser("list", help="models and which is active")
    rl.add_argument("--json", action="store_true")
    _add_registry_arg(rl)
    rv = rsub.add_parser("validate", help="check the registry and every model file's sha256")
    rv.add_argument("--strict", action="store_true", help="exit 2 when an active model's file fails its check")
    _add_registry_arg(rv)
    ra = rsub.add_parser("activate", help="make MODEL_ID the active model of CONDITION")
    ra.add_argument("condition")
    ra.add_argument("model_id")
    ra.add_argument("--user", help="who makes the change (for the audit log; default: login name)")
    _add_registry_arg(ra)

    t = sub.add_parser("train", help="train, evaluate and optionally register a model")
    t.add_argument("--protocol", choices=["quick", "intensive"], default="quick")
    t.add_argument("--condition", required=True)
    t.add_argument("--arch", required=True, help="densenet121, mobilenetv2 (or another backbone of architectures.py)")
    t.add_argument("--data", type=Path, required=True, help="dataset root")
    t.add_argument("--layout", choices=["mura", "folders"], default="folders")
    t.add_argument("--out", type=Path, default=Path("models"))
    t.add_argument("--register", action="store_true", help="add the model to the registry with its sha256")
    t.add_argument("--activate", action="store_true", help="make it the condition's active model (with --register)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--patience", type=int,
                   help="early-stopping patience in epochs (default: the protocol's); LR decay waits a third of it")
    t.add_argument("--image-size", type=int, default=224)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--learning-rate", type=float,
                   help="Adam's initial learning rate (default: the protocol's, quick 1e-3, intensive 1e-5)")
    t.add_argument("--weights", default="none", help="imagenet | none | PATH to backbone weights")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--oversample", action="store_true", help="duplicate minority-class images")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--lesion-weight", type=float,
                   help="weight of the lesion-mask loss (default: 5 where the training images have "
                        "<stem>_mask.png lesion masks, else off; 0 turns it off)")
    t.add_argument("--body-part-weight", type=float, default=0.0,
                   help="multi-task: train an auxiliary body-part head (MURA layout) with this loss weight; the "
                        "app and report show its prediction (default 0: off)")
    t.add_argument("--model-id", help="registry id (default: CONDITION-ARCH-PROFILE-YYYYMMDDHHMM)")
    t.add_argument("--initial-model", type=Path, metavar="MODEL.keras",
                   help="start from this saved classifier instead of --weights; with --epochs 0, only "
                        "calibrate, choose the operating point, evaluate and register it (a model fitted "
                        "by models/fit_on_gpu.py)")
    _add_registry_arg(t)

    e = sub.add_parser("evaluate", help="evaluate a registered model on a dataset")
    e.add_argument("--model", dest="model_id", required=True)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--layout", choices=["mura", "folders"], default="folders")
    e.add_argument("--split", default=None, help="evaluate only this split (default: all images)")
    e.add_argument("--output", type=Path, help="write the metrics JSON here")
    e.add_argument("--json", action="store_true")
    _add_registry_arg(e)

    fi = sub.add_parser("fit-input-check",
                        help="fit a model's input check (is an image like its training images?) on its data")
    fi.add_argument("--model", dest="model_id", required=True)
    fi.add_argument("--data", type=Path, required=True,
                    help="the model's training data (or data like it): fitted on its train split, "
                         "the threshold set on its valid split")
    fi.add_argument("--layout", choices=["mura", "folders"], default="folders")
    fi.add_argument("--percentile", type=float, default=None,
                    help="share of valid images (in %%) below the threshold (default 99.5)")
    _add_registry_arg(fi)

    x = sub.add_parser("explain-eval", help="score every heatmap method on lesion masks (pointing game, deletion/insertion)")
    x.add_argument("--model", dest="model_id", required=True)
    x.add_argument("--data", type=Path, required=True, help="a dataset with <stem>_mask.png lesion masks (phantoms)")
    x.add_argument("--layout", choices=["mura", "folders"], default="folders")
    x.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    x.add_argument("--max-images", type=int, default=40, help="abnormal images to use (default 40)")
    x.add_argument("--output", type=Path, help="JSON file (default: <model file>.explain.json beside the model)")
    _add_registry_arg(x)

    hp = sub.add_parser("hash-password", help="hash an administrator password for the app's registry page")
    hp.add_argument("--stdin", action="store_true", help="read the password from standard input (no prompt)")

    ph = sub.add_parser("phantoms", help="write synthetic radiograph phantoms with lesion masks")
    _add_registry_arg(ph)
    from xray_ai import phantoms  # numpy/OpenCV only: cheap to import

    phantoms.add_cli_arguments(ph)
    return parser


# ---------------------------------------------------------------------------- predict


def _load_images(paths: Sequence[Path]):
    from xray_ai.images.load import ImageLoadError, load_image

    images = []
    for path in paths:
        if not path.is_file():
            raise BadInput(f"{path}: no such file")
        try:
            images.append(load_image(path))
        except ImageLoadError as exc:
            raise BadInput(str(exc)) from None
    return images


def _cmd_predict(args: argparse.Namespace) -> int:
    from xray_ai.analysis import analyze
    from xray_ai.serving.manager import ModelManager
    from xray_ai.registry import RegistryError

    if args.condition is None and args.model_id is None:
        raise BadInput("give --condition ID or --model MODEL_ID (see `python -m xray_ai registry list`)")
    images = _load_images(args.images)
    try:
        manager = ModelManager(args.registry, backend=args.backend)
    except ValueError as exc:  # a bad $XRAY_AI_BACKEND
        raise BadInput(str(exc)) from None
    try:
        result = analyze(images, args.condition, manager=manager, model_id=args.model_id, method=args.method)
    except RegistryError as exc:
        raise BadInput(str(exc)) from None
    if result.placeholder:
        print(f"warning: PLACEHOLDER MODEL - NOT A DIAGNOSTIC RESULT: {result.placeholder_reason}", file=sys.stderr)
    if args.heatmap:
        _write_overlays(result, args.heatmap, args.intensity, not args.no_annotations)
    if args.report:
        from xray_ai.outputs.report import build_report

        args.report.write_bytes(build_report(result, include_patient=args.include_patient, intensity=args.intensity))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(_summary(result))
    return EXIT_OK


def _write_overlays(result, target: Path, intensity: float, annotate: bool) -> None:
    from PIL import Image

    from xray_ai.outputs.overlay import render_overlay

    for i, view in enumerate(result.views, start=1):
        rgb = render_overlay(
            view.image.pixels,
            view.heatmap,
            intensity,
            annotate=annotate,
            probability=view.probability,
            placeholder=result.placeholder,
        )
        out = target if len(result.views) == 1 else target.with_name(f"{target.stem}_view{i}{target.suffix}")
        Image.fromarray(rgb).save(out)


def _summary(result) -> str:
    lines = []
    if result.placeholder:
        lines.append("*** PLACEHOLDER MODEL - NOT A DIAGNOSTIC RESULT ***")
    lines += [
        f"{result.condition_name}: {result.decision} (probability {result.probability:.3f}, "
        f"threshold {result.threshold:.3f}: {result.threshold_method})",
        f"model {result.model_id} v{result.model_version} ({result.architecture}, {result.profile}); "
        f"trained on {result.trained_on}",
        f"intended use: {result.intended_use}",
        f"heatmap: {result.heatmap_method} at {result.target_layer}; backend {result.backend}",
        f"input check: {result.input_check_summary}",
    ]
    if result.body_part_summary:
        lines.append(f"body part: {result.body_part_summary}")
    if result.members:
        lines.append(f"ensemble: mean of {', '.join(result.members)}")
    if len(result.views) > 1:
        lines += [f"  view {v.filename}: {v.probability:.3f}" for v in result.views]
    lines += [f"warning: {w}" for w in result.warnings]
    lines.append("Decision support only, not a diagnosis: a clinician decides.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- registry


def _cmd_registry(args: argparse.Namespace) -> int:
    from xray_ai.serving.manager import check_entry
    from xray_ai.registry import RegistryError, load_registry, save_registry

    try:
        registry = load_registry(args.registry)
    except RegistryError as exc:
        raise BadInput(str(exc)) from None
    if args.registry_command == "list":
        active = set(registry.active_models.values())
        if args.json:
            print(json.dumps({"models": registry.to_dict()["models"], "active_models": dict(registry.active_models)}, indent=2))
            return EXIT_OK
        print(f"{'':2}{'model id':44} {'condition':16} {'arch':17} {'profile':9} {'version':10} threshold")
        for m in registry.models.values():
            mark = "* " if m.id in active else "  "
            print(f"{mark}{m.id:44} {m.condition:16} {m.architecture:17} {m.profile:9} {m.version:10} {m.threshold:.3f}")
            if m.is_ensemble:
                print(f"{'':4}mean of: {', '.join(m.members)}")
        print("* = active for its condition")
        return EXIT_OK
    if args.registry_command == "validate":
        failing_active = []
        for m in registry.models.values():
            problem = check_entry(m, registry)
            if problem and m.id in registry.active_models.values():
                failing_active.append(m.id)
            print(f"{m.id}: {'ok' if problem is None else problem + ' (placeholder would serve)'}")
        print(f"{registry.path}: schema valid; {len(registry.models)} models, {len(registry.active_models)} active")
        if args.strict and failing_active:
            raise BadInput(f"{registry.path}: active model(s) failing their file check: {', '.join(failing_active)}")
        return EXIT_OK
    if args.registry_command == "activate":
        try:
            updated = registry.with_active(args.condition, args.model_id)
        except RegistryError as exc:
            raise BadInput(f"{registry.path}: {exc}") from None
        changes = save_registry(updated, registry.path, user=args.user, action="activate")
        print("\n".join(changes) if changes else f"{args.model_id} was already active for {args.condition}")
        return EXIT_OK
    raise AssertionError(args.registry_command)


def _cmd_train(args: argparse.Namespace) -> int:
    from xray_ai.training.architectures import BACKBONES, WeightsUnavailableError
    from xray_ai.registry import RegistryError
    from xray_ai.training.trainer import TrainConfig, train

    if args.arch not in BACKBONES:
        raise BadInput(f"--arch {args.arch}: unknown; valid: {', '.join(sorted(BACKBONES))}")
    if not args.data.is_dir():
        raise BadInput(f"{args.data}: no such dataset folder")
    if args.activate and not args.register:
        raise BadInput("--activate needs --register")
    config = TrainConfig(
        condition=args.condition, architecture=args.arch, data=args.data, protocol=args.protocol,
        layout=args.layout, out=args.out, registry=args.registry, register=args.register,
        activate=args.activate, epochs=args.epochs, patience=args.patience, image_size=args.image_size, batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weights=args.weights, seed=args.seed, oversample=args.oversample, augment=not args.no_augment,
        lesion_weight=args.lesion_weight, body_part_weight=args.body_part_weight, model_id=args.model_id,
        initial_model=args.initial_model,
    )
    try:
        outcome = train(config)
    except (RegistryError, WeightsUnavailableError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    print(json.dumps({"model_id": outcome.model_id, "path": str(outcome.path), "sha256": outcome.sha256,
                      "threshold": outcome.threshold, "threshold_method": outcome.threshold_method,
                      "epochs_run": outcome.epochs_run, "seconds": round(outcome.seconds, 1),
                      "auc": outcome.metrics.get("auc"), "kappa": outcome.metrics.get("kappa"),
                      "split": outcome.metrics.get("split")}, indent=2))
    return EXIT_OK


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from xray_ai.serving.manager import ModelManager, check_model_file
    from xray_ai.registry import RegistryError

    try:
        manager = ModelManager(args.registry, backend="auto", warm_up=False)
        registry = manager.registry
        for model_id in args.model_ids:
            registry.model(model_id)  # unknown ids are bad input, before any slow export
    except (RegistryError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    named = bool(args.model_ids)
    failed = []
    print(f"ONNX export cache: {manager.onnx_cache}")
    ids: list[str] = []
    for model_id in args.model_ids or list(registry.models):  # an ensemble has no file: export its members
        entry = registry.model(model_id)
        if entry.is_ensemble:
            print(f"{model_id}: an ensemble has no file of its own; exporting its members {', '.join(entry.members)}")
        ids += [m for m in (entry.members if entry.is_ensemble else (model_id,)) if m not in ids]
    for model_id in ids:
        problem = check_model_file(registry.model(model_id), registry.base_dir)
        if problem:
            print(f"{model_id}: skipped, {problem} (TensorFlow placeholder would serve)")
            failed.append(model_id)
            continue
        start = time.perf_counter()
        try:
            path = manager.export_onnx(model_id, force=args.force)
        except (ValueError, RuntimeError, OSError) as exc:  # UnsupportedHead is a ValueError
            print(f"{model_id}: not exported, {exc}; TensorFlow serves it")
            failed.append(model_id)
            continue
        print(f"{model_id}: {path} ({time.perf_counter() - start:.1f} s)")
    if named and failed:
        raise BadInput(f"not exported: {', '.join(failed)}")
    return EXIT_OK


def _cmd_fit_input_check(args: argparse.Namespace) -> int:
    from xray_ai.analysis import pooled_features
    from xray_ai.serving.input_check import DEFAULT_PERCENTILE, fit, save, sidecar_path

    manager, loaded, df = _model_and_dataset(args, "fit its input check")
    if loaded.entry.is_ensemble:
        raise BadInput(f"{args.model_id} is an ensemble: fit the input check of each member")
    parts = {split: df[df["split"] == split] for split in ("train", "valid")}
    if any(part.empty for part in parts.values()):
        raise BadInput(f"{args.data}: needs a train and a valid split (found: {', '.join(sorted(set(df['split'])))})")
    percentile = DEFAULT_PERCENTILE if args.percentile is None else args.percentile
    if not 50.0 <= percentile < 100.0:
        raise BadInput(f"--percentile {percentile}: expected a value in [50, 100)")

    def features(part):
        return _over_images(part["path"], lambda pixels: pooled_features(loaded, pixels))

    try:
        distribution = fit(features(parts["train"]), features(parts["valid"]), loaded.entry.sha256,
                           source=f"{args.data.name} (train {len(parts['train'])}, valid {len(parts['valid'])} images)",
                           percentile=percentile)
    except ValueError as exc:
        raise BadInput(f"{args.model_id}: {exc}") from None
    path = save(distribution, sidecar_path(loaded.entry.resolve_path(manager.registry.base_dir)))
    print(f"{args.model_id}: input check fitted on {distribution.n_fit} images, threshold {distribution.threshold:.3f} "
          f"(the {percentile:g}th percentile of {distribution.n_calibration} valid images) -> {path}")
    return EXIT_OK


def _over_images(paths, per_chunk, chunk: int = 32):
    """per_chunk(pixels of up to `chunk` images) over a dataset's image paths, read a chunk at
    a time so that memory stays bounded; the results concatenated, in the order of `paths`."""
    import numpy as np

    from xray_ai.images.load import load_image

    return np.concatenate([per_chunk([load_image(p).pixels for p in paths.iloc[start : start + chunk]])
                           for start in range(0, len(paths), chunk)])


def _model_and_dataset(args: argparse.Namespace, purpose: str = "evaluate"):
    """(manager, loaded model, dataset frame) for evaluate, explain-eval and fit-input-check;
    BadInput, naming `purpose`, when unusable."""
    from xray_ai.training import data as datamod
    from xray_ai.serving.manager import ModelManager
    from xray_ai.registry import RegistryError

    try:
        manager = ModelManager(args.registry)
        loaded = manager.get(model_id=args.model_id)
        condition = manager.registry.condition(loaded.entry.condition)
        df = (datamod.read_mura(args.data) if args.layout == "mura"
              else datamod.read_folders(args.data, condition.negative_label, condition.positive_label))
    except (RegistryError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    if loaded.placeholder:
        which = "a member's model file" if loaded.entry.is_ensemble else "the model file"
        raise BadInput(f"{args.model_id}: cannot {purpose}, {which} is unusable ({loaded.placeholder_reason})")
    return manager, loaded, df


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from xray_ai.analysis import predict_probabilities
    from xray_ai.training.evaluation import evaluation_report

    manager, loaded, df = _model_and_dataset(args)
    if args.split:
        df = df[df["split"] == args.split].reset_index(drop=True)
    if df.empty:
        raise BadInput(f"{args.data}: no images{' in split ' + args.split if args.split else ''}")
    probs = _over_images(df["path"], lambda pixels: predict_probabilities(loaded, pixels))  # ensemble: members' mean
    metrics = evaluation_report(
        df["label"].to_numpy(), probs, loaded.entry.threshold, split=args.split or f"all of {args.data}",
        study_ids=df["study_id"].to_numpy(),
        body_parts=df["body_part"].to_numpy() if df["body_part"].notna().any() else None,
    )
    metrics["model_id"] = args.model_id
    if loaded.entry.is_ensemble:
        metrics["members"] = list(loaded.entry.members)
    if args.output:
        args.output.write_text(json.dumps(metrics, indent=2) + "\n")
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        ci = metrics.get("ci95", {})
        print(f"{args.model_id} on {args.data} ({metrics['n']} images, threshold {loaded.entry.threshold:.3f})")
        for name in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "kappa"):
            value = metrics.get(name)
            interval = f"  95% CI {ci[name][0]:.3f}-{ci[name][1]:.3f}" if name in ci else ""
            print(f"  {name:12s} {value if value is None else f'{value:.3f}'}{interval}")
    return EXIT_OK


def _cmd_explain_eval(args: argparse.Namespace) -> int:
    from xray_ai.explain.methods import explainer_for
    from xray_ai.explain.scores import evaluate_explanations, explain_json_path, format_table, lesion_cases, save

    manager, loaded, df = _model_and_dataset(args)
    if loaded.entry.is_ensemble:
        raise BadInput(f"{args.model_id}: explain-eval scores one model's heatmaps; run it on each ensemble member "
                       f"({', '.join(loaded.entry.members)})")
    split = "test" if (df["split"] == "test").any() else None
    rows = df[df["split"] == split] if split else df
    images, masks = lesion_cases(rows, loaded.entry.input, loaded.entry.preprocessing, limit=args.max_images)
    if not images:
        raise BadInput(f"{args.data}: no abnormal images with a non-empty <stem>_mask.png lesion mask")
    model = loaded.model
    report = evaluate_explanations(
        explainer_for(model), lambda b: model(b, training=False).numpy().reshape(-1), images, masks,
        args.methods, model_id=args.model_id,
        progress=lambda method, i: print(f"{method}: {i}/{len(images)}", file=sys.stderr, end="\r", flush=True),
    )
    report["split"] = split or "all"
    output = args.output or explain_json_path(loaded.entry.resolve_path(manager.registry.base_dir))
    save(report, output)
    print(format_table(report))
    print(f"saved {output}", file=sys.stderr)
    return EXIT_OK


def _cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from xray_ai.auth import ENV_VAR, hash_password

    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Administrator password: ")
        if getpass.getpass("Again: ") != password:
            raise BadInput("the two passwords differ")
    if not password:
        raise BadInput("the password must not be empty")
    print(hash_password(password))
    print(f"Set {ENV_VAR} to this value (or admin_password_hash in .streamlit/secrets.toml).", file=sys.stderr)
    return EXIT_OK


def _cmd_phantoms(args: argparse.Namespace) -> int:
    from xray_ai import phantoms

    return phantoms.run_cli(args)


# ---------------------------------------------------------------------------- main

_COMMANDS = {
    "predict": _cmd_predict,
    "registry": _cmd_registry,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "explain-eval": _cmd_explain_eval,
    "fit-input-check": _cmd_fit_input_check,
    "export-onnx": _cmd_export_onnx,
    "hash-password": _cmd_hash_password,
    "phantoms": _cmd_phantoms,
}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's banner off stderr
    logging.basicConfig(level=os.environ.get("XRAY_AI_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head` closed the pipe: not an error of ours
        # Python would complain again when it flushes stdout at exit; point it at devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    except Exception as exc:  # the CLI's last line of defence: one line, exit 1
        if os.environ.get("XRAY_AI_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc} (set XRAY_AI_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_INTERNAL
