"""discover: list the source into the state store, then read headers batch by batch."""

from __future__ import annotations

from prefect import task

from tasks import phi_safe
from prefect.cache_policies import NO_CACHE

from medanon.pipeline import WorkerConfig, inspect_batch
from medanon.state import StateStore


@task(name="discover", task_run_name="discover-{label}", cache_policy=NO_CACHE, persist_result=False)
def discover(cfg: WorkerConfig, store: StateStore, run_id: str, label: str) -> dict:
    """Walk the source (flow side: the listing goes to the state store only). Returns counts: listed,
    new, changed, unchanged, and of the unchanged files how many are instances, reports and already
    exported (the run's summary takes them from here), with the folders that could not be read
    (``unlisted_dirs``; never their names: they may hold PHI)."""
    source = cfg.open_source()
    counts = store.register(cfg.source, source.iter_entries(), run_id)
    counts["unlisted_dirs"] = getattr(source, "unlisted_dirs", 0)
    return counts


# Headers hold PHI: this task's result is never persisted nor cached; it goes straight
# from the worker to the flow process, which writes it to the state store.
@task(name="inspect", task_run_name="inspect-batch-{batch_no}", cache_policy=NO_CACHE, persist_result=False)
@phi_safe
def inspect(cfg: WorkerConfig, batch_no: int, entries: list[tuple]) -> list:
    return inspect_batch(cfg, entries)
