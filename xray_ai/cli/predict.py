"""`predict`: score one study (its views), explain it, and write the overlay, report or JSON.

Everything heavier than argparse is imported inside the functions: the parser is built for
every command, including `--help`, and must not load tensorflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from xray_ai.cli.common import EXIT_OK, BadInput, add_registry_arg
from xray_ai.explain.base import DEFAULT_METHOD, METHODS  # numpy only

__all__ = ["add_predict_parser", "cmd_predict", "summary"]


def _intensity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"intensity must be a number in 0..1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"intensity must be in 0..1, got {value}")
    return value


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score one study (several images = its views) and explain it")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG, JPEG or DICOM files")
    p.add_argument("--condition", help="condition id (see `registry list`)")
    p.add_argument("--model", dest="model_id", help="a registered model id instead of the active one")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                   help=f"heatmap method (default {DEFAULT_METHOD!r}: the model's own, chosen on its validation split "
                        "and named in its registry entry, else Grad-CAM; the others run on TensorFlow after the "
                        "scoring pass)")
    p.add_argument("--heatmap", type=Path, help="write the overlay PNG here (one per view: NAME_viewN.png)")
    p.add_argument("--intensity", type=_intensity, default=0.5, help="heatmap intensity 0..1 (default 0.5)")
    p.add_argument("--no-annotations", action="store_true", help="overlay without the automatic finding box")
    p.add_argument("--report", type=Path, help="write the PDF report here")
    p.add_argument("--include-patient", action="store_true", help="put DICOM patient fields in the report")
    p.add_argument("--dicom-out", type=Path, metavar="DIR",
                   help="write DICOM results for the source study here: a Secondary Capture per DICOM view, "
                   "the report as Encapsulated PDF, a Structured Report (README, \"Connecting to PACS\")")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument(
        "--backend",
        choices=["auto", "onnx", "tensorflow"],
        default=None,
        help="auto (default, or $XRAY_AI_BACKEND): ONNX Runtime when the model's export exists, else "
        "TensorFlow; onnx: export now if needed; tensorflow: never ONNX Runtime",
    )
    add_registry_arg(p)


def _load_images(paths: Sequence[Path]):
    from xray_ai.images import ImageLoadError, load_image

    images = []
    for path in paths:
        if not path.is_file():
            raise BadInput(f"{path}: no such file")
        try:
            images.append(load_image(path))
        except ImageLoadError as exc:
            raise BadInput(str(exc)) from None
    return images


def cmd_predict(args: argparse.Namespace) -> int:
    from xray_ai.analysis import analyze
    from xray_ai.registry import RegistryError
    from xray_ai.serving.manager import ModelManager

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
    if args.dicom_out:
        _write_dicom(result, args)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(summary(result))
    return EXIT_OK


def _write_dicom(result, args: argparse.Namespace) -> None:
    from xray_ai.outputs.dicom_results import write_dicom_objects
    from xray_ai.outputs.report import build_report

    pdf = build_report(result, include_patient=args.include_patient, intensity=args.intensity)
    try:
        paths = write_dicom_objects(result, args.dicom_out, pdf, pdf_prints_patient=args.include_patient)
    except ValueError as exc:  # no DICOM view, views of several studies, a changed file
        raise BadInput(f"--dicom-out {args.dicom_out}: {exc}") from None
    print(f"wrote {len(paths)} DICOM objects to {args.dicom_out}", file=sys.stderr)


def _write_overlays(result, target: Path, intensity: float, annotate: bool) -> None:
    from PIL import Image

    from xray_ai.outputs.view_overlay import view_overlay

    for i, view in enumerate(result.views, start=1):
        rgb = view_overlay(result, view, intensity=intensity, annotate=annotate)  # at the image's resolution
        out = target if len(result.views) == 1 else target.with_name(f"{target.stem}_view{i}{target.suffix}")
        Image.fromarray(rgb).save(out)


def summary(result) -> str:
    """The text `predict` prints without --json: result, provenance, warnings, disclaimer.
    A measurement model's result leads with its ratio, the rule and the widths; its probability
    (the ratio's calibration) follows on the next line."""
    from xray_ai.outputs.measurement_display import ctr_headline, view_ctr_text, widths_text

    lines = []
    if result.placeholder:
        lines.append("*** PLACEHOLDER MODEL - NOT A DIAGNOSTIC RESULT ***")
    measured = result.kind == "measurement"
    if measured and result.assessable:
        widths = widths_text(result)
        lines += [f"{result.condition_name}: {ctr_headline(result)}" + (f"; {widths}" if widths else ""),
                  f"  calibrated probability {result.probability:.3f} (threshold {result.threshold:.3f}: "
                  f"{result.threshold_method})"]
    elif result.assessable:
        lines.append(f"{result.condition_name}: {result.decision} (probability {result.probability:.3f}, "
                     f"threshold {result.threshold:.3f}: {result.threshold_method})")
    else:
        lines.append(f"{result.condition_name}: NOT ASSESSABLE (model output {result.probability:.3f}, "
                     "unreliable for these images)")
        if measured:
            lines.append(f"  {ctr_headline(result)}")
        lines += [f"  out of scope: {reason}" for reason in result.scope_reasons]
    lines += [
        f"model {result.model_id} v{result.model_version} ({result.architecture}, {result.profile}); "
        f"trained on {result.trained_on}",
        f"intended use: {result.intended_use}",
        (f"heatmap: {result.heatmap_method} at {result.target_layer}" if result.target_layer
         else f"heatmap: {result.heatmap_method}") + f"; backend {result.backend}",
        f"input check: {result.input_check_summary}",
    ]
    if result.body_part_summary:
        lines.append(f"body part: {result.body_part_summary}")
    if result.members:
        lines.append(f"ensemble: mean of {', '.join(result.members)}")
    if len(result.views) > 1:
        lines += [f"  view {v.filename}: " + (f"{view_ctr_text(v)}, " if measured else "") + f"{v.probability:.3f}"
                  + ("" if v.assessable else " (out of scope, not counted)") for v in result.views]
    lines += [f"warning: {w}" for w in result.warnings]
    lines.append("Decision support only, not a diagnosis: a clinician decides.")
    return "\n".join(lines)
