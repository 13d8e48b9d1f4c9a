"""pair: link reports to studies (reports stage); DICOM instances pass through."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medanon.state import StateStore


@task(name="pair", task_run_name="pair-{label}", cache_policy=NO_CACHE, persist_result=False)
def pair(store: StateStore, source: str, run_id: str, label: str) -> dict:
    reports = store.count(source, "kind='report' AND seen_run=?", (run_id,))
    return {"reports_found": reports}
