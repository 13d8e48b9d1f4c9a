"""report: de-identify one batch of paired reports and write them beside their studies (worker side)."""

from __future__ import annotations

from prefect import task

from tasks import phi_safe
from prefect.cache_policies import NO_CACHE

from medanon.pipeline import WorkerConfig
from medanon.reportstage import report_batch


@task(name="report", task_run_name="report-batch-{batch_no}", cache_policy=NO_CACHE, persist_result=False,
      retries=1, retry_delay_seconds=2)
@phi_safe
def report(cfg: WorkerConfig, batch_no: int, items: list[tuple]) -> dict:
    """items: (file_id, report relpath, out relpath, instance relpath, size, report token, instance token).
    Returns a PHI-free summary."""
    return report_batch(cfg, batch_no, items)
