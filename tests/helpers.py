"""Shared test helpers: run the real exporter as a subprocess and talk to it over HTTP."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.model import Sink


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sink_value(sink: Sink, family: str, **labels: str) -> float | None:
    """The value of the sample of ``family`` with exactly ``labels`` in a sink, or None."""
    want = tuple(sorted(labels.items()))
    for sample in sink.samples():
        if sample.family == family and sample.suffix == "" and tuple(sorted(sample.labels)) == want:
            return sample.value
    return None


@contextlib.asynccontextmanager
async def mta_sts_policy_server(
    server_ctx: ssl.SSLContext, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[int]:
    """An HTTPS server on 127.0.0.1 (port 0) answering ``/.well-known/mta-sts.txt``; yields its port."""
    app = web.Application()
    app.router.add_get("/.well-known/mta-sts.txt", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode()


def http(
    method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> Response:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as err:
        return Response(err.code, err.read(), dict(err.headers))


def get_json(url: str) -> Any:
    """GET a JSON API (Prometheus, Alertmanager); anything but 200 fails the test."""
    resp = http("GET", url)
    assert resp.status == 200, f"GET {url}: {resp.status} {resp.body[:500]!r}"
    return json.loads(resp.body)


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll until ``predicate()`` is truthy and return its value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def metric_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(values: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    want = set(labels.items())
    found = [v for k, v in values.items() if want <= set(k)]
    assert len(found) == 1, f"expected one series matching {labels}, found {len(found)} in {values}"
    return found[0]


@dataclass
class ExporterProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **kw: object) -> Response:
        return http("GET", self.url + path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, data: bytes = b"", headers: dict[str, str] | None = None) -> Response:
        return http("POST", self.url + path, data=data, headers=headers)

    def metrics(self) -> str:
        resp = self.get("/metrics")
        assert resp.status == 200
        return resp.text

    def metrics_gzip(self) -> bytes:
        resp = self.get("/metrics", headers={"Accept-Encoding": "gzip"})
        assert resp.headers.get("Content-Encoding") == "gzip"
        return gzip.decompress(resp.body)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError):
                if self.get("/-/ready", timeout=2).status == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"exporter not ready after {timeout}s:\n{self.logs()}")

    def wait_for(self, predicate, timeout: float = 20, interval: float = 0.2) -> str:  # type: ignore[no-untyped-def]
        """Poll /metrics until predicate(text) is true; return the text."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.metrics()
            if predicate(text):
                return text
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout}s; last metrics:\n{text[-3000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def run_exporter(
    tmp_path: Path, *args: str, config_text: str | None = None, env: dict[str, str] | None = None
) -> Iterator[ExporterProcess]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "exporter",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.path={tmp_path / 'data'}",
        *args,
    ]
    if config_text is not None:
        cfg = tmp_path / "config.yml"
        cfg.write_text(config_text)
        argv.append(f"--config.file={cfg}")
    log_path = tmp_path / f"exporter-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=tmp_path
        )
    exp = ExporterProcess(proc, port, log_path)
    try:
        yield exp
    finally:
        exp.stop()


def readable_source(dest: Path) -> Path:
    """A copy of the ``exporter`` package under ``dest`` that every user can read.

    Tests that run the exporter as an unprivileged user put this first on PYTHONPATH:
    the checkout itself may sit in a directory only root can enter (a fresh clone in
    ``mktemp -d``, as ``ci-fresh`` makes).  ``dest`` and its parents must be searchable.
    """
    import shutil

    root = Path(__file__).resolve().parent.parent
    target = dest / "src"
    shutil.copytree(root / "exporter", target / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target
