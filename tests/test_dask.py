"""Scale-out: the flow's batch tasks on a Dask LocalCluster (2 worker processes over TCP on
127.0.0.1) give output identical to a single-process run."""

from __future__ import annotations

import pytest

from medanon.samples import build_series_archive
from conftest import run_json

distributed = pytest.importorskip("distributed", reason="dask extra not installed")


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


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
    finally:
        cluster.close()
    assert _files(tmp_path / "single") == _files(tmp_path / "dask")


def test_process_pool_output_identical(tmp_path, cli_env):
    src = tmp_path / "src"
    build_series_archive(src, 40, per_series=10)
    run_json(["run", str(src), str(tmp_path / "one"), "--state-dir", str(tmp_path / "s1"), "--batch-size", "10"],
             cli_env)
    summary = run_json(["run", str(src), str(tmp_path / "many"), "--state-dir", str(tmp_path / "s2"),
                        "--batch-size", "10", "--workers", "2"], cli_env)
    assert summary["exported"] == 40
    assert _files(tmp_path / "one") == _files(tmp_path / "many")
