"""The anonymize flow: discover -> pair -> remap -> scrub -> export.

It reads like the pipeline it runs. The flow process owns the state store
(PHI: manifest, crosswalk, ledger); batch tasks get a batch manifest and return
PHI-free summaries. Run names carry only the operator's label and batch numbers.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.states import Cancelled
from prefect.utilities.annotations import opaque

from medanon.export import record_batch
from medanon.keys import load_key
from medanon.pipeline import (Batch, BatchIncomplete, WorkerConfig, batch_size_for, default_state_dir,
                              inspection_plan, make_durable, scrub_batch_size, worker_processes)
from medanon.profile import get_profile
from medanon.request import RunRequest, TargetChoice
from medanon.state import StateStore, StoreInUse, run_lock
from medanon.storage import LocalTarget, TargetFull
from tasks.discover import discover, inspect
from tasks.export import export, manifest
from tasks.pair import pair
from tasks.remap import remap
from tasks.report import report
from tasks.scrub import scrub


class TargetFullStop(Exception):
    """The target filled up; the CLI turns this into exit code 75. PHI-free message."""

    def __init__(self, summary: dict):
        self.summary = summary
        manifest = "" if summary.get("manifest_written", True) else " and the manifest"
        super().__init__(
            f"target full after {summary['exported']} instances written this run; "
            f"{summary['remaining']} instances{manifest} remain"
        )


def _run_id() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or uuid.uuid4())
    except Exception:  # noqa: BLE001
        return str(uuid.uuid4())


def _in_deployment() -> bool:
    try:
        from prefect.runtime import deployment

        return deployment.id is not None
    except Exception:  # noqa: BLE001
        return False


def worker_config(req: RunRequest, state_dir: str, target: str, cache_scope: str = "") -> WorkerConfig:
    """Resolve the key and the S3 blocks (locations, endpoint, region, credentials, byte budget).

    Credentials go only into each side's options (hidden from reprs and masked in dumps), never into
    parameters, names or logs. A byte budget given with the run wins over the target block's."""
    from blocks.s3 import resolve_location

    key = load_key(key_file=req.key_file, key_block=req.key_block, state_dir=state_dir)
    source, source_opts, _ = resolve_location(req.source, req.source_block, "source", req.s3_options())
    target, target_opts, block_budget = resolve_location(target, req.target_block, "target", req.s3_options())
    byte_budget = req.byte_budget if req.byte_budget is not None else block_budget
    return WorkerConfig(source=source, target=target, profile=get_profile(req.profile), key=key,
                        layout=req.layout, allow_burned_in=req.allow_burned_in,
                        allow_recognizable_features=req.allow_recognizable_features, byte_budget=byte_budget,
                        sync=req.sync,
                        source_options=source_opts, target_options=target_opts,
                        cache_scope=cache_scope)


@contextlib.contextmanager
def task_runner(req: RunRequest, processes: int):
    """Where batch tasks run: a Dask cluster (dask_address), local processes, or threads (1)."""
    if req.dask_address:
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(address=req.dask_address)
    elif processes > 1:
        from prefect.task_runners import ProcessPoolTaskRunner

        runner = ProcessPoolTaskRunner(max_workers=processes)
    else:
        from prefect.task_runners import ThreadPoolTaskRunner

        runner = ThreadPoolTaskRunner(max_workers=max(1, req.max_in_flight))
    with runner:
        yield runner


def batch_spread(runner, req: RunRequest, processes: int) -> int:
    """The workers a small run's batches are shared evenly over (``even_share``): the local worker
    processes, or the Dask cluster's workers as the run starts (a worker's threads share one GIL,
    and a batch is mostly Python); 1 in threads, or while no Dask worker has joined."""
    if req.dask_address:
        return max(1, len(runner.client.nthreads()))
    return processes


def _runner_name(req: RunRequest, spread: int) -> str:
    if req.dask_address:
        return f"dask ({spread} worker{'s' * (spread != 1)})"
    return f"{spread} processes" if spread > 1 else "threads"


