"""Against a real Prefect server (started on 127.0.0.1 by the test) and `medanon serve`:
a deployment run suspends on a full target and completes after it is resumed with a new
target given as input from the operator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from medanon.localserver import prefect_server, stop_group
from medanon.samples import build_series_archive
from conftest import ROOT, TEST_KEY, run_json


@pytest.fixture(scope="module")
def prefect_server_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server-home")
    with prefect_server(home) as url:
        yield url, home


async def _state(api: str, flow_run_id):
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api) as client:
        fr = await client.read_flow_run(flow_run_id)
        return fr.state


def _serve_env(api: str, home) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MEDANON_"))}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home), MEDANON_KEY=TEST_KEY,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_RUNNER_POLL_FREQUENCY="1",
               PYTHONWARNINGS="ignore")
    return env


def _serve(env: dict, tmp_path) -> subprocess.Popen:
    log = open(tmp_path / "serve.log", "w")
    return subprocess.Popen([sys.executable, "-m", "medanon.cli", "serve"], env=env, cwd=str(ROOT), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _trigger(api: str, request: dict):
    """Runs the on-demand deployment (once ``medanon serve`` has registered it) with ``request``."""
    from prefect.client.orchestration import PrefectClient

    async def trigger():
        async with PrefectClient(api) as client:
            deadline = time.time() + 90
            while True:
                try:
                    dep = await client.read_deployment_by_name("anonymize/on-demand")
                    break
                except Exception:  # noqa: BLE001 - not registered yet
                    if time.time() > deadline:
                        raise
                    await asyncio.sleep(1)
            fr = await client.create_flow_run_from_deployment(dep.id, parameters={"request": request})
            return fr.id

    return asyncio.run(trigger())


def test_deployment_suspends_on_full_target_and_resumes_with_new_target(prefect_server_api, tmp_path):
    api, home = prefect_server_api
    src = tmp_path / "src"
    build_series_archive(src, 30, per_series=10)
    first, second = tmp_path / "first", tmp_path / "second"
    env = _serve_env(api, home)
    server = _serve(env, tmp_path)
    try:
        from prefect.client.orchestration import PrefectClient

        flow_run_id = _trigger(api, {"source": str(src), "target": str(first), "state_dir": str(tmp_path / "state"),
                                     "label": "deploy-test", "batch_size": 5, "byte_budget": 700000})
        deadline = time.time() + 240
        state = None
        while time.time() < deadline:
            state = asyncio.run(_state(api, flow_run_id))
            if state.is_paused() or state.is_final():
                break
            time.sleep(1)
        assert state is not None and state.is_paused(), f"expected a suspended run, got {state}"
        assert state.name == "Suspended"
        written_first = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.dcm"))
        assert 0 < len(written_first) < 30

        async def resume():
            async with PrefectClient(api) as client:
                await client.resume_flow_run(flow_run_id, run_input={"new_target": str(second)})

        asyncio.run(resume())
        deadline = time.time() + 240
        while time.time() < deadline:
            state = asyncio.run(_state(api, flow_run_id))
            if state.is_final():
                break
            time.sleep(1)
        assert state.is_completed(), f"run ended {state}; log: {(tmp_path / 'serve.log').read_text()[-3000:]}"
        # the first target may take a little more on re-execution (estimates are by source size)
        written_first = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.dcm"))
        written_second = sorted(p.relative_to(second).as_posix() for p in second.rglob("*.dcm"))
        assert written_second
        assert len(written_first) + len(written_second) == 30
        assert not set(written_first) & set(written_second)
        # the union equals an uninterrupted run
        cli_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        cli_env["PREFECT_HOME"] = str(tmp_path / "cli-home")
        run_json(["run", str(src), str(tmp_path / "full"), "--state-dir", str(tmp_path / "state-full"),
                  "--batch-size", "5"], cli_env)
        full = sorted(p.relative_to(tmp_path / "full").as_posix() for p in (tmp_path / "full").rglob("*.dcm"))
        assert sorted(written_first + written_second) == full
        for rel in written_second:
            assert (second / rel).read_bytes() == (tmp_path / "full" / rel).read_bytes()
    finally:
        stop_group(server)


def test_a_deployment_run_on_a_state_store_in_use_is_cancelled_with_the_reason(prefect_server_api, tmp_path):
    """A scheduled run that comes while the last one still holds the state store ends Cancelled
    (not Failed), saying why, and writes nothing."""
    api, home = prefect_server_api
    src, out, state = tmp_path / "src", tmp_path / "out", tmp_path / "state"
    build_series_archive(src, 4, per_series=4)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom medanon.state import run_lock\n"
         "with run_lock(sys.argv[1], 'nightly'):\n    print('held', flush=True)\n    time.sleep(600)\n",
         str(state)], cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    server = _serve(_serve_env(api, home), tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        flow_run_id = _trigger(api, {"source": str(src), "target": str(out), "state_dir": str(state),
                                     "label": "overlap"})
        deadline = time.time() + 240
        state_ = None
        while time.time() < deadline:
            state_ = asyncio.run(_state(api, flow_run_id))
            if state_.is_final():
                break
            time.sleep(1)
        assert state_ is not None and state_.is_cancelled(), \
            f"run ended {state_}; log: {(tmp_path / 'serve.log').read_text()[-3000:]}"
        assert f"in use by another run (pid {holder.pid} on " in state_.message
        assert "flow run nightly" in state_.message and str(state) not in state_.message
        assert not out.exists() or not list(out.rglob("*.dcm"))
    finally:
        stop_group(server)
        holder.kill()
        holder.wait()
