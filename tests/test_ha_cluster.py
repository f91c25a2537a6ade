"""An HA pair end to end: a real two-node Alertmanager cluster, two real exporters, one real PostgreSQL.

Everything runs on loopback and is started here, except PostgreSQL (the test stack's).
Alertmanager runs as a cluster of two (gossip on 127.0.0.1), its one webhook receiver
lists both exporters, and alerts are posted to both nodes, as Prometheus does.  Every
alert is its own group (``group_by: ['...']``), so each alert is one notification.

- **SIGKILL of a replica** while 1,000 notifications flow: exporter A (the lease holder)
  is killed half-way; every alert ends up stored exactly once, the figures of both
  replicas (A restarted) equal the hand-computed ones, and the standby took the lease
  over (the time is measured and printed).
- **PostgreSQL restarted** while the 500 resolutions flow: the webhook answers 503 while
  the server is away, Alertmanager retries, nothing is lost, and both exporters recover
  without a restart.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from helpers import ExporterProcess, free_port, metric_values, run_exporter
from stack import Stack
from test_continuity_store_pg import pg_ctl
from test_continuity_support import body, payload, post
from test_ha_pg import database, figure

SERVICES = [f"svc{i}" for i in range(10)]
PER_SERVICE = 100  # alerts per service: 1,000 in all
RESOLVED = SERVICES[:5]  # these services' alerts are resolved in the second phase
DURATION = 500.0  # each resolved service's incident lasts exactly this long

CONFIG = "global: {interval: 1h, timeout: 5s}\ncontinuity:\n  store:\n    url: ${MCE_TEST_STORE_URL}\n  services:\n" + (
    "".join(f"    - {{name: {s}, incident_match: {{service: {s}}}}}\n" for s in SERVICES)
)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class AmNode:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.load(resp)

    def post_alerts(self, alerts: list[dict[str, object]]) -> None:
        req = urllib.request.Request(
            self.url + "/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return sum(metric_values(text, name).values())


@contextlib.contextmanager
def alertmanager_cluster(tmp_path: Path, webhooks: list[str]) -> Iterator[list[AmNode]]:
    """Two Alertmanagers gossiping on loopback, one receiver listing every URL of ``webhooks``."""
    config = {
        "route": {
            "receiver": "exporters",
            "group_by": ["..."],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "24h",
        },
        "receivers": [
            {
                "name": "exporters",
                "webhook_configs": [{"url": url, "send_resolved": True, "max_alerts": 0} for url in webhooks],
            }
        ],
    }
    conf = tmp_path / "alertmanager.yml"
    conf.write_text(json.dumps(config))
    web = [free_port(), free_port()]
    gossip = [free_port(), free_port()]
    nodes: list[AmNode] = []
    try:
        for i in range(2):
            data = tmp_path / f"am{i}"
            data.mkdir()
            log = tmp_path / f"am{i}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        "prometheus-alertmanager",
                        f"--config.file={conf}",
                        f"--storage.path={data}",
                        f"--web.listen-address=127.0.0.1:{web[i]}",
                        f"--cluster.listen-address=127.0.0.1:{gossip[i]}",
                        f"--cluster.advertise-address=127.0.0.1:{gossip[i]}",
                        f"--cluster.peer=127.0.0.1:{gossip[1 - i]}",
                        "--cluster.peer-timeout=3s",
                        "--cluster.gossip-interval=50ms",
                        "--cluster.pushpull-interval=2s",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            nodes.append(AmNode(proc, f"http://127.0.0.1:{web[i]}", log))
        deadline = time.monotonic() + 60
        while True:
            try:
                states = [n.get("/api/v2/status") for n in nodes]
                if all(
                    isinstance(s, dict) and s["cluster"]["status"] == "ready" and len(s["cluster"]["peers"]) == 2
                    for s in states
                ):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the Alertmanager cluster did not form:\n" + "\n".join(
                n.log.read_text()[-2000:] for n in nodes
            )
            time.sleep(0.2)
        yield nodes
    finally:
        for n in nodes:
            n.proc.terminate()
        for n in nodes:
            try:
                n.proc.wait(10)
            except subprocess.TimeoutExpired:
                n.proc.kill()


def am_alerts(base: float, service: str, *, resolved: bool) -> list[dict[str, object]]:
    """The alerts of one service as posted to Alertmanager's API: firing, or resolved at start + DURATION."""
    s = SERVICES.index(service)
    start = base + s * 1000
    out: list[dict[str, object]] = []
    for i in range(PER_SERVICE):
        alert: dict[str, object] = {
            "labels": {"alertname": "HaTest", "service": service, "severity": "warning", "n": str(i)},
            "annotations": {"summary": "HA test"},
            "startsAt": iso(start + i),
        }
        alert["endsAt"] = iso(start + DURATION) if resolved else iso(time.time() + 3600)
        out.append(alert)
    return out


