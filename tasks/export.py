"""export: commit a written batch to the ledger, and publish the PHI-free manifest."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medanon.export import record_batch, write_manifest
from medanon.state import StateStore


@task(name="export", task_run_name="export-batch-{batch_no}", cache_policy=NO_CACHE, persist_result=False)
def export(store: StateStore, target_url: str, batch_no: int, result: dict) -> None:
    """Returns nothing: this task runs in the flow process once per batch, and Prefect keeps a link
    (a copy of the task run's state, about 3 KB) to every result a task returns there until the flow
    ends; at tens of millions of instances, tens of megabytes. The counts are in the batch's result."""
    record_batch(store, target_url, result)


@task(name="manifest", task_run_name="manifest-{label}", cache_policy=NO_CACHE, persist_result=False)
def manifest(store: StateStore, target, label: str) -> int:
    return write_manifest(store, target)
