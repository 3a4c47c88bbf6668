"""A predict-batch job: what to score, with which model, where the rows go; run on an engine.

`BatchRun(job)` does everything that can fail on bad input before any work: it finds the
studies, resolves the model, opens the output (skipping the studies already in it). Then
`run.execute(on_row)` scores the rest on the job's engine ("local": this process and a
pool of decoders, xray_ai.batch.local; "ray": Ray Data actors, xray_ai.batch.ray_engine),
writes each row as it comes and returns the Summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from xray_ai.batch.inputs import Study, find_studies
from xray_ai.batch.outputs import check_dicom_writer
from xray_ai.batch.rows import RowWriter
from xray_ai.batch.spec import ENGINES, BatchJob
from xray_ai.serving.manager import LoadedEnsemble, LoadedModel, ModelManager

__all__ = ["BatchRun", "Summary"]

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run did; `line()` is the summary line the CLI prints."""

    studies: int = 0
    assessable: int = 0
    errors: int = 0
    skipped: int = 0
    images: int = 0
    seconds: float = 0.0
    backend: str = ""
    out: str = ""
    error_examples: list[str] = field(default_factory=list)

    def add(self, row: dict) -> None:
        self.studies += 1
        if row["status"] == "error":
            self.errors += 1
            if len(self.error_examples) < 3:
                self.error_examples.append(str(row["error"]))
            return
        self.images += int(row["n_views"])
        self.assessable += bool(row.get("assessable"))

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        skipped = f", {self.skipped} already in {self.out} (skipped)" if self.skipped else ""
        return (f"predict-batch: {self.studies} studies ({self.assessable} assessable, {self.errors} errors){skipped}; "
                f"{self.images} images in {self.seconds:.1f} s: {self.images_per_second:.1f} images/s, "
                f"{self.studies / self.seconds if self.seconds > 0 else 0.0:.2f} studies/s"
                f"{f' ({self.backend})' if self.backend else ''} -> {self.out}")


class BatchRun:
    """A job ready to execute (module docstring).

    Raises (on construction): BatchInputError (INPUT; --dicom-out without the DICOM
    writer), RegistryError (condition or model id, registry), ValueError (output file,
    engine, batch size, workers). `execute` raises BatchInputError for --engine ray
    without Ray.
    """

    def __init__(self, job: BatchJob):
        if job.engine not in ENGINES:
            raise ValueError(f"engine {job.engine!r}: expected one of {', '.join(ENGINES)}")
        if job.batch_size < 1 or job.workers < 0:
            raise ValueError(f"--batch-size must be at least 1 and --workers at least 0 "
                             f"(got {job.batch_size} and {job.workers})")
        if job.condition is None and job.model_id is None:
            raise ValueError("give a condition or a model id")
        if job.dicom_out is not None:
            check_dicom_writer()
        self.job = job
        self.manager = ModelManager(job.registry, backend=job.backend)
        self.registry = self.manager.registry
        self.entry = self.manager.resolve(job.condition, job.model_id)
        studies = find_studies(job.source)
        self.writer = RowWriter(job.out, self.entry.id)
        self.todo: list[Study] = [s for s in studies if s.study_id not in self.writer.done]
        self.skipped = len(studies) - len(self.todo)
        self.loaded: LoadedModel | LoadedEnsemble | None = None

    def load(self) -> LoadedModel | LoadedEnsemble:
        """The model, loaded here (the local engine; the Ray engine loads it in each actor)."""
        if self.loaded is None:
            self.loaded = self.manager.get(model_id=self.entry.id, registry=self.registry)
        return self.loaded

    def _rows(self) -> Iterator[dict]:
        job = self.job
        if job.engine == "ray":
            from xray_ai.batch.ray_engine import score_ray

            return score_ray(self.todo, job, entry_id=self.entry.id)
        from xray_ai.batch.local import score_local

        return score_local(self.todo, self.manager, self.load(), self.registry, batch_size=job.batch_size,
                           workers=job.workers, pool=job.pool, dirs=job.dirs)

    def execute(self, on_row: Callable[[dict], None] | None = None) -> Summary:
        """Score every study not yet in the output, append its row, call `on_row(row)`."""
        summary = Summary(skipped=self.skipped, out=str(self.job.out))
        if self.job.engine == "local":
            self.load()  # before the clock: the throughput is the scoring's, not the model load's
        start = time.perf_counter()
        backends = set()
        try:
            for row in self._rows():
                self.writer.write(row)
                summary.add(row)
                if row.get("backend"):
                    backends.add(row["backend"])
                if on_row is not None:
                    on_row(row)
                summary.seconds = time.perf_counter() - start
        finally:
            self.writer.close()
        summary.seconds = time.perf_counter() - start
        summary.backend = ", ".join(sorted(backends))
        return summary

    def close(self) -> None:
        self.writer.close()