def stored(url: str) -> tuple[int, int, int]:
    """(alerts, resolved alerts, incidents) in the database."""
    with psycopg.connect(url, connect_timeout=3) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM alerts), (SELECT count(*) FROM alerts WHERE ends_at IS NOT NULL),"
            " (SELECT count(*) FROM incidents)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def wait_stored(url: str, want: tuple[int, int, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    got: tuple[int, int, int] | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.OperationalError):
            got = stored(url)
            if got == want:
                return
        time.sleep(0.5)
    raise AssertionError(f"stored (alerts, resolved, incidents) = {got}, want {want}")


def leader(exp: ExporterProcess) -> float:
    return sum(metric_values(exp.get("/metrics").text, "mail_exporter_leader").values())


def check_figures(exp: ExporterProcess, *, resolved: bool) -> None:
    """The hand-computed figures: one incident per service, 500 s each for the resolved ones."""

    def settled(text: str) -> bool:
        want_open = 0 if resolved else 1
        return all(
            figure(text, "mail_incidents_open", service=s, severity="warning") == (want_open if s in RESOLVED else 1)
            for s in SERVICES
        )

    text = exp.wait_for(settled, timeout=60)
    for s in SERVICES:
        assert figure(text, "mail_incidents_total", service=s, severity="warning") == 1, s
        if resolved and s in RESOLVED:
            assert figure(text, "mail_mttr_seconds", service=s, window="7d") == pytest.approx(DURATION)
            assert figure(text, "mail_downtime_seconds", service=s, window="7d") == pytest.approx(DURATION)
            assert figure(text, "mail_incident_recovery_seconds_count", service=s, severity="warning") == 1


def test_ha_pair_behind_an_alertmanager_cluster(stack: Stack, tmp_path: Path) -> None:
    pg = stack.postgresql
    stop_pg = functools.partial(
        pg_ctl, str(pg["data_dir"]), "stop", "-m", "fast", bin_dir=str(pg["bin_dir"]), log=str(pg["log"])
    )
    with database(stack) as url:
        env = {"MCE_TEST_STORE_URL": url}
        dirs = {name: tmp_path / name for name in ("a", "a2", "b")}
        for d in dirs.values():
            d.mkdir()
        with run_exporter(dirs["a"], config_text=CONFIG, env=env) as a:
            a.wait_ready()
            with run_exporter(dirs["b"], config_text=CONFIG, env=env) as b:
                b.wait_ready()
                assert (leader(a), leader(b)) == (1.0, 0.0)  # the first one up holds the lease
                with alertmanager_cluster(tmp_path, [a.url + "/alertmanager", b.url + "/alertmanager"]) as nodes:
                    base = time.time() - 4 * 3600
                    # --- phase 1: 1,000 firing alerts, A killed half-way ---------------------------
                    batches = [am_alerts(base, s, resolved=False) for s in SERVICES]
                    killed_at = 0.0
                    for i, batch in enumerate(batches):
                        for node in nodes:  # as Prometheus does: every alert to every node
                            node.post_alerts(batch)
                        if i == len(batches) // 2:
                            a.proc.send_signal(signal.SIGKILL)
                            killed_at = time.monotonic()
                            a.proc.wait(10)
                        time.sleep(0.3)
                    took = 0.0
                    while leader(b) != 1.0:
                        took = time.monotonic() - killed_at
                        assert took < 60, "the standby never took the lease over"
                        time.sleep(0.1)
                    took = time.monotonic() - killed_at
                    print(f"\nlease failover after SIGKILL of the holder: {took:.2f} s (lease_ttl 6s)")
                    wait_stored(url, (1000, 0, 10), timeout=120)
                    check_figures(b, resolved=False)
                    with run_exporter(dirs["a2"], config_text=CONFIG, env=env) as a2:
                        a2.wait_ready()
                        check_figures(a2, resolved=False)
                        assert leader(a2) == 0.0  # b keeps the lease
                        # --- phase 2: 500 resolutions, PostgreSQL restarted in the middle --------
                        failed_before = sum(n.metric("alertmanager_notifications_failed_total") for n in nodes)
                        for i, service in enumerate(RESOLVED):
                            for node in nodes:
                                node.post_alerts(am_alerts(base, service, resolved=True))
                            if i == 1:
                                stop_pg()
                                try:
                                    probe = body(payload([]))
                                    for exp in (b, a2):  # answered at once, without the store: 503, retry
                                        assert post(exp.url + "/alertmanager", probe)[0] == 503
                                    time.sleep(3)  # Alertmanager's deliveries fail meanwhile
                                finally:
                                    stack.start("postgresql")
                        wait_stored(url, (1000, 500, 10), timeout=120)
                        failed = sum(n.metric("alertmanager_notifications_failed_total") for n in nodes)
                        assert failed > failed_before, "no delivery failed while PostgreSQL was down"
                        for exp in (b, a2):
                            check_figures(exp, resolved=True)
                        with psycopg.connect(url) as conn:
                            dup = conn.execute(
                                "SELECT count(*) FROM (SELECT fingerprint FROM alerts GROUP BY fingerprint"
                                " HAVING count(*) > 1) d"
                            ).fetchone()
                        assert dup == (0,), "an alert stored twice"
                        assert str(pg["password"]) not in b.logs() + a2.logs()
    assert os.path.isdir(tmp_path)
