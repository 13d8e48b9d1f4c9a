"""pair: link each new report to one study (flow side: reads reports, writes the state store)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medanon.pairing import pair_pending
from medanon.pipeline import WorkerConfig
from medanon.state import StateStore


@task(name="pair", task_run_name="pair-{label}", cache_policy=NO_CACHE, persist_result=False)
def pair(cfg: WorkerConfig, store: StateStore, label: str) -> dict:
    """Returns PHI-free counts: paired (by rule), held (by reason)."""
    return pair_pending(cfg, store)
