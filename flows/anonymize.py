"""The anonymize flow: discover -> pair -> remap -> scrub -> export.

It reads like the pipeline it runs. The flow process owns the state store
(PHI: manifest, crosswalk, ledger); batch tasks get a batch manifest and return
PHI-free summaries. Run names carry only the operator's label and batch numbers.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from medanon.keys import load_key
from medanon.pipeline import WorkerConfig, default_state_dir
from medanon.profile import get_profile
from medanon.state import StateStore
from medanon.storage import open_target
from tasks.discover import discover, inspect
from tasks.export import export, manifest
from tasks.pair import pair
from tasks.remap import remap
from tasks.scrub import scrub


class RunError(Exception):
    """The run could not start or finish; the message is PHI-free."""


def _run_id() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or uuid.uuid4())
    except Exception:  # noqa: BLE001
        return str(uuid.uuid4())


def build_config(source: str, target: str, layout: str, profile: str, state_dir: str, allow_burned_in: bool,
                 key_file: str | None, key_block: str | None, byte_budget: int | None,
                 s3_options: dict | None = None) -> WorkerConfig:
    key = load_key(key_file=key_file, key_block=key_block, state_dir=state_dir)
    return WorkerConfig(source=source, target=target, profile=get_profile(profile), key=key, layout=layout,
                        allow_burned_in=allow_burned_in, byte_budget=byte_budget, s3_options=s3_options or {})


@flow(name="anonymize", flow_run_name="anonymize-{label}", log_prints=False, persist_result=False)
def anonymize(
    source: str,
    target: str,
    layout: Literal["flat", "patient", "study", "series"] = "study",
    profile: str = "research",
    label: str = "run",
    state_dir: str | None = None,
    allow_burned_in: bool = False,
    batch_size: int = 500,
    key_file: str | None = None,
    key_block: str | None = None,
    byte_budget: int | None = None,
    max_in_flight: int = 4,
) -> dict:
    """De-identify every DICOM instance under SOURCE into TARGET; returns the PHI-free run summary."""
    logger = get_run_logger()
    started = time.time()
    state_dir = state_dir or default_state_dir()
    run_id = _run_id()
    store = StateStore(state_dir)
    try:
        cfg = build_config(source, target, layout, profile, state_dir, allow_burned_in, key_file, key_block,
                           byte_budget)
        progress = create_progress_artifact(0.0, key="medanon-progress", description=f"medanon {label}: starting")

        # 1. discover: list the source, then read headers in batches
        listed = discover(cfg, store, run_id, label)
        logger.info("discover: %d files listed (%d new, %d changed)", listed["listed"], listed["new"],
                    listed["changed"])
        _run_waves(enumerate(store.iter_uninspected(cfg.source, batch_size), start=1),
                   lambda n, b: inspect.submit(cfg, n, b), lambda n, items: store.record_inspected(items),
                   max_in_flight)

        # 2. pair reports with studies
        paired = pair(store, cfg.source, run_id, label)

        # 3. remap: pseudonyms, crosswalk and output paths
        planned = remap(cfg, store, run_id, label, batch_size)
        skipped_existing = store.count(cfg.source, "status='done' AND seen_run=? AND done_token=size||':'||token",
                                       (run_id,))
        total = store.count(cfg.source, "status='planned'")
        logger.info("remap: %d instances to de-identify, %d held by policy", total, planned["held"])

        # 4-5. scrub each batch on the workers, export (ledger) as each completes
        totals = {"exported": 0, "skipped_identical": 0, "bytes_out": 0, "target_full": False}
        done = {"n": 0}

        def on_done(n, result):
            rec = export(store, cfg.target, n, result)
            totals["exported"] += rec["exported"]
            totals["skipped_identical"] += rec["skipped_identical"]
            totals["bytes_out"] += rec["bytes_out"]
            totals["target_full"] |= result["target_full"]
            done["n"] += len(result["outputs"]) + len(result["quarantined"])
            update_progress_artifact(progress, 100.0 * done["n"] / max(total, 1),
                                     description=f"medanon {label}: batch {n} done, {done['n']}/{total} instances")

        _run_waves(enumerate(store.iter_planned(cfg.source, batch_size), start=1),
                   lambda n, b: scrub.submit(cfg, n, b), on_done, max_in_flight)
        update_progress_artifact(progress, 100.0, description=f"medanon {label}: finished")

        target_obj = open_target(cfg.target, **cfg.s3_options)
        manifest(store, target_obj, label)
        summary = {
            "label": label,
            "profile": cfg.profile.name,
            "layout": layout,
            "discovered": listed["listed"],
            "dicom": store.count(cfg.source, "kind='dicom' AND seen_run=?", (run_id,)),
            "reports": paired["reports_found"],
            "exported": totals["exported"],
            "skipped_existing": skipped_existing,
            "skipped_identical": totals["skipped_identical"],
            "quarantined": store.reasons(cfg.source, run_id),
            "bytes_out": totals["bytes_out"],
            "target_full": totals["target_full"],
            "seconds": round(time.time() - started, 2),
        }
        store.save_run(run_id, started, summary)
        create_table_artifact(
            [{"measure": k, "value": str(v)} for k, v in summary.items()],
            key="medanon-summary",
            description=f"medanon run summary ({label})",
        )
        return summary
    finally:
        store.close()


def _run_waves(batches, submit, on_result, max_in_flight: int) -> None:
    """Submit numbered batches with at most max_in_flight running; handle each result as it
    completes. The batch iterator streams from the state store, so memory stays bounded
    whatever the archive's size."""
    pending: dict = {}
    for n, batch in batches:
        pending[submit(n, batch)] = n
        if len(pending) >= max_in_flight:
            _drain(pending, on_result, one=True)
    while pending:
        _drain(pending, on_result, one=False)


def _drain(pending: dict, on_result, one: bool) -> None:
    for fut in as_completed(list(pending)):
        on_result(pending.pop(fut), fut.result())
        if one:
            return
