"""BatchJob: what a predict-batch run scores, with which model, and where its rows go.

Plain values only (paths, strings, numbers), so that a job travels to a Ray actor
(`to_dict` / `from_dict`) and the actor loads its own model from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from xray_ai.batch.outputs import OutputDirs

__all__ = ["ENGINES", "BatchJob"]

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BatchJob:
    """Everything a run needs, in plain values (a Ray actor rebuilds its model from them).

    Attributes:
        source: INPUT, a folder or a CSV (xray_ai.batch.inputs).
        out: the output file, `.csv` or `.jsonl` (xray_ai.batch.rows).
        condition, model_id: which model (the condition's active one, or this id).
        registry: the registry file (None: the default one); backend: as ModelManager takes it.
        heatmaps, reports, dicom_out: folders for the outputs beside the rows (None: none).
        batch_size: views per analyzer call; workers: decoders (local) or actors (ray);
        pool: "thread" or "process" decoders (local); engine: "local" or "ray";
        ray_address: the cluster to join (None: $RAY_ADDRESS, else a local Ray).
    """

    source: Path
    out: Path
    condition: str | None = None
    model_id: str | None = None
    registry: Path | None = None
    backend: str | None = None
    heatmaps: Path | None = None
    reports: Path | None = None
    dicom_out: Path | None = None
    batch_size: int = 16
    workers: int = 2
    pool: str = "thread"
    engine: str = "local"
    ray_address: str | None = None

    @property
    def dirs(self) -> OutputDirs:
        return OutputDirs(self.heatmaps, self.reports, self.dicom_out)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> BatchJob:
        paths = {"source", "out", "registry", "heatmaps", "reports", "dicom_out"}
        return cls(**{k: (Path(v) if k in paths and v is not None else v) for k, v in data.items()})
