"""Shared fixtures. Tests run with their own Prefect home and keys, never the user's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TEST_KEY = "medanon-test-key-0123456789abcdef"


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running the medanon CLI in a subprocess with an isolated Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MEDANON_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MEDANON_KEY=TEST_KEY,
        PYTHONWARNINGS="ignore",
    )
    return env


def run_cli(args: list[str], env: dict, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "medanon.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))
    if check and proc.returncode != 0:
        raise AssertionError(f"medanon {args[0]} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def run_json(args: list[str], env: dict) -> dict:
    proc = run_cli([*args, "--json"], env)
    return json.loads(proc.stdout.strip().splitlines()[-1])
