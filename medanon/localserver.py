"""A Prefect server on 127.0.0.1 for the tests, the benchmark and local trials.

``prefect_server(home)`` starts ``prefect server start`` on a free loopback port with its own
Prefect home and a clean environment, waits until its API answers, yields the API URL, and stops
the server and its children on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM a process started with start_new_session=True and its children; SIGKILL if it lingers."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def prefect_server(home: Path):
    """A real Prefect server (`prefect server start`) on a free 127.0.0.1 port; yields its API URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MEDANON_", "AWS_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
    url = f"http://127.0.0.1:{port}/api"
    with open(home / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.time() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    if time.time() > deadline or proc.poll() is not None:
                        raise RuntimeError("prefect server did not start") from None
                    time.sleep(0.3)
            yield url
        finally:
            stop_group(proc)
