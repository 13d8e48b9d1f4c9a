"""A real moto S3 server in a separate process, bound to 127.0.0.1 only.

Usable as a library (``MotoS3Server``), as pytest fixtures (``moto_s3`` needs
``aws_test_env``), and as a script::

    python tests/s3server.py --port 5005 --bucket my-bucket

The script is moto's own server (the same WSGI app that ``python -m
moto.server`` runs) with two additions:

- the ``--bucket`` buckets are created in the backend *before* the port is bound,
  so a client retrying against a restarted server never sees a window where the
  server answers but its bucket does not exist (moto keeps its state in memory: a
  restart loses everything);
- ``--quota-bytes N`` enforces a storage quota the way Ceph RGW does: once the
  object bytes stored through this server would exceed N, a PUT (or part upload)
  is refused with HTTP 403 ``QuotaExceeded``. The operator's "raise the quota" is
  ``PUT /__quota__`` with the new limit (or ``none``) as the body.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that could point boto3 at real credentials or another endpoint.
SCRUB_ENV = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class MotoS3Server:
    """Start / kill / restart a moto server subprocess on a fixed 127.0.0.1 port."""

    def __init__(self, port: int | None = None, buckets: tuple[str, ...] | list[str] = (), log_path: str | None = None,
                 quota_bytes: int | None = None):
        self.port = port or free_port()
        self.buckets = list(buckets)
        self.log_path = log_path
        self.quota_bytes = quota_bytes
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 20.0) -> "MotoS3Server":
        if self.running:
            return self
        cmd = [sys.executable, os.path.abspath(__file__), "--port", str(self.port)]
        for b in self.buckets:
            cmd += ["--bucket", b]
        if self.quota_bytes is not None:
            cmd += ["--quota-bytes", str(self.quota_bytes)]
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
        env.update(DUMMY_ENV)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited early with code {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1) as r:
                    if r.status < 500:
                        return
            except urllib.error.HTTPError as exc:  # answered: it is up
                if exc.code < 500:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("moto server did not come up in time")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Hard kill (SIGKILL), like a crash: in-flight connections are cut."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    stop = kill

    def restart(self, timeout: float = 20.0) -> "MotoS3Server":
        self.kill()
        return self.start(timeout)

    def set_quota(self, quota_bytes: int | None) -> None:
        """Raise (or lower, or lift with None) the storage quota of the running server."""
        body = b"none" if quota_bytes is None else str(quota_bytes).encode()
        req = urllib.request.Request(f"{self.endpoint_url}{QUOTA_PATH}", data=body, method="PUT")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def __enter__(self) -> "MotoS3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


QUOTA_PATH = "/__quota__"


class QuotaMiddleware:
    """WSGI middleware: a storage quota on object bytes written, refused like Ceph RGW does."""

    def __init__(self, app, limit: int | None):
        import threading

        self.app, self.limit, self.used = app, limit, 0
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        length = int(environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get("CONTENT_LENGTH") or 0)
        if path == QUOTA_PATH:
            text = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode()
            with self.lock:
                self.limit = None if text.strip() == "none" else int(text)
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        is_object_put = method == "PUT" and path.strip("/").count("/") >= 1 and "HTTP_X_AMZ_COPY_SOURCE" not in environ
        if not is_object_put:
            return self.app(environ, start_response)
        with self.lock:
            refused = self.limit is not None and self.used + length > self.limit
            if not refused:
                self.used += length
        if refused:
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>QuotaExceeded</Code>"
                    b"<Message>quota exceeded</Message></Error>")
            start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        status_seen = {}

        def recording(status, headers, exc_info=None):
            status_seen["code"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        result = self.app(environ, recording)
        if status_seen.get("code", 500) >= 300:
            with self.lock:
                self.used -= length
        return result


# -- pytest fixtures ----------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover - script mode without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture
    def aws_test_env(monkeypatch, tmp_path):
        """Dummy credentials only; nothing can reach real AWS credentials or config."""
        for k in SCRUB_ENV:
            monkeypatch.delenv(k, raising=False)
        for k, v in DUMMY_ENV.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("NO_PROXY", HOST)
        monkeypatch.setenv("no_proxy", HOST)

    @pytest.fixture
    def moto_s3(aws_test_env, tmp_path):
        """A running server with bucket "medanon-test" (recreated on restart)."""
        server = MotoS3Server(buckets=["medanon-test"], log_path=str(tmp_path / "moto.log"))
        server.start()
        try:
            yield server
        finally:
            server.kill()


# -- script -------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", action="append", default=[])
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--quota-bytes", type=int, default=None)
    args = parser.parse_args(argv)

    os.environ.setdefault("MOTO_PORT", str(args.port))
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for name in args.bucket:
        backend.create_bucket(name, args.region)

    app = DomainDispatcherApplication(create_backend_app)
    if args.quota_bytes is not None:
        app = QuotaMiddleware(app, args.quota_bytes)
    server = make_server(HOST, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
