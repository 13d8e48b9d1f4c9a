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


def test_deployment_suspends_on_full_target_and_resumes_with_new_target(prefect_server_api, tmp_path):
    api, home = prefect_server_api
    src = tmp_path / "src"
    build_series_archive(src, 30, per_series=10)
    first, second = tmp_path / "first", tmp_path / "second"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MEDANON_"))}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home), MEDANON_KEY=TEST_KEY,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_RUNNER_POLL_FREQUENCY="1",
               PYTHONWARNINGS="ignore")
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "medanon.cli", "serve"], env=env, cwd=str(ROOT), stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
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
                fr = await client.create_flow_run_from_deployment(dep.id, parameters={"request": {
                    "source": str(src), "target": str(first), "state_dir": str(tmp_path / "state"),
                    "label": "deploy-test", "batch_size": 5, "byte_budget": 700000}})
                return fr.id

        flow_run_id = asyncio.run(trigger())
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