@flow(name="anonymize", flow_run_name="anonymize-{request.label}", log_prints=False, persist_result=False)
def anonymize(request: RunRequest) -> dict:
    """De-identify every DICOM instance under the source into the target; returns the PHI-free run summary."""
    req = request
    logger = get_run_logger()
    started = time.time()
    state_dir = req.state_dir or default_state_dir()
    run_id = _run_id()
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(run_lock(state_dir, run_id))  # one run at a time per state store
        except StoreInUse as busy:
            if not _in_deployment():
                raise  # the CLI exits 2 with the message
            # a scheduled run that comes while the last one still runs: cancelled, as Prefect's own
            # deployment concurrency limit would, not failed
            logger.warning("%s", busy)
            return Cancelled(message=str(busy))
        return _anonymize(req, logger, started, state_dir, run_id)


def _anonymize(req: RunRequest, logger, started: float, state_dir: str, run_id: str) -> dict:
    store = StateStore(state_dir)
    try:
        target = req.target
        cfg = worker_config(req, state_dir, target, store.instance_id())
        # an S3 target block may give the location and the byte budget (the budget lives in req from here)
        target = cfg.target
        req = req.model_copy(update={"target": target, "byte_budget": cfg.byte_budget})
        progress = create_progress_artifact(0.0, key="medanon-progress", description=f"medanon {req.label}: starting")

        # 1. discover: list the source, then read headers in batches
        listed = discover(cfg, store, run_id, req.label)
        logger.info("discover: %d files listed (%d new, %d changed)", listed["listed"], listed["new"],
                    listed["changed"])
        if listed["unlisted_dirs"]:
            logger.warning("discover: source folders that could not be read (permissions or I/O errors): %d; "
                           "their files are not in this run, and the next run lists them again",
                           listed["unlisted_dirs"])
        pending = store.count(cfg.source, "status IN ('new', 'planned')")
        processes = worker_processes(req.workers, pending, req.batch_size)
        in_threads = processes <= 1 and not req.dask_address
        requested_size = req.batch_size
        req = req.model_copy(update={"batch_size": batch_size_for(requested_size, in_threads)})
        with task_runner(req, processes) as runner:
            spread = batch_spread(runner, req, processes)  # what even_share spreads a small run's batches over
            inspect_size, inspect_at_once = inspection_plan(req.batch_size, in_threads, req.max_in_flight, pending,
                                                            spread)
            batch_tasks = _runner_name(req, spread)
            logger.info("batch tasks: %s for %d files to look at, %d per inspection batch", batch_tasks, pending,
                        inspect_size)
            # what the listed files are: the unchanged ones counted by the listing, the others as inspected
            found = {"dicom": listed["dicom"], "report": listed["reports"]}

            def inspected(n, items):
                for kind, count in store.record_inspected(items).items():
                    found[kind] = found.get(kind, 0) + count

            _run_waves(enumerate(store.iter_uninspected(cfg.source, inspect_size), start=1),
                       lambda n, b: runner.submit(inspect, {"cfg": cfg, "batch_no": n, "entries": Batch(b)}),
                       inspected, inspect_at_once)

            # 2. pair reports with studies
            paired = pair(cfg, store, req.label)
            logger.info("pair: %d reports found, paired by rule %s, held %s", found["report"],
                        paired["paired"], paired["held"])

            # 3. remap: pseudonyms, crosswalk and output paths
            planned = remap(cfg, store, run_id, req.label, req.batch_size)
            total = store.count(cfg.source, "status='planned'")
            estimate = store.planned_bytes(cfg.source)
            req = req.model_copy(update={"batch_size": scrub_batch_size(requested_size, in_threads, total,
                                                                        spread)})
            logger.info("remap: %d instances to de-identify (about %d bytes) in batches of %d, %d held by policy",
                        total, estimate, req.batch_size, planned["held"])

            # 4-5. scrub each batch on the workers, export (ledger) as each completes; a full
            # target pauses (deployment: suspend for operator input) or stops (CLI: exit 75)
            totals = {"exported": 0, "skipped_identical": 0, "bytes_out": 0, "target_full": False,
                      "reports_exported": 0, "manifest_written": False,
                      "batch_tasks": batch_tasks}
            targets_used = []
            attempt = 0
            while True:
                tgt = cfg.open_target()
                if isinstance(tgt, LocalTarget):
                    tgt.remove_stale_temp()  # left by a killed run; never part of the output
                free = tgt.free_bytes()
                logger.info("target: %s bytes free for about %d bytes to write",
                            "unknown" if free is None else free, store.planned_bytes(cfg.source))
                worker_cfg, flush = flush_in_flow(cfg, req, tgt)
                full = _scrub_stage(runner, worker_cfg, store, req, totals, progress, total, flush)
                # 6. reports, beside their studies, once every DICOM batch is written
                full = full or _report_stage(runner, worker_cfg, store, req, totals, flush)
                try:
                    manifest(store, tgt, req.label)  # space for it is held in reserve by the target...
                    totals["manifest_written"] = True
                except TargetFull:  # ...but a bucket quota may refuse it: written once space is added
                    logger.warning("target full: the manifest could not be written; it is written when the run "
                                   "goes on with more space")
                    totals["manifest_written"] = False
                    totals["target_full"] = full = True
                targets_used.append(target)
                if not full:
                    break
                remaining = store.count(cfg.source, "status IN ('planned','paired')")
                if not _in_deployment():
                    summary = _summary(req, cfg, listed, found, store, run_id, paired, totals, started,
                                       estimate)
                    summary["remaining"] = remaining
                    store.save_run(run_id, started, summary)
                    raise TargetFullStop(summary)
                attempt += 1
                choice = _ask_operator(req, attempt, remaining)
                if choice.byte_budget is not None:
                    req = req.model_copy(update={"byte_budget": choice.byte_budget})
                if choice.new_target:
                    target = choice.new_target
                    req = req.model_copy(update={"target": target})
                cfg = worker_config(req, state_dir, target, store.instance_id())
            update_progress_artifact(progress, 100.0, description=f"medanon {req.label}: finished")

        summary = _summary(req, cfg, listed, found, store, run_id, paired, totals, started, estimate)
        summary["targets"] = len(targets_used)
        store.save_run(run_id, started, summary)
        create_table_artifact([{"measure": k, "value": str(v)} for k, v in summary.items()],
                              key="medanon-summary", description=f"medanon run summary ({req.label})")
        return summary
    finally:
        store.close()


