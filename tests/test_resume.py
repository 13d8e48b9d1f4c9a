"""Interruption, a full disk, and incremental runs, on real processes and real filesystems."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from medanon.samples import build_series_archive
from conftest import ROOT, run_cli, run_json, tree_bytes


def _no_temp(root: Path) -> bool:
    return not any(p.name.startswith(".medanon-tmp-") for p in root.rglob("*"))


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("big") / "src"
    build_series_archive(root, 400, per_series=40)
    return root


@pytest.fixture(scope="module")
def reference(big_archive, tmp_path_factory):
    """An uninterrupted run of the same archive with the same key."""
    from conftest import TEST_KEY

    tmp = tmp_path_factory.mktemp("ref")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MEDANON_"))}
    env.update(PREFECT_HOME=str(tmp / "ph"), MEDANON_KEY=TEST_KEY, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    out = tmp / "out"
    summary = run_json(["run", str(big_archive), str(out), "--state-dir", str(tmp / "state"), "--batch-size", "10"],
                       env)
    assert summary["exported"] == 400
    return out


def test_sigkill_mid_export_then_rerun_equals_uninterrupted(big_archive, reference, tmp_path, cli_env):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "medanon.cli", "run", str(big_archive), str(out), "--state-dir",
            str(tmp_path / "state"), "--batch-size", "10", "--json"]
    proc = subprocess.Popen(args, env=cli_env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 180
    written = 0
    while time.time() < deadline and proc.poll() is None:
        written = sum(1 for _ in out.rglob("*.dcm")) if out.exists() else 0
        if written >= 60:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its embedded Prefect server, at once
    proc.wait()
    assert 0 < written < 400, "the kill must land mid-export"
    partial = sum(1 for _ in out.rglob("*.dcm"))
    assert partial < 400
    # rerun the same command: finishes the rest, redoes nothing finished
    summary = run_json(args[3:-1], cli_env)
    assert summary["exported"] + summary["skipped_existing"] + summary["skipped_identical"] == 400
    assert summary["skipped_existing"] > 0
    assert _no_temp(out)
    assert tree_bytes(out) == tree_bytes(reference)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_disk_full_stops_cleanly_and_continues_on_a_second_target(tmp_path, cli_env):
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "2560k"):
        pytest.skip("this machine does not allow mounting a tmpfs (needs root and mount rights)")
    try:
        src = tmp_path / "src"
        build_series_archive(src, 80, per_series=20)  # about 3.2 MB of CT instances
        state = str(tmp_path / "state")
        proc = run_cli(["run", str(src), str(small), "--state-dir", state, "--batch-size", "8", "--json"],
                       cli_env, check=False)
        assert proc.returncode == 75, proc.stderr[-2000:]
        assert "target full" in proc.stderr and "new TARGET" in proc.stderr
        first = json.loads(proc.stdout.strip().splitlines()[-1])
        assert 0 < first["exported"] < 80 and first["remaining"] > 0
        assert _no_temp(small)
        in_small = tree_bytes(small)
        for name, data in in_small.items():  # every visible file is complete
            if name.endswith(".dcm"):
                pydicom.dcmread(small / name)
        manifest_a = (small / "manifest.csv").read_text().splitlines()
        assert len(manifest_a) - 1 == sum(n.endswith(".dcm") for n in in_small)
        # continue to a new target with the same command
        second = tmp_path / "second"
        summary = run_json(["run", str(src), str(second), "--state-dir", state, "--batch-size", "8"], cli_env)
        assert summary["exported"] == 80 - first["exported"]
        in_second = tree_bytes(second)
        # the union equals a full run
        full = tmp_path / "full"
        run_json(["run", str(src), str(full), "--state-dir", str(tmp_path / "state-full")], cli_env)
        union = {k: v for k, v in {**in_small, **in_second}.items() if k.endswith(".dcm")}
        assert union == {k: v for k, v in tree_bytes(full).items() if k.endswith(".dcm")}
        assert not set(k for k in in_small if k.endswith(".dcm")) & set(k for k in in_second if k.endswith(".dcm"))
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_byte_budget_stops_with_exit_75(tmp_path, cli_env):
    src = tmp_path / "src"
    build_series_archive(src, 30, per_series=10)
    state = str(tmp_path / "state")
    proc = run_cli(["run", str(src), str(tmp_path / "a"), "--state-dir", state, "--byte-budget", "500000",
                    "--batch-size", "5", "--json"], cli_env, check=False)
    assert proc.returncode == 75
    first = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 < first["exported"] < 30
    assert sum(p.stat().st_size for p in (tmp_path / "a").rglob("*.dcm")) <= 500000
    summary = run_json(["run", str(src), str(tmp_path / "b"), "--state-dir", state, "--batch-size", "5"], cli_env)
    assert summary["exported"] == 30 - first["exported"]


def test_incremental_run_processes_only_new_instances(tmp_path, cli_env):
    src = tmp_path / "src"
    # 40 instances: series 0-2 of patient 0, series 3 of patient 1
    build_series_archive(src, 40, per_series=10, per_patient_series=3)
    out = tmp_path / "out"
    state = str(tmp_path / "state")
    first = run_json(["run", str(src), str(out), "--state-dir", state], cli_env)
    assert first["exported"] == 40 and first["skipped_existing"] == 0
    patients_before = {p.name for p in out.iterdir() if p.is_dir()}
    studies_before = {p.relative_to(out).as_posix() for p in out.glob("*/*") if p.is_dir()}
    assert len(patients_before) == 2
    # new: 5 instances of a new series in patient 1's existing study, 10 of a new patient 2
    build_series_archive(src / "incoming", 5, per_series=10, per_patient_series=3, start=40)
    build_series_archive(src / "incoming2", 10, per_series=10, per_patient_series=3, start=60)
    second = run_json(["run", str(src), str(out), "--state-dir", state], cli_env)
    assert second["exported"] == 15
    assert second["skipped_existing"] == 40
    assert second["discovered"] == 55
    patients_after = {p.name for p in out.iterdir() if p.is_dir()}
    assert patients_before < patients_after and len(patients_after) == 3  # existing pseudonyms kept
    studies_after = {p.relative_to(out).as_posix() for p in out.glob("*/*") if p.is_dir()}
    assert studies_before < studies_after and len(studies_after) == len(studies_before) + 1
    new_in_old_study = [p for p in out.glob("*/*/*.dcm") if p.parent.relative_to(out).as_posix() in studies_before
                        and pydicom.dcmread(p).InstanceNumber <= 5 and "BENCH" not in str(p)]
    assert len(list(out.rglob("*.dcm"))) == 55
    assert len(new_in_old_study) >= 5
    # a run with nothing new does nothing
    third = run_json(["run", str(src), str(out), "--state-dir", state], cli_env)
    assert third["exported"] == 0 and third["skipped_existing"] == 55


def test_fresh_state_dir_never_trusts_an_old_cached_batch(tmp_path, cli_env):
    """Prefect's result cache must not stand in for writes another state store recorded."""
    src = tmp_path / "src"
    build_series_archive(src, 12, per_series=6)
    out = tmp_path / "out"
    first = run_json(["run", str(src), str(out), "--state-dir", str(tmp_path / "s1"), "--batch-size", "4"], cli_env)
    assert first["exported"] == 12
    shutil.rmtree(out)
    # same Prefect home (same result cache), new state dir: everything is written again
    again = run_json(["run", str(src), str(out), "--state-dir", str(tmp_path / "s2"), "--batch-size", "4"], cli_env)
    assert again["exported"] == 12
    assert len(list(out.rglob("*.dcm"))) == 12


def test_a_second_run_on_a_state_store_in_use_stops_and_a_killed_holder_frees_it(tmp_path, cli_env):
    """Two runs on one state store would scrub the same files side by side: the second stops at
    once (exit 2, the holder named, nothing written). A holder killed with SIGKILL leaves no lock."""
    src = tmp_path / "src"
    build_series_archive(src, 6, per_series=6)
    state, out = tmp_path / "state", tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom medanon.state import run_lock\n"
         "with run_lock(sys.argv[1], 'first-run'):\n    print('held', flush=True)\n    time.sleep(600)\n",
         str(state)], cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_cli(["run", str(src), str(out), "--state-dir", str(state)], cli_env, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        error = proc.stderr.strip().splitlines()[-1]
        assert error.startswith("medanon: error: the state store is in use by another run (pid "
                                f"{holder.pid} on "), error
        assert "flow run first-run" in error and str(state) not in error
        assert not out.exists() or not list(out.rglob("*.dcm"))
    finally:
        holder.kill()
        holder.wait()
    summary = run_json(["run", str(src), str(out), "--state-dir", str(state)], cli_env)
    assert summary["exported"] == 6
