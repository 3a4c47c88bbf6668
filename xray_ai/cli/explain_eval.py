"""`explain-eval`: how far to trust a model's heatmaps, and which one it shows by default.

- `--split valid`: every CAM method x layer setting (xray_ai.explain.choose) scored on the
  validation split's abnormal images; the one with the best pointing game within 15 px is
  the model's default, with the contour level that outlines the lesions best;
  `--write-registry` records it as the entry's `heatmap` field.
- `--split test` (the default where there is one): the table of every method of the
  table and every setting (pointing strict and within 15 px, energy inside, deletion /
  insertion, ms per image), saved beside the model file for the performance page;
  `--write-registry` adds the default's test figures to its `heatmap` field.

The data must be the model's own (the phantoms it was trained on, regenerated with the same
seed): the split sizes are checked against the entry's training record, and a choice is
never written from data that does not match it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from xray_ai.cli.common import EXIT_OK, BadInput

__all__ = ["run_explain_eval", "data_mismatch"]

# The table's CAM methods and the settings they compute (xray_ai.explain.cam_family).
_ALIASES = {"gradcam": "gradcam@32", "hirescam": "hirescam@16", "layercam": "layercam@16",
            "layercam-fusion": "layercam@16+8"}


def data_mismatch(entry: Any, df: Any) -> str | None:
    """Why `df` (a dataset frame) is not the data the entry records it was trained and tested
    on, judged by its split sizes; None when they match or the entry records none."""
    metrics = dict(entry.metrics)
    training = metrics.get("training") or {}
    expected = {"train": training.get("train_images"), "valid": training.get("valid_images"),
                "test": metrics.get("n") if metrics.get("split") == "test" else None}
    counts = df["split"].value_counts().to_dict()
    wrong = [f"{split} {counts.get(split, 0)} (recorded {n})" for split, n in expected.items()
             if n is not None and counts.get(split, 0) != n]
    return f"split sizes differ from the model's training record: {', '.join(wrong)}" if wrong else None


def run_explain_eval(args: argparse.Namespace, manager: Any, loaded: Any, df: Any) -> int:
    """The command, given the model and the dataset frame (cli.models._model_and_dataset)."""
    from xray_ai.explain.evaluate import lesion_cases

    entry = loaded.entry
    if entry.is_ensemble:
        raise BadInput(f"{args.model_id}: explain-eval scores one model's heatmaps; run it on each ensemble member "
                       f"({', '.join(entry.members)})")
    split = args.split or ("test" if (df["split"] == "test").any() else "all")
    rows = df if split == "all" else df[df["split"] == split]
    if rows.empty:
        raise BadInput(f"{args.data}: no images in the {split} split")
    mismatch = data_mismatch(entry, df)
    if mismatch:
        print(f"warning: {args.data}: {mismatch}; this may not be the model's own data", file=sys.stderr)
        if args.write_registry:
            raise BadInput(f"{args.data}: not writing to the registry: {mismatch}")
    limit = None if args.max_images == 0 else args.max_images
    images, masks = lesion_cases(rows, entry.input, entry.preprocessing, limit=limit)
    if not images:
        raise BadInput(f"{args.data}: no abnormal images with a non-empty <stem>_mask.png lesion mask in split {split}")
    data = f"{entry.trained_on.describe()}; {split} split of {args.data.name}, {len(images)} abnormal images"
    model_path = entry.resolve_path(manager.registry.base_dir)
    if split == "valid":
        return _choose(args, manager, loaded, images, masks, data, model_path)
    if split != "test" and args.write_registry:
        raise BadInput("--write-registry needs --split valid (choose) or --split test (its test figures)")
    return _table(args, manager, loaded, images, masks, split, model_path)


def _progress(key: str, i: int | None = None) -> None:
    print(f"{key}: {i}" if i is not None else f"{key}...", file=sys.stderr, end="\r", flush=True)


def _choose(args, manager, loaded, images, masks, data: str, model_path: Path) -> int:
    from xray_ai.explain.choose import choose_heatmap
    from xray_ai.explain.evaluate import choice_json_path, save

    spec, report = choose_heatmap(loaded.model, images, masks, data=data, progress=_progress)
    report.update(model_id=args.model_id, split="valid", heatmap=spec.to_json())
    output = args.output or choice_json_path(model_path)
    save(report, output)
    print(f"{args.model_id}: {len(images)} abnormal validation images with lesion masks")
    print(f"{'setting':16s} {'pointing':>9s} {'<=15px@224':>10s} {'energy in':>10s}")
    for key, r in report["settings"].items():
        mark = " *" if key == report["chosen"] else ""
        print(f"{key + mark:16s} {r['pointing_game']:9.3f} {r['pointing_game_tolerant']:10.3f} {r['energy_inside']:10.3f}")
    print(f"* chosen: {spec.label}; contour level {spec.contour_level} (region Dice "
          f"{spec.provenance['contour_dice']:.3f})")
    print(f"saved {output}", file=sys.stderr)
    if args.write_registry:
        _write(manager, args.model_id, spec, "explain-eval --split valid --write-registry")
    return EXIT_OK


def _table(args, manager, loaded, images, masks, split: str, model_path: Path) -> int:
    import tensorflow as tf

    from xray_ai.explain.base import DEFAULT_METHOD, METHODS
    from xray_ai.explain.choose import candidate_settings, setting_key, with_test_figures
    from xray_ai.explain.evaluate import evaluate_explanations, explain_json_path, format_table, save
    from xray_ai.explain.cam_math import HeatmapSpec
    from xray_ai.explain.gradcam import find_target_layer, layers_by_stride
    from xray_ai.explain.methods import explainer_for

    entry, model = loaded.entry, loaded.model
    try:
        by_stride = layers_by_stride(model)
    except ValueError:  # no static input size: the table methods only
        by_stride = {}
    settings = candidate_settings(by_stride) if by_stride else {}
    strides = {path: s for s, path in by_stride.items()}
    if args.methods:  # table methods and settings, as named
        if entry.heatmap is not None:
            settings.setdefault(setting_key(entry.heatmap, strides), entry.heatmap)
        unknown = [m for m in args.methods if m not in METHODS and m not in settings]
        if unknown:
            raise BadInput(f"--methods {' '.join(unknown)}: unknown; valid: {', '.join(METHODS)}, "
                           f"and this model's settings {', '.join(settings)}")
        methods = [m for m in args.methods if m in METHODS]
        settings = {k: v for k, v in settings.items() if k in args.methods}
    else:  # every method, but not twice: the table's CAM rows are settings (gradcam = gradcam@32, ...)
        methods = [m for m in METHODS if m != DEFAULT_METHOD and _ALIASES.get(m) not in settings]
        if entry.heatmap is not None:
            settings.setdefault(setting_key(entry.heatmap, strides), entry.heatmap)
    shown = entry.heatmap or HeatmapSpec("gradcam", (find_target_layer(model),))
    default = "gradcam" if entry.heatmap is None and "gradcam" in methods else setting_key(shown, strides)
    forward = tf.function(lambda b: model(b, training=False), reduce_retracing=True)
    report = evaluate_explanations(
        explainer_for(model, entry.heatmap), lambda b: forward(tf.constant(b)).numpy().reshape(-1), images, masks,
        methods, model_id=args.model_id, settings=settings, faithfulness_images=args.faithfulness_images,
        limits={"lime": args.lime_images}, threshold=entry.threshold, progress=_progress)
    report.update(split=split, default=default if default in report["methods"] else None,
                  layers_by_stride={str(s): p for s, p in by_stride.items()})
    output = args.output or explain_json_path(model_path)
    save(report, output)
    print(format_table(report))
    print(f"saved {output}", file=sys.stderr)
    if args.write_registry:
        if entry.heatmap is None or report["default"] is None:
            raise BadInput(f"{args.model_id}: no default heatmap in its entry to add test figures to "
                           "(choose one first: --split valid --write-registry)")
        row = report["methods"][report["default"]]
        _write(manager, args.model_id, with_test_figures(entry.heatmap, row, row["n"]),
               "explain-eval --split test --write-registry")
    return EXIT_OK


def _write(manager, model_id: str, spec, action: str) -> None:
    from xray_ai.registry import RegistryError, edit_registry

    def edit(current):
        return current.with_model(dataclasses.replace(current.model(model_id), heatmap=spec))

    try:
        changes = edit_registry(manager.registry.path, edit, action=action)
    except RegistryError as exc:
        raise BadInput(str(exc)) from None
    print(f"{manager.registry.path}: {model_id} heatmap {'written' if changes else 'unchanged'}", file=sys.stderr)
