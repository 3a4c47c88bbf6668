"""The engine-neutral steps of predict-batch: decode a study, run many studies' views through
one forward call, turn each study into its row.

1. `prepare_study` (in a worker: thread, process or Ray actor): load every file of a study
   (xray_ai.images.load_image) and prepare it for each model the study needs
   (`prepare_batch`, as analyze() does); a file that cannot be read makes the study an
   error that names it.
2. `Scorer` collects prepared studies and, once `batch_size` views are waiting, stacks them
   (from several studies; a study may straddle two calls) into one batch per model and
   calls the model's analyzer, whichever backend serves it (ONNX Runtime or TensorFlow).
   When all of a study's views have been through, `xray_ai.analysis.result_from_outputs`
   gives its AnalysisResult: the one analyze() gives for that study, since every step
   from the analyzer output on is analyze()'s own code.
3. `finish` writes the study's heatmaps, report and DICOM results if asked for, and returns
   its row (xray_ai.batch.rows).
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xray_ai.analysis import MAX_VIEWS, result_from_outputs, study_models
from xray_ai.batch.inputs import Study
from xray_ai.batch.outputs import OutputDirs, write_outputs
from xray_ai.batch.rows import error_row, result_row
from xray_ai.explain.base import GradCamOutput
from xray_ai.images import ImageLoadError, XRay, load_image
from xray_ai.registry import InputSpec, Registry
from xray_ai.result import AnalysisResult
from xray_ai.serving.manager import LoadedEnsemble, LoadedModel, ModelManager
from xray_ai.serving.preprocessing import prepare_batch

__all__ = ["ModelInput", "Prepared", "Scored", "Scorer", "model_inputs", "prepare_study", "finish"]

ModelInput = tuple[InputSpec, str]  # (input size, preprocessing) of one model, from its registry entry


@dataclass(frozen=True)
class Prepared:
    """A decoded study: its views and, per model of the study, the model-ready batch of them
    (float32 (n_views, H, W, C)); or the error that stopped it (the file and the reason)."""

    study: Study
    views: tuple[XRay, ...] = ()
    inputs: tuple[np.ndarray, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Scored:
    """A study's AnalysisResult, or why it has none."""

    study: Study
    result: AnalysisResult | None = None
    error: str | None = None


def model_inputs(loaded: LoadedModel | LoadedEnsemble) -> tuple[ModelInput, ...]:
    """What `prepare_study` needs to know of the models (picklable, for a process pool)."""
    return tuple((m.entry.input, m.entry.preprocessing) for m in study_models(loaded))


def prepare_study(study: Study, inputs: Sequence[ModelInput]) -> Prepared:
    """Load a study's files and prepare them for each model; never raises for a bad file."""
    if len(study.files) > MAX_VIEWS:  # analyze() refuses such a study: say so before decoding it
        return Prepared(study, error=f"study {study.study_id}: {len(study.files)} images given; "
                                     f"one study has at most {MAX_VIEWS} views")
    views = []
    for path in study.files:
        if not os.path.isfile(path):
            return Prepared(study, error=f"{path}: no such file")
        try:  # named by its path, as `predict PATH` names it (and the DICOM writer rereads the header there)
            views.append(load_image(path))
        except ImageLoadError as exc:  # names the file and the reason
            return Prepared(study, error=str(exc))
        except Exception as exc:  # the loader promises ImageLoadError only; one file never stops an archive run
            return Prepared(study, error=f"{path}: could not be read ({type(exc).__name__}: {exc})")
    batches = tuple(prepare_batch([v.pixels for v in views], spec, preprocessing) for spec, preprocessing in inputs)
    return Prepared(study, tuple(views), batches)


def _per_row(value) -> bool:
    """Whether an analyzer output's field holds one entry per view (arrays, the flags)."""
    return isinstance(value, (np.ndarray, tuple))


