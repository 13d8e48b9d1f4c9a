"""scrub: de-identify one batch of instances and write them to the target (worker side)."""

from __future__ import annotations

from prefect import task

from medanon.pipeline import WorkerConfig, scrub_batch


def batch_cache_key(context, parameters) -> str:
    """Batch content identity (paths, sizes, mtimes/ETags, output paths) + profile + key
    fingerprint + code version + target, hashed with the key: no PHI is stored in the key."""
    cfg: WorkerConfig = parameters["cfg"]
    items = parameters["items"]
    parts = [cfg.code_identity()] + ["|".join(map(str, it[1:])) for it in items]
    return "scrub-" + cfg.pseudonymizer().cache_token(*parts)


@task(name="scrub", task_run_name="scrub-batch-{batch_no}", cache_key_fn=batch_cache_key, persist_result=True,
      retries=1, retry_delay_seconds=2)
def scrub(cfg: WorkerConfig, batch_no: int, items: list[tuple]) -> dict:
    """items: (file_id, source relpath, out relpath, size, token). Returns a PHI-free summary."""
    return scrub_batch(cfg, batch_no, [(i[0], i[1], i[2]) for i in items])
