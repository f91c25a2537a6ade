"""Round trips from both exporters of an HA pair into one mailbox, through the stack's Postfix and Dovecot.

Both replicas run the same route every second into the same mailbox.  Each finds and
deletes only its own probes (it searches for its own tokens), so neither loses a probe
to the other; and only the lease holder sweeps old probe mail: a probe planted two hours
old is swept by the leader, and the standby never sweeps.
"""

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage
from pathlib import Path

from helpers import metric_values, one, run_exporter
from stack import Stack
from test_ha_pg import database
from test_roundtrip_stack import LOG, probe_files, route_cfg, wait_until

from exporter.core.model import Sink
from exporter.roundtrip.receiver import PROBE_HEADER, close_all, new_token
from exporter.roundtrip.route import Route

USER = "archive@archive.example.test"
SWEPT = "swept old probe messages"


def config(stack: Stack) -> str:
    return f"""
global: {{interval: 30s, timeout: 5s}}
continuity:
  store:
    url: ${{MCE_TEST_STORE_URL}}
routes:
  - name: shared
    interval: 1s
    timeout: 10s
    max_age: 1m
    send: {{address: "127.0.0.1:{stack.port("submission")}", tls: starttls,
            tls_config: {{ca_file: "{stack.ca_file}", server_name: mx1.example.test}},
            auth: {{username: {USER}, password: "{stack.password(USER)}"}},
            from: {USER}, to: {USER}}}
    receive: {{address: "127.0.0.1:{stack.port("imap")}", tls: starttls,
               tls_config: {{ca_file: "{stack.ca_file}", server_name: imap.example.test}},
               username: {USER}, password: "{stack.password(USER)}", poll_interval: 1s}}
"""


def plant_old_probe(stack: Stack, user: str = USER) -> str:
    """A probe message made two hours ago, as a crashed exporter would leave behind."""
    token = new_token(time.time() - 7200)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "probe@example.test", user, "old probe"
    msg[PROBE_HEADER] = token
    msg.set_content("left behind")
    with smtplib.SMTP("127.0.0.1", stack.port("smtp"), timeout=10) as smtp:
        smtp.send_message(msg, from_addr="probe@example.test", to_addrs=[user])
    return token


def probes(text: str, result: str) -> float:
    return one(metric_values(text, "mail_roundtrip_probes_total"), route="shared", result=result)


def test_two_replicas_share_a_mailbox_without_taking_each_others_probes(stack: Stack, tmp_path: Path) -> None:
    plant_old_probe(stack)
    with database(stack) as url:
        env = {"MCE_TEST_STORE_URL": url}
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        text = config(stack)
        with run_exporter(tmp_path / "a", config_text=text, env=env) as a:
            a.wait_ready()
            with run_exporter(tmp_path / "b", config_text=text, env=env) as b:
                b.wait_ready()
                texts = [
                    exp.wait_for(lambda t: probes(t, "delivered") >= 15, timeout=90, interval=0.5) for exp in (a, b)
                ]
                texts = [exp.metrics() for exp in (a, b)]
                leaders = [one(metric_values(t, "mail_exporter_leader")) for t in texts]
                assert leaders == [1.0, 0.0]
                for t in texts:
                    assert probes(t, "lost") == 0
                    assert probes(t, "late") == 0
                    assert probes(t, "receive_failed") == 0
                    assert probes(t, "send_failed") == 0
                logs = [a.logs(), b.logs()]
    assert SWEPT in logs[0], "the leader did not sweep the old probe"
    assert SWEPT not in logs[1], "the standby swept"


def planted(stack: Stack, user: str, token: str) -> bool:
    """Whether the planted probe is in the mailbox (Dovecot may rename a file while it is read: ask again)."""
    for _ in range(5):
        try:
            return any(token.encode() in p.read_bytes() for p in probe_files(stack, user))
        except FileNotFoundError:
            continue
    raise AssertionError("the maildir kept changing")


async def test_only_the_lease_holder_sweeps(stack: Stack) -> None:
    """A route whose exporter is a standby leaves old probe mail alone; once it holds the lease it sweeps."""
    leader = False
    user = "ops@example.test"
    route = Route(
        route_cfg(stack, "sweep", user=user, max_age="60s"), imap_timeout=5, send_timeout=10, may_sweep=lambda: leader
    )
    try:
        token = plant_old_probe(stack, user)
        assert await wait_until(lambda: planted(stack, user, token), 15)
        assert await route.run(Sink(route.state), LOG)  # connects (a sweep is due after every connect)
        box = route.mailbox()
        assert await box.sweep_now(10)
        assert box.swept == 0 and planted(stack, user, token)  # a standby: nothing swept
        leader = True
        assert await box.sweep_now(10)
        assert box.swept >= 1  # the planted probe, and any other old one a test left behind
        assert await wait_until(lambda: not planted(stack, user, token), 5)
    finally:
        route.close()
        await close_all()
