"""The anonymize flow against a real (temporary) Prefect server: run names, artifacts, no PHI."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
import json

import pytest
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from medanon.samples import PLANTED_PHI, build_sample_archive
from conftest import TEST_KEY, count_manifest_builds, tree_bytes


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


async def _collect():
    async with get_client() as client:
        flows = await client.read_flow_runs()
        tasks, page = [], None
        while page is None or len(page) == 200:  # every task run, not the server's first page of 200
            page = await client.read_task_runs(limit=200, offset=len(tasks))
            tasks += page
        arts = await client.read_artifacts()
        logs = await client.read_logs()
    return flows, tasks, arts, logs


def _settled_task_runs():
    """Flow runs and task runs, read until two reads a second apart agree (at most 30 s): task runs
    reach the server as events, recorded a moment after the flow has returned."""
    deadline = time.monotonic() + 30
    flows, tasks, _, _ = asyncio.run(_collect())
    while time.monotonic() < deadline:
        time.sleep(1)
        again_flows, again, _, _ = asyncio.run(_collect())
        if {(t.id, t.state_type) for t in again} == {(t.id, t.state_type) for t in tasks}:
            break
        flows, tasks = again_flows, again
    return flows, tasks


def _task_counter():
    """count(flow run name, task run name prefix) over every run the test server holds."""
    flows, tasks = _settled_task_runs()
    run_of = {f.id: f.name for f in flows}
    return lambda flow_name, prefix: sum(run_of.get(t.flow_run_id) == flow_name and t.name.startswith(prefix)
                                         for t in tasks)


def test_flow_run_names_artifacts_and_no_phi(harness, tmp_path, monkeypatch):
    from flows.anonymize import anonymize

    monkeypatch.setenv("MEDANON_KEY", TEST_KEY)
    src = tmp_path / "archive"
    build_sample_archive(src)
    from medanon.request import RunRequest

    # one folder, named for a patient's MRN, cannot be read: counted and warned about, never named
    refused = str(next(p for p in sorted(src.rglob("mrn*")) if p.is_dir()))
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if os.fspath(path) == refused else real_scandir(path))
    summary = anonymize(RunRequest(source=str(src), target=str(tmp_path / "out"), state_dir=str(tmp_path / "state"),
                                   label="nightly-ct", batch_size=4))
    assert summary["exported"] >= 15 and summary["unlisted_dirs"] == 1
    warning = "folders that could not be read (permissions or I/O errors): 1;"
    deadline = time.monotonic() + 30  # logs reach the server a moment after the flow returns
    flows, tasks, arts, logs = asyncio.run(_collect())
    while not any(warning in log.message for log in logs) and time.monotonic() < deadline:
        time.sleep(1)
        flows, tasks, arts, logs = asyncio.run(_collect())
    assert any(warning in log.message for log in logs)
    assert not any(Path(refused).name in log.message for log in logs)
    assert [f.name for f in flows] == ["anonymize-nightly-ct"]
    names = {t.name for t in tasks}
    assert {"discover-nightly-ct", "pair-nightly-ct", "remap-nightly-ct", "manifest-nightly-ct"} <= names
    assert "scrub-batch-1" in names and "export-batch-1" in names and "inspect-batch-1" in names
    assert sum(n.startswith("scrub-batch-") for n in names) >= 4  # batches of 4 instances
    by_key = {a.key: a for a in arts}
    assert by_key["medanon-progress"].type == "progress" and by_key["medanon-progress"].data == 100.0
    table = by_key["medanon-summary"]
    assert table.type == "table"
    # nothing identifying in anything the server stored: run names, parameters, artifacts, logs
    stored = json.dumps([f.model_dump(mode="json") for f in flows] + [t.model_dump(mode="json") for t in tasks]
                        + [a.model_dump(mode="json") for a in arts] + [log.model_dump(mode="json") for log in logs])
    for phi in PLANTED_PHI:
        assert phi not in stored and phi.upper() not in stored
    assert str(src) not in json.dumps([t.model_dump(mode="json") for t in tasks])


def test_key_from_a_prefect_secret_block_gives_the_same_pseudonyms(harness, tmp_path, monkeypatch):
    from prefect.blocks.system import Secret

    from flows.anonymize import anonymize
    from medanon.request import RunRequest
    from medanon.samples import build_series_archive

    src = tmp_path / "src"
    build_series_archive(src, 6, per_series=3)
    Secret(value="block-held-key-42").save("medanon-test-key", overwrite=True)
    monkeypatch.delenv("MEDANON_KEY", raising=False)
    anonymize(RunRequest(source=str(src), target=str(tmp_path / "a"), state_dir=str(tmp_path / "sa"),
                         key_block="medanon-test-key", label="block-key"))
    monkeypatch.setenv("MEDANON_KEY", "block-held-key-42")
    anonymize(RunRequest(source=str(src), target=str(tmp_path / "b"), state_dir=str(tmp_path / "sb"),
                         label="env-key"))
    names_a = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.dcm"))
    names_b = sorted(p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*.dcm"))
    assert len(names_a) == 6 and names_a == names_b
    assert not (tmp_path / "sa" / "secret.key").exists()  # no key was generated: the block's was used


def test_scrub_batches_are_cached_on_content_identity_with_json_results(harness, tmp_path):
    from prefect import flow
    from pydantic import SecretBytes

    from medanon.pipeline import WorkerConfig
    from medanon.profile import PROFILES
    from medanon.samples import build_series_archive
    from tasks.scrub import scrub

    src = tmp_path / "src"
    paths = build_series_archive(src, 3, per_series=3)
    cfg = WorkerConfig(source=str(src), target=str(tmp_path / "out"), profile=PROFILES["research"],
                       key=SecretBytes(b"cache-key"), cache_scope="store-1")
    st = [os.stat(p) for p in paths]
    items = [(i, os.path.relpath(p, src), f"x/{i}.dcm", s.st_size, str(s.st_mtime_ns))
             for i, (p, s) in enumerate(zip(paths, st))]

    @flow
    def twice(items_a, items_b):
        first = scrub(cfg, 1, items_a, return_state=True)
        second = scrub(cfg, 1, items_b, return_state=True)
        return first, second

    first, second = twice(items, items)
    assert first.result()["exported"] == 3
    assert second.name == "Cached" and second.result() == first.result()
    changed = [items[0][:4] + ("changed-mtime",)] + items[1:]
    _, third = twice(items, changed)
    assert third.name != "Cached"
    # the persisted result is JSON and holds no source path
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    blobs = [p.read_bytes() for p in storage.glob("*") if p.is_file()]
    assert blobs
    for blob in blobs:
        assert str(src).encode() not in blob
    assert any(b'"serializer"' in b and b'"json"' in b for b in blobs)


def test_unexpected_task_errors_reach_prefect_without_their_message(harness):
    from prefect import flow, task

    from tasks import BatchFailed, phi_safe

    @task(name="boom", task_run_name="boom-batch-{batch_no}")
    @phi_safe
    def boom(batch_no: int) -> None:
        raise ValueError("Patient Kowalczyk^Agnieszka MRN4471203 could not be parsed")

    @flow(name="phi-safe-check")
    def check():
        st = boom(7, return_state=True)
        try:
            st.result()
        except BatchFailed as exc:
            return str(exc), exc.__context__ is None, exc.__cause__ is None
        return None

    message, no_context, no_cause = check()
    assert "Kowalczyk" not in message and "ValueError" in message and no_context and no_cause
    _, tasks, _, logs = asyncio.run(_collect())
    stored = json.dumps([t.model_dump(mode="json") for t in tasks] + [log.model_dump(mode="json") for log in logs])
    assert "boom-batch-7" in stored
    assert "Kowalczyk" not in stored and "MRN4471203" not in stored


def test_automatic_workers_run_a_large_run_in_processes_with_the_same_output(harness, tmp_path, monkeypatch):
    """The default (workers=0) picks one process per CPU once a run has AUTO_PROCESSES_FROM files to
    look at (lowered here to 20), says so in the summary, and writes exactly what threads write."""
    from flows.anonymize import anonymize
    from medanon import pipeline
    from medanon.request import RunRequest
    from medanon.samples import build_series_archive

    monkeypatch.setenv("MEDANON_KEY", TEST_KEY)
    monkeypatch.setattr(pipeline, "AUTO_PROCESSES_FROM", 20)
    src = tmp_path / "src"
    build_series_archive(src, 40, per_series=10)
    expected = pipeline.worker_processes(0, 40, 10)
    auto = anonymize(RunRequest(source=str(src), target=str(tmp_path / "auto"), state_dir=str(tmp_path / "s1"),
                                batch_size=10, label="auto"))
    threads = anonymize(RunRequest(source=str(src), target=str(tmp_path / "threads"),
                                   state_dir=str(tmp_path / "s2"), batch_size=10, label="threads", workers=1))
    if pipeline.usable_cpus() >= 2:
        assert expected == min(pipeline.usable_cpus(), 4) and auto["batch_tasks"] == f"{expected} processes"
    assert threads["batch_tasks"] == "threads" and auto["exported"] == threads["exported"] == 40

    assert tree_bytes(tmp_path / "auto") == tree_bytes(tmp_path / "threads")

    # header reads go in INSPECT_BATCH_FACTOR times bigger batches, in processes an even share each
    # when that leaves a process without one; scrubs keep the given batch size
    count = _task_counter()
    assert count("anonymize-threads", "inspect-batch-") == 1 and count("anonymize-threads", "scrub-batch-") == 4
    if pipeline.usable_cpus() >= 2:
        assert count("anonymize-auto", "inspect-batch-") == -(-40 // -(-40 // expected)) == expected
        assert count("anonymize-auto", "scrub-batch-") == 4


def test_the_ledger_records_a_batch_only_once_the_flow_has_flushed_it(harness, tmp_path, monkeypatch):
    """Local workers leave the flush to the flow (so they go on writing the next batch): every file the
    ledger records was complete before a sync that the flow's own thread called. --no-sync: no sync."""
    import threading

    from flows.anonymize import anonymize
    from medanon.request import RunRequest
    from medanon.samples import build_series_archive
    from medanon.state import StateStore
    from medanon.storage.local import TMP_PREFIX, LocalTarget

    monkeypatch.setenv("MEDANON_KEY", TEST_KEY)
    src, out = tmp_path / "src", tmp_path / "out"
    build_series_archive(src, 24, per_series=6)
    flow_thread = threading.get_ident()
    events = {"synced": 0, "recorded": 0, "sync_threads": set(), "late": []}
    real_sync, real_mark_done = LocalTarget.sync, StateStore.mark_done

    def spy_sync(self):
        if Path(self.root) == out:
            # complete (renamed) before this sync starts, so durable once it returns
            done = sum(1 for p in out.rglob("*") if p.is_file() and not p.name.startswith(TMP_PREFIX))
            events["sync_threads"].add(threading.get_ident())
        real_sync(self)
        if Path(self.root) == out:
            events["synced"] = max(events["synced"], done)

    def spy_mark_done(self, outputs, target_url, lines=None):
        if outputs:
            events["recorded"] += len(outputs)
            if events["recorded"] > events["synced"]:
                events["late"].append((events["recorded"], events["synced"]))
        return real_mark_done(self, outputs, target_url, lines)

    monkeypatch.setattr(LocalTarget, "sync", spy_sync)
    monkeypatch.setattr(StateStore, "mark_done", spy_mark_done)
    summary = anonymize(RunRequest(source=str(src), target=str(out), state_dir=str(tmp_path / "state"),
                                   batch_size=4, label="flush"))
    assert summary["exported"] == events["recorded"] == 24
    assert events["late"] == []  # nothing recorded before it was flushed
    assert events["sync_threads"] == {flow_thread}  # the flow flushed, not the worker threads

    events.update(synced=0, recorded=0, sync_threads=set())
    out = tmp_path / "out-nosync"
    summary = anonymize(RunRequest(source=str(src), target=str(out), state_dir=str(tmp_path / "state2"),
                                   batch_size=4, label="nosync", sync=False))
    assert summary["exported"] == events["recorded"] == 24 and events["sync_threads"] == set()


