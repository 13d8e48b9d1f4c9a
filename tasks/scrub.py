"""scrub: de-identify one batch of instances and write them to the target (worker side)."""

from __future__ import annotations

from prefect import task

from tasks import phi_safe

from medanon.pipeline import BatchIncomplete, WorkerConfig, scrub_batch


def batch_cache_key(context, parameters) -> str:
    """Batch content identity (paths, sizes, mtimes/ETags, output paths) + profile + key
    fingerprint + code version + target, hashed with the key: no PHI is stored in the key."""
    cfg: WorkerConfig = parameters["cfg"]
    items = parameters["items"]
    parts = [cfg.code_identity()] + ["|".join(map(str, it[1:])) for it in items]
    return "scrub-" + cfg.pseudonymizer().cache_token(*parts)


def _retry_unless_full(task, task_run, state) -> bool:
    try:
        state.result()
    except BatchIncomplete:
        return False
    except Exception:  # noqa: BLE001
        return True
    return False


@task(name="scrub", task_run_name="scrub-batch-{batch_no}", cache_key_fn=batch_cache_key, persist_result=True,
      result_serializer="json",
      retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_unless_full)
@phi_safe
def scrub(cfg: WorkerConfig, batch_no: int, items: list[tuple]) -> dict:
    """items: (file_id, source relpath, out relpath, size, token). Returns a PHI-free summary.

    A batch cut short by a full target raises BatchIncomplete, so it is never cached."""
    result = scrub_batch(cfg, batch_no, [(i[0], i[1], i[2], i[4]) for i in items])
    if result["target_full"]:
        raise BatchIncomplete(result)
    return result
