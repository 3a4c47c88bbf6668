"""The Ray engine: the same job on Ray Data, for an archive larger than one machine should take.

The list of studies becomes a Ray dataset (`ray.data.from_items`, one item per study);
`map_batches` sends batches of studies to a pool of actors (`ActorPoolStrategy`, `workers`
of them), each holding one ModelManager and so one loaded model: one ONNX Runtime session
per actor where the model's export is in the actor's cache, TensorFlow otherwise, as
anywhere else. An actor scores its batch with the local engine's own code (decoding in one
thread beside the forward pass, the Scorer, the row builder), so its rows are the ones the
local engine writes; the driver writes them with the same RowWriter as they stream back.

Where it runs: `ray_address` or `$RAY_ADDRESS` names a running cluster (`ray.init(address=...)`);
without either, a local Ray is started for the run and stopped after it; a Ray that the
caller initialised already is used as it is. On a cluster every node needs xray_ai
(`pip install xray_ai[ray]`, or a `runtime_env` given to `ray.init` by the caller) and the
registry, the model files, the ONNX cache (optional) and INPUT at the same paths (a shared
filesystem); the output folders (--heatmaps, --reports, --dicom-out) are written by the
actors, so they too must be shared. The rows are written by the driver only.

Each actor's ONNX Runtime session uses every core its process may use (intra-op threads =
cores): one actor per node is the layout that fills a node without oversubscribing it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from xray_ai.batch.inputs import BatchInputError, Study
from xray_ai.batch.spec import BatchJob

__all__ = ["score_ray", "StudyScorer"]

log = logging.getLogger(__name__)


class StudyScorer:
    """The Ray actor: one model loaded at construction; each call scores a batch of studies.

    Args:
        job: BatchJob.to_dict() (plain values travel to the actor; the model is loaded there).
    """

    def __init__(self, job: dict[str, Any]):
        from xray_ai.serving.manager import ModelManager

        self.job = BatchJob.from_dict(job)
        self.manager = ModelManager(self.job.registry, backend=self.job.backend)
        self.registry = self.manager.registry
        self.loaded = self.manager.get(condition=self.job.condition, model_id=self.job.model_id,
                                       registry=self.registry)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from xray_ai.batch.local import score_local

        studies = [Study.from_dict(json.loads(item)) for item in batch["study"]]
        rows = score_local(studies, self.manager, self.loaded, self.registry, batch_size=self.job.batch_size,
                           workers=1, dirs=self.job.dirs)
        encoded = [json.dumps(row, ensure_ascii=False) for row in rows]
        return {"row": np.array(encoded, dtype=object)}


def score_ray(studies: Sequence[Study], job: BatchJob, entry_id: str | None = None) -> Iterator[dict]:
    """Score the studies on Ray Data; yields one row per study, in the order they finish.

    Args:
        studies: what to score.
        job: the job (its model, batch size, output folders; `workers` actors).
        entry_id: the model id the driver resolved (default: the job's condition's active
            one, resolved again by each actor); pins every actor to one model even if the
            registry is edited while the job runs.

    Raises:
        BatchInputError: Ray is not installed (`pip install xray_ai[ray]`).
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise BatchInputError(f"--engine ray needs Ray Data ({exc}): pip install 'xray_ai[ray]'") from None
    if not studies:
        return
    started = False
    if not ray.is_initialized():
        address = job.ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:  # a Ray of our own, for this run only
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        started = True
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI draws its own bar, from the rows
        spec = job.to_dict()
        if entry_id is not None:
            spec.update(model_id=entry_id)
        dataset = ray.data.from_items([{"study": json.dumps(s.to_dict())} for s in studies])
        scored = dataset.map_batches(
            StudyScorer,
            fn_constructor_kwargs={"job": spec},
            batch_size=job.batch_size,  # studies per call: at least batch_size views, so full forward batches
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, job.workers)),
            num_cpus=1,
        )
        for item in scored.iter_rows():
            yield json.loads(item["row"])
    finally:
        if started:
            ray.shutdown()