def test_flushed_outputs_leave_the_page_cache_and_unflushed_ones_stay(harness, tmp_path, monkeypatch):
    """After the flow has flushed a batch, its output files leave the page cache (an export is not
    read back: a large one would fill memory); with --no-sync nothing is flushed nor dropped."""
    from conftest import fs_type, resident_pages

    from flows.anonymize import anonymize
    from medanon.request import RunRequest
    from medanon.samples import build_series_archive

    if fs_type(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("on tmpfs the page cache is where files are stored")
    monkeypatch.setenv("MEDANON_KEY", TEST_KEY)
    src = tmp_path / "src"
    build_series_archive(src, 24, per_series=6)
    pages = {}
    for label, sync in (("dropped", True), ("kept", False)):
        out = tmp_path / label
        summary = anonymize(RunRequest(source=str(src), target=str(out), state_dir=str(tmp_path / f"s-{label}"),
                                       batch_size=4, label=label, sync=sync))
        assert summary["exported"] == 24
        pages[label] = [resident_pages(p) for p in sorted(out.rglob("*.dcm"))]
    if None in pages["dropped"]:
        pytest.skip("mincore(2) is not available here")
    assert len(pages["dropped"]) == len(pages["kept"]) == 24
    assert set(pages["dropped"]) == {0} and min(pages["kept"]) > 0


def test_dask_workers_flush_their_own_writes(tmp_path):
    """Dask workers may be other machines: the flow cannot flush their disks, so they keep doing it."""
    from flows.anonymize import flush_in_flow
    from medanon.pipeline import WorkerConfig
    from medanon.profile import get_profile
    from medanon.request import RunRequest

    cfg = WorkerConfig(source=str(tmp_path), target=str(tmp_path / "out"), profile=get_profile("research"),
                       key=b"k" * 32)
    req = RunRequest(source=str(tmp_path), target=str(tmp_path / "out"))
    target = cfg.open_target()
    worker_cfg, flush = flush_in_flow(cfg, req, target)
    assert flush is not None and worker_cfg.sync is False and cfg.sync is True
    worker_cfg, flush = flush_in_flow(cfg, req.model_copy(update={"dask_address": "tcp://127.0.0.1:1"}), target)
    assert flush is None and worker_cfg.sync is True
    worker_cfg, flush = flush_in_flow(cfg.model_copy(update={"sync": False}), req, target)
    assert flush is None and worker_cfg.sync is False


def test_without_a_batch_size_worker_processes_get_bigger_batches(harness, tmp_path, monkeypatch):
    """No batch_size: DEFAULT_BATCH_SIZE per scrub task in threads, WORKER_BATCH_SIZE in worker
    processes (a task run costs a worker about 0.1 s), inspection INSPECT_BATCH_FACTOR times that;
    the output is the same either way. Sizes are lowered here to fit 40 files."""
    from flows.anonymize import anonymize
    from medanon import pipeline
    from medanon.request import RunRequest
    from medanon.samples import build_series_archive

    if pipeline.usable_cpus() < 2:
        pytest.skip("the automatic choice takes worker processes only with 2 CPUs or more")
    monkeypatch.setenv("MEDANON_KEY", TEST_KEY)
    monkeypatch.setattr(pipeline, "AUTO_PROCESSES_FROM", 20)
    monkeypatch.setattr(pipeline, "DEFAULT_BATCH_SIZE", 10)
    monkeypatch.setattr(pipeline, "WORKER_BATCH_SIZE", 20)
    src = tmp_path / "src"
    build_series_archive(src, 40, per_series=10)
    auto = anonymize(RunRequest(source=str(src), target=str(tmp_path / "auto"), state_dir=str(tmp_path / "s1"),
                                label="autosize"))
    threads = anonymize(RunRequest(source=str(src), target=str(tmp_path / "threads"), state_dir=str(tmp_path / "s2"),
                                   label="threadsize", workers=1))
    assert auto["batch_tasks"].endswith("processes") and threads["batch_tasks"] == "threads"
    count = _task_counter()
    # processes: inspection (80 per batch) shared evenly, one batch per process
    assert (count("anonymize-autosize", "scrub-batch-"), count("anonymize-autosize", "inspect-batch-")) == (2, 2)
    assert (count("anonymize-threadsize", "scrub-batch-"), count("anonymize-threadsize", "inspect-batch-")) == (4, 1)

    outputs = tree_bytes(tmp_path / "auto")
    assert outputs == tree_bytes(tmp_path / "threads") and len(outputs) == 41


def test_a_small_run_on_worker_processes_gives_each_process_a_batch(harness, tmp_path, monkeypatch):
    """40 instances on 2 worker processes, with batches (WORKER_BATCH_SIZE, lowered to 50) bigger
    than the run: without a batch size, inspection and scrub each make one batch per process, so
    both processes start at once; a given batch size is obeyed for the scrub. Threads inspect one
    batch at a time. The output is the same every way."""
    from flows.anonymize import anonymize
    from medanon import pipeline
    from medanon.request import RunRequest
    from medanon.samples import build_series_archive

    monkeypatch.setenv("MEDANON_KEY", TEST_KEY)
    monkeypatch.setattr(pipeline, "WORKER_BATCH_SIZE", 50)
    src = tmp_path / "src"
    build_series_archive(src, 40, per_series=10)
    runs = {"even": {"workers": 2}, "given": {"workers": 2, "batch_size": 50}, "thread": {"workers": 1, "batch_size": 5}}
    for label, extra in runs.items():
        summary = anonymize(RunRequest(source=str(src), target=str(tmp_path / label),
                                       state_dir=str(tmp_path / f"s-{label}"), label=f"small-{label}", **extra))
        assert summary["exported"] == 40
    count = _task_counter()
    assert (count("anonymize-small-even", "inspect-batch-"), count("anonymize-small-even", "scrub-batch-")) == (2, 2)
    assert (count("anonymize-small-given", "inspect-batch-"), count("anonymize-small-given", "scrub-batch-")) == (2, 1)
    assert (count("anonymize-small-thread", "inspect-batch-"), count("anonymize-small-thread", "scrub-batch-")) == (2, 8)
    # in threads, inspection tasks run one after another (header reads are GIL-bound)
    flows, tasks = _settled_task_runs()
    thread_run = next(f.id for f in flows if f.name == "anonymize-small-thread")
    first, second = sorted((t.start_time, t.end_time) for t in tasks
                           if t.flow_run_id == thread_run and t.name.startswith("inspect-batch-"))
    assert second[0] >= first[1]
    assert tree_bytes(tmp_path / "even") == tree_bytes(tmp_path / "given") == tree_bytes(tmp_path / "thread")


class _RecordingDb:
    """A state store connection that notes each statement with its first parameters."""

    def __init__(self, db, log):
        self._db, self._log = db, log

    def execute(self, sql, params=()):
        self._log.append((sql, tuple(params)))
        return self._db.execute(sql, params)

    def executemany(self, sql, rows):
        rows = list(rows)
        if rows:
            self._log.append((sql, tuple(rows[0]) if not isinstance(rows[0], dict) else rows[0]))
        return self._db.executemany(sql, rows)

    def __getattr__(self, name):
        return getattr(self._db, name)


def _reads_all(step: str) -> bool:
    """A query plan step that reads a whole table or index, or all of a source's files (a search
    constrained by source, status or kind only), rather than a batch's, a file's or a study's rows."""
    import re

    if step.startswith("SCAN"):
        return True
    found = re.match(r"SEARCH (\w+) .*\((.*)\)$", step)
    return bool(found) and found[1] == "files" and set(re.findall(r"(\w+)\s*[=<>]", found[2])) <= {
        "source", "status", "kind"}


def test_state_queries_repeated_per_batch_use_an_index(harness, tmp_path, monkeypatch):
    """At tens of millions of files, a statement the flow runs once per batch (or per file) must find
    its rows through an index: a full scan or a sort of the table each time makes the run quadratic.
    Batches of 2 on the sample archive (reports, pairing, quarantine, a byte budget) repeat every such
    statement; those run at least 3 times must not read a whole table or all of a source's files
    (a sort of the few rows found, as for a study's instances, is fine). Statements run once per run
    (counts, the manifest) may read the whole table."""
    import sqlite3
    from collections import Counter

    from flows.anonymize import anonymize
    from medanon import state
    from medanon.request import RunRequest

    monkeypatch.setenv("MEDANON_KEY", TEST_KEY)
    log: list = []
    real_init = state.StateStore.__init__

    def recording_init(self, state_dir):
        real_init(self, state_dir)
        self.db = _RecordingDb(self.db, log)

    monkeypatch.setattr(state.StateStore, "__init__", recording_init)
    src = tmp_path / "archive"
    build_sample_archive(src)
    summary = anonymize(RunRequest(source=str(src), target=str(tmp_path / "out"), state_dir=str(tmp_path / "st"),
                                   label="plans", batch_size=2, byte_budget=10**12))
    assert summary["exported"] == 16 and summary["reports_exported"] == 4
    runs: dict = {}
    for sql, params in log:
        runs.setdefault(sql, params)
    counts = Counter(sql for sql, _ in log)
    db = sqlite3.connect(tmp_path / "st" / state.DB_NAME)
    checked, bad = 0, {}
    for sql, params in runs.items():
        if counts[sql] < 3 or not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "INSERT", "DELETE")):
            continue
        named = isinstance(params, dict)
        plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params if named else tuple(params))]
        checked += 1
        if any(_reads_all(step) for step in plan):
            bad[" ".join(sql.split())] = plan
    db.close()
    assert checked >= 8  # the per-batch statements really were exercised
    assert not bad, "\n".join(f"{k}: {v}" for k, v in bad.items())


