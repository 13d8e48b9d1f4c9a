"""Scale-out: the flow's batch tasks on a Dask LocalCluster (2 worker processes over TCP on
127.0.0.1) give output identical to a single-process run."""

from __future__ import annotations

import pytest

from medanon.samples import build_series_archive
from conftest import run_json, tree_bytes

distributed = pytest.importorskip("distributed", reason="dask extra not installed")


def test_dask_cluster_output_identical_to_single_process(tmp_path, cli_env):
    src = tmp_path / "src"
    build_series_archive(src, 60, per_series=15)
    single = run_json(["run", str(src), str(tmp_path / "single"), "--state-dir", str(tmp_path / "s1"),
                       "--batch-size", "10"], cli_env)
    assert single["exported"] == 60
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       protocol="tcp", dashboard_address=None)
    try:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        with distributed.Client(cluster) as client:
            summary = run_json(["run", str(src), str(tmp_path / "dask"), "--state-dir", str(tmp_path / "s2"),
                                "--batch-size", "10", "--dask-address", cluster.scheduler_address], cli_env)
            assert summary["exported"] == 60
            # the batch tasks really ran on the cluster's workers
            processed = client.run(lambda dask_worker: len(dask_worker.data) + dask_worker.state.executed_count)
            assert sum(processed.values()) > 0
            # without a batch size, a run smaller than a batch per worker gives each of the 2 workers
            # an even share: 2 inspection and 2 scrub tasks of 30 instances (1 and 1 of 60 before)
            before = client.run(_executed)
            small = run_json(["run", str(src), str(tmp_path / "dask-even"), "--state-dir", str(tmp_path / "s3"),
                              "--dask-address", cluster.scheduler_address], cli_env)
            after = client.run(_executed)
            ran = {w: after[w] - before[w] for w in after}
            assert sum(ran.values()) == 4, ran
            assert all(n > 0 for n in ran.values()), ran  # both workers took a share
            assert small["exported"] == 60 and small["batch_tasks"] == "dask (2 workers)"
    finally:
        cluster.close()
    assert tree_bytes(tmp_path / "single") == tree_bytes(tmp_path / "dask") == tree_bytes(tmp_path / "dask-even")


def _executed(dask_worker) -> int:
    return dask_worker.state.executed_count


def test_process_pool_output_identical(tmp_path, cli_env):
    src = tmp_path / "src"
    build_series_archive(src, 40, per_series=10)
    run_json(["run", str(src), str(tmp_path / "one"), "--state-dir", str(tmp_path / "s1"), "--batch-size", "10"],
             cli_env)
    summary = run_json(["run", str(src), str(tmp_path / "many"), "--state-dir", str(tmp_path / "s2"),
                        "--batch-size", "10", "--workers", "2"], cli_env)
    assert summary["exported"] == 40
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "many")


def test_automatic_worker_processes(monkeypatch):
    """workers=0 (the default): threads below AUTO_PROCESSES_FROM files or on one CPU, else one
    process per CPU, no more than there are batches or than memory allows; an explicit number wins.
    The CPU count honours a cgroup v2 quota (a container limited to 1.5 CPUs gets 1)."""
    from medanon import pipeline
    from medanon.pipeline import AUTO_PROCESSES_FROM, WORKER_MEMORY, worker_processes

    big = AUTO_PROCESSES_FROM
    assert worker_processes(1, 10 * big, 500, cpus=8) == 1 and worker_processes(3, 10, 500, cpus=1) == 3
    assert worker_processes(0, big - 1, 500, cpus=8, available_memory=None) == 1
    assert worker_processes(0, 10 * big, 500, cpus=1, available_memory=None) == 1
    assert worker_processes(0, big, 500, cpus=64, available_memory=None) == -(-big // 500)  # one per batch
    assert worker_processes(0, 10 * big, 500, cpus=8, available_memory=None) == 8
    assert worker_processes(0, 10 * big, 500, cpus=8, available_memory=3 * WORKER_MEMORY) == 3
    assert worker_processes(0, 10 * big, 500, cpus=8, available_memory=WORKER_MEMORY // 2) == 1

    files = {"/sys/fs/cgroup/cpu.max": "150000 100000"}
    monkeypatch.setattr(pipeline, "_read_first_line", lambda path: files.get(path))
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert pipeline.usable_cpus() == 1
    files["/sys/fs/cgroup/cpu.max"] = "max 100000"
    assert pipeline.usable_cpus() == 4
    files.update({"/sys/fs/cgroup/memory.max": str(3 << 30), "/sys/fs/cgroup/memory.current": str(1 << 30)})
    assert pipeline.available_memory_bytes() <= 2 << 30


def test_small_runs_give_each_worker_process_an_even_batch():
    """A process pool starts a process only when a task finds none idle: fewer batches than
    processes would leave some to start later, one after another. Below a full batch per process,
    each gets an even share (rounded up); threads (1) keep the size. On Dask, ``processes`` is the
    cluster's worker count (tested on a LocalCluster above)."""
    from medanon.pipeline import even_share, inspection_plan, scrub_batch_size

    assert even_share(1250, 2000, 2) == 1000 and even_share(5000, 2000, 2) == 1000
    assert even_share(1250, 2001, 2) == 1001 and even_share(1250, 3, 8) == 1
    assert even_share(1250, 20000, 2) == 1250 and even_share(1250, 2500, 2) == 1250
    assert even_share(500, 2000, 1) == 500 and even_share(500, 0, 4) == 500
    # the scrub: a given size as given, else the automatic one, shared evenly in a small run
    assert scrub_batch_size(None, False, 2000, 2) == 1000 and scrub_batch_size(50, False, 2000, 2) == 50
    assert scrub_batch_size(None, True, 2000, 1) == 500 and scrub_batch_size(None, False, 2000, 1) == 1250
    # inspection: 4x a scrub batch, an even share per process in a small run, max_in_flight at once;
    # in threads one at a time (the GIL; from S3 the task overlaps its own GETs)
    assert inspection_plan(1250, False, 4, 20000, 2) == (5000, 4)
    assert inspection_plan(1250, False, 4, 2000, 2) == (1000, 4)
    assert inspection_plan(1250, False, 4, 2000, 1) == (5000, 4)  # one worker process or Dask worker
    assert inspection_plan(500, True, 4, 2000) == (2000, 1)
