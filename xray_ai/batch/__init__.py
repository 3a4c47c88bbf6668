"""predict-batch: score a whole archive, one row per study, resumable, on this machine or on Ray.

    from xray_ai.batch import BatchJob, BatchRun

    run = BatchRun(BatchJob(source=Path("archive/"), out=Path("scores.csv"), condition="fracture"))
    summary = run.execute()
    print(summary.line())

Modules: inputs (folder, MURA or CSV -> studies), rows (the row and its resumable writer),
core (decode a study; many studies' views through one forward; the row), outputs (overlays,
reports, DICOM results beside the rows), local and ray_engine (the engines), spec
(BatchJob) and job (BatchRun, Summary). README, "Batch analysis".
"""

from xray_ai.batch.inputs import BatchInputError, Study, find_studies
from xray_ai.batch.job import BatchRun, Summary
from xray_ai.batch.rows import CSV_COLUMNS, read_rows
from xray_ai.batch.spec import ENGINES, BatchJob

__all__ = ["BatchJob", "BatchRun", "Summary", "Study", "BatchInputError", "find_studies", "read_rows",
           "CSV_COLUMNS", "ENGINES"]