def test_an_incremental_run_that_finds_nothing_new_keeps_the_manifest(harness, tmp_path, monkeypatch):
    """At tens of millions of instances building manifest.csv reads every exported row: a nightly run
    that exported nothing keeps the manifest it published last (the target still holds its bytes);
    a run that exports one more instance builds it again."""
    import shutil

    from pydicom.data import get_testdata_file

    from flows.anonymize import anonymize
    from medanon import export
    from medanon.request import RunRequest

    monkeypatch.setenv("MEDANON_KEY", TEST_KEY)
    built = count_manifest_builds(monkeypatch)
    src, out = tmp_path / "archive", tmp_path / "out"
    build_sample_archive(src)

    def run():
        return anonymize(RunRequest(source=str(src), target=str(out), state_dir=str(tmp_path / "st"), label="inc"))

    first = run()
    manifest = out / export.MANIFEST_NAME
    published = (manifest.read_bytes(), manifest.stat().st_mtime_ns)
    assert len(built) == 1 and first["exported"] >= 1
    again = run()
    assert again["exported"] == 0 and len(built) == 1
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == published
    (src / "later").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "later" / "new.dcm")
    more = run()
    assert more["exported"] == 1 and len(built) == 2
    rows = manifest.read_text().splitlines()
    assert len(rows) == len(published[0].decode().splitlines()) + 1