def _rows(out, start: int, stop: int):
    """The rows start..stop of an analyzer output (a GradCamOutput, or a measurement model's
    MeasurementOutput): every per-view field sliced, the rest (method, layer) kept."""
    return dataclasses.replace(out, **{f.name: getattr(out, f.name)[start:stop] for f in dataclasses.fields(out)
                                       if _per_row(getattr(out, f.name))})


def _join(parts: list):
    """The rows of several outputs of one analyzer, in order."""
    if len(parts) == 1:
        return parts[0]
    joined = {}
    for f in dataclasses.fields(parts[0]):
        value = getattr(parts[0], f.name)
        if isinstance(value, np.ndarray):
            joined[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
        elif isinstance(value, tuple):
            joined[f.name] = tuple(v for p in parts for v in getattr(p, f.name))
    return dataclasses.replace(parts[0], **joined)


class _Pending:
    """A prepared study whose views are (partly) still waiting for the forward pass."""

    def __init__(self, prepared: Prepared, n_models: int):
        self.prepared = prepared
        self.outputs: list[list[GradCamOutput]] = [[] for _ in range(n_models)]
        self.waiting = len(prepared.views)


class Scorer:
    """Runs the views of many studies through the models in batches of `batch_size` views.

    `add` takes prepared studies in any number and returns the studies it finished (an
    error at once; a result once all its views have been forwarded); `flush` runs what is
    left. Results come in the order the studies were added, errors as they arrive.
    """

    def __init__(self, manager: ModelManager, loaded: LoadedModel | LoadedEnsemble, registry: Registry,
                 batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.manager, self.loaded, self.registry = manager, loaded, registry
        self.models = study_models(loaded)
        self.batch_size = batch_size
        self._pending: deque[_Pending] = deque()
        self._queue: deque[tuple[_Pending, int, int]] = deque()  # (study, first view, count) not yet forwarded
        self._queued = 0
        self.forwarded_views = 0

    def add(self, prepared: Prepared) -> list[Scored]:
        if prepared.error is not None:
            return [Scored(prepared.study, error=prepared.error)]
        pending = _Pending(prepared, len(self.models))
        self._pending.append(pending)
        self._queue.append((pending, 0, pending.waiting))
        self._queued += pending.waiting
        done: list[Scored] = []
        while self._queued >= self.batch_size:
            done += self._forward(self.batch_size)
        return done

    def flush(self) -> list[Scored]:
        done: list[Scored] = []
        while self._queued:
            done += self._forward(min(self._queued, self.batch_size))
        return done

    def _forward(self, n: int) -> list[Scored]:
        """One analyzer call per model on the next `n` queued views, then the studies it completed."""
        segments = []
        while n:
            pending, start, count = self._queue.popleft()
            take = min(count, n)
            segments.append((pending, start, take))
            if take < count:  # the rest of this study goes into the next batch
                self._queue.appendleft((pending, start + take, count - take))
            n -= take
        self._queued -= sum(take for _, _, take in segments)
        for m, model in enumerate(self.models):
            parts = [p.prepared.inputs[m][start : start + take] for p, start, take in segments]
            batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
            out = model.analyzer(batch)
            offset = 0
            for pending, _, take in segments:
                pending.outputs[m].append(_rows(out, offset, offset + take))
                offset += take
        for pending, _, take in segments:
            pending.waiting -= take
        self.forwarded_views += sum(take for _, _, take in segments)
        done = []
        while self._pending and self._pending[0].waiting == 0:  # the queue is FIFO: studies finish in order
            pending = self._pending.popleft()
            outputs = [_join(parts) for parts in pending.outputs]
            result = result_from_outputs(pending.prepared.views, self.loaded, outputs, self.manager, self.registry)
            done.append(Scored(pending.prepared.study, result=result))
        return done


def finish(scored: Scored, entry, dirs: OutputDirs | None = None) -> dict:
    """The study's row; with `dirs`, its heatmaps, report and DICOM results written first."""
    if scored.result is None:
        return error_row(scored.study, scored.error or "unknown error", entry)
    outputs = write_outputs(scored.result, scored.study, dirs) if dirs is not None and dirs.any else None
    return result_row(scored.study, scored.result.to_json(), outputs)
