"""The local engine: decoding in a pool of workers overlaps the forward passes in this process.

The main thread keeps a window of studies submitted to the pool (about four batches of
views ahead, so the pool never waits for the forward pass and memory stays bounded), takes
them back in order, and feeds them to the Scorer, whose analyzer call (ONNX Runtime or
TensorFlow) releases the GIL while the workers decode the next studies. With outputs to
write (overlays, reports, DICOM), those are written by the pool too, and rows are yielded
in study order.

Workers: threads by default (`pool="thread"`): the decoders (Pillow, pydicom's native
codecs, OpenCV, NumPy) release the GIL for most of their work and nothing is copied between
processes. `pool="process"` uses spawned processes instead (each imports only the image
side). `workers=0` decodes in the main thread (no overlap; what a Ray actor does).
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from xray_ai.batch.core import ModelInput, Prepared, Scorer, finish, model_inputs, prepare_study
from xray_ai.batch.inputs import Study
from xray_ai.batch.outputs import OutputDirs
from xray_ai.images import ImageLoadWarning
from xray_ai.registry import Registry
from xray_ai.serving.manager import LoadedEnsemble, LoadedModel, ModelManager

__all__ = ["POOLS", "score_local"]

POOLS = ("thread", "process")
_AHEAD_BATCHES = 4  # views decoded ahead of the forward pass, in batches


class _Inline(Executor):
    """An executor that runs each call at once in the calling thread (workers=0)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def _quiet_worker() -> None:
    """A spawned worker does not see the parent's warning filters: image warnings are in
    each row already (the result's `warnings`), printed they would bury the progress bar."""
    warnings.filterwarnings("ignore", category=ImageLoadWarning)


def _executor(workers: int, pool: str) -> Executor:
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}: expected one of {', '.join(POOLS)}")
    if workers == 0:
        return _Inline()
    if pool == "thread":
        return ThreadPoolExecutor(workers, thread_name_prefix="xray-batch")
    # spawn, not fork: this process already runs ONNX Runtime's or TensorFlow's threads
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker)


def score_local(studies: Sequence[Study], manager: ModelManager, loaded: LoadedModel | LoadedEnsemble,
                registry: Registry, *, batch_size: int = 16, workers: int = 2, pool: str = "thread",
                dirs: OutputDirs | None = None) -> Iterator[dict]:
    """Score the studies; yields one row per study (xray_ai.batch.rows), in study order.

    Args:
        studies: what to score (xray_ai.batch.inputs.find_studies).
        manager, loaded, registry: the manager, what its `get` returned, the registry it read.
        batch_size: views per analyzer call (from several studies).
        workers: decoding workers (0: decode in this thread).
        pool: "thread" or "process" (module docstring).
        dirs: where to write overlays, reports and DICOM results; None: nowhere.
    """
    scorer = Scorer(manager, loaded, registry, batch_size)
    inputs: tuple[ModelInput, ...] = model_inputs(loaded)
    entry = loaded.entry
    writes = dirs is not None and dirs.any
    ahead = max(_AHEAD_BATCHES * batch_size, 2 * workers)
    decoder = _executor(workers, pool)
    # outputs (PIL, reportlab, pydicom) are written by threads even with a process pool: the
    # results hold the images and heatmaps, which a process would need copied back
    writer = (_executor(max(1, workers), "thread") if writes and pool == "process" else decoder) if writes else None
    todo = iter(studies)
    window: deque[tuple[Future, int]] = deque()
    rows: deque[Future] = deque()
    in_flight = 0

    def fill() -> None:
        nonlocal in_flight
        while in_flight < ahead:
            study = next(todo, None)
            if study is None:
                return
            window.append((decoder.submit(prepare_study, study, inputs), len(study.files)))
            in_flight += len(study.files)

    def emit(done) -> Iterator[dict]:
        for scored in done:
            if writer is None:
                yield finish(scored, entry)
            else:
                rows.append(writer.submit(finish, scored, entry, dirs))
        while rows and (rows[0].done() or len(rows) > ahead):
            yield rows.popleft().result()

    try:
        fill()
        while window:
            future, n = window.popleft()
            prepared: Prepared = future.result()
            in_flight -= n
            fill()
            yield from emit(scorer.add(prepared))
        yield from emit(scorer.flush())
        while rows:
            yield rows.popleft().result()
    finally:
        for future, _ in window:
            future.cancel()
        decoder.shutdown(wait=True, cancel_futures=True)
        if writer is not None and writer is not decoder:
            writer.shutdown(wait=True, cancel_futures=True)