def _ask_operator(req: RunRequest, attempt: int, remaining: int) -> TargetChoice:
    """Suspend the deployment run until the operator adds space or names a new target in the UI."""
    from prefect.flow_runs import suspend_flow_run

    logger = get_run_logger()
    logger.warning("target full: %d instances remain; suspending until space is added or a new target is given",
                   remaining)
    create_table_artifact(
        [{"measure": "remaining instances", "value": str(remaining)},
         {"measure": "to continue", "value": "resume this run: leave new_target empty after adding space, "
                                              "or give a new target location"}],
        key="medanon-target-full", description=f"medanon {req.label}: target full")
    return suspend_flow_run(wait_for_input=TargetChoice, key=f"target-full-{attempt}", timeout=None)


def flush_in_flow(cfg: WorkerConfig, req: RunRequest, target):
    """Who makes a batch durable before the ledger records it: (the workers' config, the flow's flush).

    Threads and local worker processes write on the flow's machine, so the flow flushes (one sync
    covers every batch written so far, then the batch's files leave the page cache: ``make_durable``)
    while the workers go on with the next batches. Dask workers
    may be other machines: they flush their own writes. No flush with ``sync`` off, or for a target
    without one (a bucket: a completed PUT is durable). ``target``: the flow's open target."""
    if not cfg.sync or req.dask_address or getattr(target, "sync", None) is None:
        return cfg, None
    return cfg.model_copy(update={"sync": False}), functools.partial(make_durable, target)


