"""`train(config)`: the whole run that `python -m xray_ai train` starts, step by step.

Read the dataset (MURA layout or class folders) and split it by patient when it has no
validation split (`datasets`, `splits`); build the flat classifier with its training-only
heads (`heads`: lesion-mask supervision, the body-part head) and fit it with the protocol's
optimiser, callbacks and class weights (`fitting`; protocols in `config`); fold a
temperature fitted on validation into the model (`temperature`); choose the operating point
on the *validation* split only and measure on the test split, falling back to validation
and saying so (`held_out`); where the images have lesion masks, choose the default heatmap
(CAM method and layers) on the validation split too (`held_out.choose_default_heatmap`); save the `.keras` file and its side files, the input check
among them (`saving`); and, when asked, register and activate it (`registration`).

With `config.initial_model` the run starts from a saved classifier (`initial_model`); with
epochs 0 as well, a model fitted elsewhere (models/fit_on_gpu.py) goes through every step
after the fit.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from xray_ai.registry import InputSpec, load_registry
from xray_ai.training.config import TrainConfig, TrainOutcome, run_settings
from xray_ai.training.datasets import read_dataset
from xray_ai.training.fitting import build_for_training, fit_with_pipeline, training_record, training_summary
from xray_ai.training.heads import Heads, body_part_head_of, body_parts_of, lesion_weight_for
from xray_ai.training.held_out import choose_default_heatmap, choose_operating_point, evaluate_held_out
from xray_ai.training.initial_model import initial_body_part_head, read_fit_record
from xray_ai.training.registration import register_model
from xray_ai.training.saving import default_model_id, save_input_check, save_model
from xray_ai.training.splits import class_weights, oversample_minority, split_dataset
from xray_ai.training.temperature import calibrate

# TrainConfig and TrainOutcome (defined in config, which every step reads) are train's
# argument and result, so they are importable with it: `from ...trainer import TrainConfig, train`.
__all__ = ["train", "TrainConfig", "TrainOutcome"]


def _say(stream: Any, text: str) -> None:
    print(text, file=stream, flush=True)


def _describe_heads(heads: Heads, stream: Any) -> None:
    if heads.grid:
        _say(stream, f"lesion-mask supervision: weight {heads.lesion_weight:g}, {heads.grid[0]}x{heads.grid[1]} grid")
    if heads.body_parts:
        _say(stream, f"body-part head: weight {heads.body_part_weight:g}, {', '.join(heads.body_parts)}")


def train(config: TrainConfig, stream: Any = None) -> TrainOutcome:
    """Train, evaluate, save and (optionally) register one model. See the module docstring.

    Progress goes to `stream` (default: standard error), one line per epoch.
    """
    stream = stream or sys.stderr
    protocol, epochs, batch_size, learning_rate = run_settings(config)
    registry = load_registry(config.registry)
    condition = registry.condition(config.condition)
    df = read_dataset(config.layout, config.data, condition.negative_label, condition.positive_label)
    parts = split_dataset(df, config.seed)
    train_df = oversample_minority(parts["train"], config.seed) if config.oversample else parts["train"]
    spec = InputSpec(config.image_size, config.image_size, 3)
    _say(stream, f"data: train {len(train_df)} ({int(train_df['label'].sum())} positive), valid {len(parts['valid'])}, "
                 f"test {len(parts['test'])} images")

    fit_record = read_fit_record(config, parts) if config.initial_model is not None else None
    lesion_weight = lesion_weight_for(config, train_df)
    model, fit_model, heads = build_for_training(config, spec, lesion_weight,
                                                 body_parts_of(train_df, config.body_part_weight))
    _describe_heads(heads, stream)
    weights = class_weights(train_df["label"])
    if epochs == 0:
        history, done, seconds = {}, 0, 0.0
        _say(stream, f"no fitting (--epochs 0): evaluating {config.initial_model} as it is")
    else:
        history, done, seconds = fit_with_pipeline(
            model, fit_model, heads, train_df, parts["valid"], spec, config=config, protocol=protocol, epochs=epochs,
            batch_size=batch_size, learning_rate=learning_rate, class_weight=weights, stream=stream)
    part_head = body_part_head_of(fit_model, heads) if epochs else initial_body_part_head(config.initial_model)

    calibration = calibrate(model, parts["valid"], spec, batch_size)
    point = choose_operating_point(calibration.y_valid, calibration.p_valid)
    metrics = evaluate_held_out(model, parts, spec, batch_size, calibration, point, seed=config.seed,
                                part_head=part_head)
    metrics["training"] = training_record(config, epochs, training_summary(
        config, protocol, epochs_run=done, batch_size=batch_size, learning_rate=learning_rate, seconds=seconds,
        train_images=len(train_df), valid_images=len(parts["valid"]), class_weights=weights,
        augmentation="seeds' defaults" if config.augment else "none", heads=heads), fit_record)
    heatmap = choose_default_heatmap(model, parts, spec, data=Path(config.data).name)
    if heatmap is not None:
        metrics["heatmap"] = heatmap.to_json()  # in <id>.metrics.json too, registered or not
        _say(stream, f"default heatmap (chosen on validation): {heatmap.label}, pointing game within 15 px "
                     f"{heatmap.provenance['pointing_game_tolerant']:.2f}; contour level {heatmap.contour_level}")

    model_id = config.model_id or default_model_id(config, protocol)
    path = Path(config.out) / f"{model_id}.keras"
    sha = save_model(model, path, metrics, part_head, stream)
    _say(stream, f"saved {path} (sha256 {sha[:12]}...); threshold {point.threshold:.3f} ({point.method}); "
                 f"{metrics['split']} AUC {metrics.get('auc')}")
    save_input_check(model, parts, spec, path, sha, Path(config.data).name, stream)
    if config.register:
        register_model(config, registry, model_id=model_id, path=path, sha256=sha, spec=spec,
                       profile=protocol.profile, point=point, metrics=metrics,
                       fit_record=fit_record if epochs == 0 else None, heatmap=heatmap)
    return TrainOutcome(model_id, path, sha, point.threshold, point.method, metrics, seconds, done, history)
