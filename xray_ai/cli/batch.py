"""`predict-batch`: score a whole archive (a folder, a MURA root or a CSV), one row per study.

The work is xray_ai.batch's; this module parses the arguments, turns bad input into exit 2,
draws the progress bar (tqdm, on stderr: studies done, ETA, images per second) and prints
the summary line. A bad file is an error row, never a stop (README, "Batch analysis").
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from xray_ai.cli.common import EXIT_OK, BadInput, add_registry_arg

__all__ = ["add_predict_batch_parser", "cmd_predict_batch"]


def _whole_number(minimum: int):
    """An argparse type: a whole number of at least `minimum`, with a message naming the rule."""
    rule = "at least 1" if minimum == 1 else f"{minimum} or more"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return parse


_positive, _count = _whole_number(1), _whole_number(0)


def add_predict_batch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict-batch", help="score every study of a folder or CSV: one row per study, resumable")
    p.add_argument("source", type=Path, metavar="INPUT",
                   help="a folder (DICOM grouped by StudyInstanceUID, PNG/JPEG by folder, MURA understood) "
                        "or a CSV with a file and a study column")
    p.add_argument("--condition", help="condition id (see `registry list`)")
    p.add_argument("--model", dest="model_id", help="a registered model id instead of the active one")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="FILE.csv or FILE.jsonl; rerunning with the same FILE skips the studies in it")
    p.add_argument("--heatmaps", type=Path, metavar="DIR", help="write each view's overlay PNG under DIR/<study>/")
    p.add_argument("--reports", type=Path, metavar="DIR", help="write each study's PDF report as DIR/<study>.pdf")
    p.add_argument("--dicom-out", type=Path, metavar="DIR",
                   help="write each study's DICOM results (Secondary Capture, Encapsulated PDF, SR) in DIR/<study>/")
    p.add_argument("--batch-size", type=_positive, default=16, metavar="N",
                   help="views per forward pass, from several studies (default 16)")
    p.add_argument("--workers", type=_count, default=2, metavar="N",
                   help="decoding workers beside the forward pass (local, default 2; 0: none), or actors (ray)")
    p.add_argument("--pool", choices=["thread", "process"], default="thread",
                   help="the local engine's decoding workers: threads (default) or processes")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (default): this machine; ray: Ray Data actors ($RAY_ADDRESS names a cluster)")
    p.add_argument("--backend", choices=["auto", "onnx", "tensorflow"], default=None,
                   help="as for predict: auto (default, or $XRAY_AI_BACKEND), onnx (export if needed), tensorflow")
    add_registry_arg(p)


def cmd_predict_batch(args: argparse.Namespace) -> int:
    from xray_ai.batch import BatchInputError, BatchJob, BatchRun
    from xray_ai.images import ImageLoadWarning
    from xray_ai.registry import RegistryError

    if args.condition is None and args.model_id is None:
        raise BadInput("give --condition ID or --model MODEL_ID (see `python -m xray_ai registry list`)")
    job = BatchJob(source=args.source, out=args.out, condition=args.condition, model_id=args.model_id,
                   registry=args.registry, backend=args.backend, heatmaps=args.heatmaps, reports=args.reports,
                   dicom_out=args.dicom_out, batch_size=args.batch_size, workers=args.workers, pool=args.pool,
                   engine=args.engine)
    try:
        run = BatchRun(job)
    except (BatchInputError, RegistryError, ValueError) as exc:  # RegistryError is a ValueError too
        raise BadInput(str(exc)) from None
    try:
        if job.engine == "local":
            _warn_about_model(run.load())
        # Image warnings are in each row's `warnings`; printed, thousands would bury the bar.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ImageLoadWarning)
            summary = run.execute(on_row=_progress(len(run.todo)))
    except BatchInputError as exc:  # --engine ray without Ray
        raise BadInput(str(exc)) from None
    finally:
        run.close()
    print(summary.line())
    return EXIT_OK


def _warn_about_model(loaded) -> None:
    if loaded.placeholder:
        print(f"warning: PLACEHOLDER MODEL - NOT A DIAGNOSTIC RESULT: {loaded.placeholder_reason}", file=sys.stderr)
    for model in getattr(loaded, "members", (loaded,)):
        if model.backend != "onnxruntime" and model.backend_reason:
            print(f"note: TensorFlow serves {model.entry.id} ({model.backend_reason})", file=sys.stderr)


def _progress(total: int):
    """on_row for BatchRun.execute: a tqdm bar of studies, with images per second."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="study", desc="predict-batch", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    start, images = time.perf_counter(), 0

    def on_row(row: dict) -> None:
        nonlocal images
        images += int(row.get("n_views") or 0)
        bar.update(1)
        bar.set_postfix_str(f"{images / max(time.perf_counter() - start, 1e-9):.1f} images/s", refresh=False)
        if bar.n >= total:
            bar.close()

    return on_row