def _budgeted_stage(runner, task, cfg: WorkerConfig, store: StateStore, req: RunRequest, batches, size_at: int,
                    on_result, flush) -> bool:
    """Run numbered batches of a worker task against the target; True when the target filled up.

    With a byte budget, each batch is given what is left of it after the bytes the ledger says
    this target already holds and the estimated size (``item[size_at]``) of batches in flight. The
    ledger is summed once, as the stage starts, then kept up to date from the batches' results (the
    sum reads every exported row: once per batch, it would make a run of tens of millions quadratic).
    ``flush`` (from ``flush_in_flow``), when not None, makes a batch that wrote durable before it is
    recorded."""
    full = {"hit": False}
    in_flight: dict[int, int] = {}
    held = {"bytes": store.target_bytes(cfg.target) if req.byte_budget is not None else 0}

    def budgeted():
        for n, b in enumerate(batches, start=1):
            if full["hit"]:
                return
            left = None
            if req.byte_budget is not None:
                left = req.byte_budget - held["bytes"] - sum(in_flight.values())
                if left <= 0:
                    full["hit"] = True
                    return
            in_flight[n] = sum(i[size_at] for i in b)
            yield n, (b, left)

    def submit(n, batch_and_budget):
        items, left = batch_and_budget
        batch_cfg = cfg if left is None else cfg.model_copy(update={"byte_budget": left})
        return runner.submit(task, {"cfg": batch_cfg, "batch_no": n, "items": Batch(items)})

    def handle(n, result):
        in_flight.pop(n, None)
        if flush is not None:
            flush(result)
        on_result(n, result)  # records the batch's outputs in the ledger (status done, out_size)
        held["bytes"] += sum(row["size"] for row in result["outputs"].values())
        full["hit"] |= result["target_full"]

    _run_waves(budgeted(), submit, handle, req.max_in_flight)
    return full["hit"]


def _scrub_stage(runner, cfg: WorkerConfig, store: StateStore, req: RunRequest, totals: dict, progress,
                 total: int, flush) -> bool:
    """Scrub and write every planned batch; True when the target filled up."""
    done = {"n": 0}

    def on_result(n, result):
        # opaque: Prefect would otherwise walk the summary's manifest rows looking for futures
        export(store, cfg.target, n, opaque(result))
        for k in ("exported", "skipped_identical", "bytes_out"):
            totals[k] += result[k]
        totals["target_full"] |= result["target_full"]
        done["n"] += len(result["outputs"]) + len(result["quarantined"])
        update_progress_artifact(progress, min(100.0, 100.0 * done["n"] / max(total, 1)),
                                 description=f"medanon {req.label}: batch {n} done, {done['n']}/{total} instances")

    return _budgeted_stage(runner, scrub, cfg, store, req, store.iter_planned(cfg.source, req.batch_size), 3,
                           on_result, flush)


def _report_stage(runner, cfg: WorkerConfig, store: StateStore, req: RunRequest, totals: dict, flush) -> bool:
    """De-identify the paired reports and write them beside their studies; True when the target filled up."""

    def on_result(n, result):
        record_batch(store, cfg.target, result)  # ledger: done (PHI-free manifest rows) or quarantined
        totals["reports_exported"] += len(result["outputs"])
        totals["bytes_out"] += result["bytes_out"]
        totals["target_full"] |= result["target_full"]

    return _budgeted_stage(runner, report, cfg, store, req, store.iter_paired_reports(cfg.source, req.batch_size),
                           4, on_result, flush)


def _summary(req, cfg, listed, found, store, run_id, paired, totals, started, estimate) -> dict:
    return {
        "label": req.label,
        "profile": cfg.profile.name,
        "layout": req.layout,
        "discovered": listed["listed"],
        "unlisted_dirs": listed["unlisted_dirs"],
        "dicom": found["dicom"],
        "reports": found["report"],
        "reports_paired": paired["paired"],
        "reports_exported": totals["reports_exported"],
        "exported": totals["exported"],
        "skipped_existing": listed["exported_before"],
        "skipped_identical": totals["skipped_identical"],
        "quarantined": store.reasons(cfg.source, run_id),
        "bytes_out": totals["bytes_out"],
        "estimated_bytes": estimate,
        "target_full": totals["target_full"],
        "manifest_written": totals["manifest_written"],
        "batch_tasks": totals["batch_tasks"],
        "seconds": round(time.time() - started, 2),
    }


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
        try:
            result = fut.result()
        except BatchIncomplete as partial:  # the target filled up during this batch
            result = partial.result
        on_result(pending.pop(fut), result)
        if one:
            return

