"""remap: keyed pseudonyms and output paths for every new instance (flow side, no file read)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medanon.pipeline import WorkerConfig
from medanon.remap import remap_pending
from medanon.state import StateStore


@task(name="remap", task_run_name="remap-{label}", cache_policy=NO_CACHE, persist_result=False)
def remap(cfg: WorkerConfig, store: StateStore, run_id: str, label: str, batch_size: int) -> dict:
    return remap_pending(cfg, store, run_id, batch_size)
