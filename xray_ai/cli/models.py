"""The model commands: `train`, `evaluate`, `fit-input-check`, `explain-eval`, `export-onnx`.

Each imports what it needs (tensorflow, pandas, the trainer) inside its function: the parser
is built for every command, `--help` and `phantoms` included, and importing tensorflow there
would cost seconds for nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from xray_ai.cli.common import EXIT_OK, BadInput, add_registry_arg
from xray_ai.explain.base import METHODS  # numpy only

__all__ = [
    "add_export_onnx_parser",
    "add_training_parsers",
    "cmd_train",
    "cmd_evaluate",
    "cmd_fit_input_check",
    "cmd_explain_eval",
    "cmd_export_onnx",
]


def add_export_onnx_parser(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export-onnx", help="build the ONNX Runtime exports of registered models ahead of time")
    x.add_argument("model_ids", nargs="*", metavar="MODEL_ID", help="default: every model whose file verifies")
    x.add_argument("--force", action="store_true", help="re-export even when a verified export exists")
    x.add_argument("--ship", action="store_true",
                   help="write each export beside its model file (models/<id>.onnx) and pin it in the registry "
                        "entry's `onnx` field, so that a fresh checkout serves it without TensorFlow")
    add_registry_arg(x)


def add_training_parsers(sub: argparse._SubParsersAction) -> None:
    """train, evaluate, fit-input-check and explain-eval, in the order `--help` lists them."""
    t = sub.add_parser("train", help="train, evaluate and optionally register a model")
    t.add_argument("--task", choices=["classify", "ctr"], default="classify",
                   help="classify (default): a classifier; ctr: the cardiothoracic-ratio segmentation model of "
                        "cardiomegaly (a `measurement` model; --data: a chest phantom dataset with outlines)")
    t.add_argument("--protocol", choices=["quick", "intensive"], default="quick")
    t.add_argument("--condition", required=True)
    t.add_argument("--arch", help="densenet121, mobilenetv2 (or another backbone of xray_ai.training.architectures); "
                                  "required for --task classify")
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
    t.add_argument("--train-images", type=int, metavar="N",
                   help="--task ctr: fit on the first N training images only (to fit a CPU budget)")
    t.add_argument("--initial-model", type=Path, metavar="MODEL.keras",
                   help="start from this saved classifier instead of --weights; with --epochs 0, only "
                        "calibrate, choose the operating point, evaluate and register it (a model fitted "
                        "by models/fit_on_gpu.py); with epochs, fit it further, at another --image-size if "
                        "asked (its --weights then say where its backbone started, for the record)")
    add_registry_arg(t)

    e = sub.add_parser("evaluate", help="evaluate a registered model on a dataset")
    e.add_argument("--model", dest="model_id", required=True)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--layout", choices=["mura", "folders"], default="folders")
    e.add_argument("--split", default=None, help="evaluate only this split (default: all images)")
    e.add_argument("--output", type=Path, help="write the metrics JSON here")
    e.add_argument("--json", action="store_true")
    add_registry_arg(e)

    fi = sub.add_parser("fit-input-check",
                        help="fit a model's input check (is an image like its training images?) on its data")
    fi.add_argument("--model", dest="model_id", required=True)
    fi.add_argument("--data", type=Path, required=True,
                    help="the model's training data (or data like it): fitted on its train split, "
                         "the threshold set on its valid split")
    fi.add_argument("--layout", choices=["mura", "folders"], default="folders")
    fi.add_argument("--percentile", type=float, default=None,
                    help="share of valid images (in %%) below the threshold (default 99.5)")
    add_registry_arg(fi)

    x = sub.add_parser("explain-eval", help="score every heatmap method and layer on lesion masks; choose a "
                                            "model's default heatmap on its validation split")
    x.add_argument("--model", dest="model_id", required=True)
    x.add_argument("--data", type=Path, required=True, help="a dataset with <stem>_mask.png lesion masks (phantoms)")
    x.add_argument("--layout", choices=["mura", "folders"], default="folders")
    x.add_argument("--split", choices=["valid", "test", "all"],
                   help="valid: choose the default heatmap (every CAM method x layer, pointing game within 15 px); "
                        "test (default where there is one): the full table; all: every image")
    x.add_argument("--methods", nargs="+", metavar="METHOD",
                   help=f"what to score on the test split: methods of the table ({', '.join(METHODS)}) and CAM "
                        "settings such as layercam@16 or hirescam@16+8 (default: every method but 'default', "
                        "and every setting)")
    x.add_argument("--max-images", type=int, default=40, help="abnormal images to use (default 40; 0: all)")
    x.add_argument("--faithfulness-images", type=int,
                   help="deletion/insertion on the first N of them only (default: all of them)")
    x.add_argument("--lime-images", type=int, default=40, help="LIME on the first N only (default 40)")
    x.add_argument("--write-registry", action="store_true",
                   help="valid: write the chosen default into the model's registry entry (`heatmap`); "
                        "test: add the default's test figures to it")
    x.add_argument("--output", type=Path, help="JSON file (default: <model file>.explain.json beside the model, "
                                               "<model file>.heatmap-choice.json for --split valid)")
    add_registry_arg(x)


def cmd_train(args: argparse.Namespace) -> int:
    from xray_ai.registry import RegistryError
    from xray_ai.training.architectures import BACKBONES
    from xray_ai.training.weights import WeightsUnavailableError
    from xray_ai.training.trainer import TrainConfig, train

    if not args.data.is_dir():
        raise BadInput(f"{args.data}: no such dataset folder")
    if args.activate and not args.register:
        raise BadInput("--activate needs --register")
    if args.task == "ctr":
        return _train_ctr(args)
    if args.arch not in BACKBONES:
        raise BadInput(f"--arch {args.arch}: unknown; valid: {', '.join(sorted(BACKBONES))}")
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


def _train_ctr(args: argparse.Namespace) -> int:
    """train --task ctr (xray_ai.training.ctr_train)."""
    from xray_ai.registry import RegistryError
    from xray_ai.measurement.network import ARCHITECTURE
    from xray_ai.training.ctr_train import train_ctr
    from xray_ai.training.trainer import TrainConfig

    config = TrainConfig(
        condition=args.condition, architecture=ARCHITECTURE, data=args.data, protocol=args.protocol,
        layout="folders", out=args.out, registry=args.registry, register=args.register, activate=args.activate,
        epochs=args.epochs, patience=args.patience, image_size=args.image_size, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, model_id=args.model_id)
    try:
        run = train_ctr(config, train_images=args.train_images)
    except (RegistryError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    m = run.metrics["measurement"]
    print(json.dumps({"model_id": run.model_id, "path": str(run.path), "sha256": run.sha256, "kind": "measurement",
                      "ctr_mae": m["ctr_mae"], "bland_altman_bias": (m["bland_altman"] or {}).get("bias"),
                      "dice_heart": m["dice_heart"], "dice_thorax": m["dice_thorax"], "auc": run.metrics.get("auc"),
                      "kappa": run.metrics.get("kappa"), "epochs_run": run.record["epochs_run"],
                      "seconds": run.record["seconds"], "split": run.metrics.get("split")}, indent=2))
    return EXIT_OK


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from xray_ai.registry import RegistryError
    from xray_ai.serving.manager import ModelManager
    from xray_ai.serving.verify import check_model_file

    try:
        manager = ModelManager(args.registry, backend="auto", warm_up=False)
        registry = manager.registry
        for model_id in args.model_ids:
            registry.model(model_id)  # unknown ids are bad input, before any slow export
    except (RegistryError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    named = bool(args.model_ids)
    failed = []
    print("ONNX exports: beside each model file, pinned in the registry" if args.ship
          else f"ONNX export cache: {manager.onnx_cache}")
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
            path = manager.export_onnx(model_id, force=args.force, ship=args.ship)
        except (ValueError, RuntimeError, OSError) as exc:  # UnsupportedHead is a ValueError
            print(f"{model_id}: not exported, {exc}; TensorFlow serves it")
            failed.append(model_id)
            continue
        print(f"{model_id}: {path} ({time.perf_counter() - start:.1f} s)")
    if named and failed:
        raise BadInput(f"not exported: {', '.join(failed)}")
    return EXIT_OK


def cmd_fit_input_check(args: argparse.Namespace) -> int:
    from xray_ai.analysis import pooled_features
    from xray_ai.serving.artifacts import input_check_path
    from xray_ai.serving.forward import over_image_files
    from xray_ai.serving.input_check import DEFAULT_PERCENTILE, save
    from xray_ai.training.features import fit_input_check

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
        return over_image_files(part["path"], lambda pixels: pooled_features(loaded, pixels))

    try:
        distribution = fit_input_check(features, parts["train"], parts["valid"], loaded.entry.sha256, args.data.name,
                                       percentile=percentile)
    except ValueError as exc:
        raise BadInput(f"{args.model_id}: {exc}") from None
    path = save(distribution, input_check_path(loaded.entry.resolve_path(manager.registry.base_dir)))
    print(f"{args.model_id}: input check fitted on {distribution.n_fit} images, threshold {distribution.threshold:.3f} "
          f"(the {percentile:g}th percentile of {distribution.n_calibration} valid images) -> {path}")
    return EXIT_OK


def _model_and_dataset(args: argparse.Namespace, purpose: str = "evaluate"):
    """(manager, loaded model, dataset frame) for evaluate, explain-eval and fit-input-check;
    BadInput, naming `purpose`, when unusable."""
    from xray_ai.registry import RegistryError
    from xray_ai.serving.manager import ModelManager
    from xray_ai.training.datasets import read_dataset

    try:
        manager = ModelManager(args.registry)
        loaded = manager.get(model_id=args.model_id)
        condition = manager.registry.condition(loaded.entry.condition)
        df = read_dataset(args.layout, args.data, condition.negative_label, condition.positive_label)
    except (RegistryError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    if loaded.placeholder:
        which = "a member's model file" if loaded.entry.is_ensemble else "the model file"
        raise BadInput(f"{args.model_id}: cannot {purpose}, {which} is unusable ({loaded.placeholder_reason})")
    return manager, loaded, df


def cmd_evaluate(args: argparse.Namespace) -> int:
    from xray_ai.analysis import predict_probabilities
    from xray_ai.serving.forward import over_image_files
    from xray_ai.training.evaluation import evaluation_report

    manager, loaded, df = _model_and_dataset(args)
    if args.split:
        df = df[df["split"] == args.split].reset_index(drop=True)
    if df.empty:
        raise BadInput(f"{args.data}: no images{' in split ' + args.split if args.split else ''}")
    probs = over_image_files(df["path"], lambda pixels: predict_probabilities(loaded, pixels))  # ensemble: members' mean
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


def cmd_explain_eval(args: argparse.Namespace) -> int:
    from xray_ai.cli.explain_eval import run_explain_eval

    manager, loaded, df = _model_and_dataset(args)
    return run_explain_eval(args, manager, loaded, df)
