"""Receiver-side mail authentication of the stack's real verifiers, without exporter code.

scripts/teststack.sh gen_verifiers: a message sent through the signing submission port
(stack.json ``verifiers.submission_signed``) is DKIM-signed by OpenDKIM and relayed to the
verifying inbound port (``verifiers.inbound``), where policyd-spf, a verifying OpenDKIM and
OpenDMARC add their ``Authentication-Results:`` fields (authserv-id ``mx-in.example.test``)
before Dovecot stores it.  DNS (SPF, DKIM keys, DMARC) is the stack's Unbound.  For each test
domain the verdicts must be exactly the expected ones:

* signed.test: spf=pass, dkim=pass (header.d=signed.test), dmarc=pass
* wrongkey.test (DNS publishes another key than the one it is signed with): spf=neutral,
  dkim=fail, dmarc=fail
* spffail.test (SPF allows 192.0.2.0/24 only): spf=fail, dkim=pass, dmarc=pass (DKIM-aligned)

plus: a forged ``Authentication-Results: evil.test; dkim=pass; dmarc=pass`` added by the sender
arrives untouched and changes none of the real verdicts.

The messages go to probe@example.test (whose Maildir other tests read, but only for their own
Message-IDs or probe tokens) and are deleted over IMAP at the end of each test.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import imaplib
import re
import smtplib
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from stack import Stack

SENDER_LOGIN = "probe@example.test"
RECIPIENT = "probe@example.test"
DELIVERY_TIMEOUT = 30.0
AUTHSERV_ID = "mx-in.example.test"
SELECTOR = "mce"
EXPECTED = {
    "signed.test": {"spf": "pass", "dkim": "pass", "dmarc": "pass"},
    "wrongkey.test": {"spf": "neutral", "dkim": "fail", "dmarc": "fail"},
    "spffail.test": {"spf": "fail", "dkim": "pass", "dmarc": "pass"},
}


# -- helpers -------------------------------------------------------------------------------


def verifiers(stack: Stack) -> Mapping[str, Any]:
    try:
        return stack.verifiers
    except KeyError as exc:
        pytest.fail(str(exc.args[0]), pytrace=False)


def tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=stack.ca_file)


def send(stack: Stack, domain: str, extra_headers: tuple[str, ...] = ()) -> str:
    """Submit a message From: and MAIL FROM: probe@DOMAIN on submission_signed; its Message-ID."""
    sub = verifiers(stack)["submission_signed"]
    token = uuid.uuid4().hex
    message_id = f"<{token}@{domain}>"
    sender = f"probe@{domain}"
    lines = [
        f"From: {sender}",
        f"To: {RECIPIENT}",
        f"Subject: mce verifiers smoke {domain} {token}",
        f"Message-ID: {message_id}",
        f"Date: {email.utils.formatdate()}",
        *extra_headers,
        "",
        f"verifiers smoke test for {domain}",
        "",
    ]
    with smtplib.SMTP(sub["host"], int(sub["port"]), timeout=15) as smtp:
        smtp.starttls(context=tls(stack))
        smtp.login(SENDER_LOGIN, stack.password(SENDER_LOGIN))
        refused = smtp.sendmail(sender, [RECIPIENT], "\r\n".join(lines).encode())
    assert refused == {}
    return message_id


def maildir(stack: Stack, user: str) -> Path:
    local, domain = user.split("@")
    return stack.mail_dir / domain / local


def find_delivered(stack: Stack, user: str, message_id: str) -> bytes | None:
    base = maildir(stack, user)
    needle = f"\nMessage-ID: {message_id}".encode()
    for folder in (base, base / ".Junk"):
        for sub in ("new", "cur"):
            d = folder / sub
            if not d.is_dir():
                continue
            for p in d.iterdir():
                try:
                    data = p.read_bytes()
                except FileNotFoundError:  # Dovecot renamed it meanwhile
                    continue
                head = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
                if needle in head:
                    return data
    return None


def wait_delivered(stack: Stack, message_id: str) -> email.message.Message:
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        data = find_delivered(stack, RECIPIENT, message_id)
        if data is not None:
            return email.message_from_bytes(data, policy=email.policy.compat32)
        if time.monotonic() >= deadline:
            pytest.fail(
                f"{message_id} did not reach {RECIPIENT} within {DELIVERY_TIMEOUT:.0f}s (see {stack.postfix_log})",
                pytrace=False,
            )
        time.sleep(0.1)


def unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value)


def strip_comments(value: str) -> str:
    """Drop RFC 5322 comments ("(...)", possibly nested; they may hold ';' and 'x=y')."""
    prev = None
    while prev != value:
        prev, value = value, re.sub(r"\([^()]*\)", "", value)
    return value


def verdicts(msg: email.message.Message, authserv_id: str) -> dict[str, list[str]]:
    """method -> results of every Authentication-Results field whose authserv-id is AUTHSERV_ID."""
    out: dict[str, list[str]] = {}
    for raw in msg.get_all("Authentication-Results") or []:
        parts = strip_comments(unfold(str(raw))).split(";")
        if parts[0].strip().split()[0].lower() != authserv_id:  # authserv-id [version]
            continue
        for resinfo in parts[1:]:
            words = resinfo.split()
            if not words or "=" not in words[0]:
                continue
            method, _, result = words[0].partition("=")
            out.setdefault(method.lower(), []).append(result.lower())
    return out


def dkim_tags(msg: email.message.Message) -> list[dict[str, str]]:
    out = []
    for raw in msg.get_all("DKIM-Signature") or []:
        value = re.sub(r"\s+", "", unfold(str(raw)))
        out.append(dict(tag.split("=", 1) for tag in value.split(";") if "=" in tag))
    return out


def dkim_header_d(msg: email.message.Message, authserv_id: str) -> list[str]:
    """header.d of the dkim results of AUTHSERV_ID."""
    out = []
    for raw in msg.get_all("Authentication-Results") or []:
        value = strip_comments(unfold(str(raw)))
        if value.split(";")[0].strip().split()[0].lower() != authserv_id:
            continue
        out += re.findall(r"(?:^|;)\s*dkim=\w+[^;]*?\bheader\.d=([^\s;]+)", value)
    return out


def imap_delete(stack: Stack, user: str, message_ids: list[str]) -> None:
    """Test cleanup: expunge our messages (by Message-ID) from the user's INBOX and Junk."""
    if not message_ids:
        return
    with imaplib.IMAP4_SSL(stack.host, stack.port("imaps"), ssl_context=tls(stack), timeout=15) as imap:
        imap.login(user, stack.password(user))
        for mailbox in ("INBOX", "Junk"):
            if imap.select(mailbox)[0] != "OK":
                continue
            for mid in message_ids:
                typ, data = imap.uid("SEARCH", "HEADER", "Message-ID", f'"{mid}"')
                uids = b" ".join(d for d in data if d).split() if typ == "OK" else []
                if uids:
                    uid_set = b",".join(uids).decode()
                    imap.uid("STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)")
                    imap.expunge()
        imap.logout()


@pytest.fixture
def sent(stack: Stack) -> Iterator[list[str]]:
    """Message-IDs a test delivered; deleted from the recipient's mailbox afterwards."""
    ids: list[str] = []
    yield ids
    imap_delete(stack, RECIPIENT, ids)
    for mid in ids:
        assert find_delivered(stack, RECIPIENT, mid) is None, f"{mid} was not deleted"


# -- tests ---------------------------------------------------------------------------------


def test_stack_json_describes_the_verifiers(stack: Stack) -> None:
    v = verifiers(stack)
    assert v["authserv_id"] == AUTHSERV_ID
    assert v["selector"] == SELECTOR
    assert set(v["domains"].values()) == set(EXPECTED)
    assert v["expected"] == EXPECTED
    assert v["submission_signed"] == {"host": stack.host, "port": stack.port("submission_signed")}
    assert v["inbound"]["port"] == stack.port("inbound_verified")
    for name in ("opendkim_sign", "opendkim_verify", "opendmarc"):
        assert v["milters"][name]["host"] == stack.host


@pytest.mark.parametrize("domain", sorted(EXPECTED))
def test_verdicts_of_a_message_sent_through_the_signing_submission(stack: Stack, sent: list[str], domain: str) -> None:
    message_id = send(stack, domain)
    sent.append(message_id)
    msg = wait_delivered(stack, message_id)

    # signed by the submission side, with the test domain and selector
    signatures = dkim_tags(msg)
    assert [(s.get("d"), s.get("s")) for s in signatures] == [(domain, SELECTOR)], signatures

    found = verdicts(msg, AUTHSERV_ID)
    expected = EXPECTED[domain]
    for method, result in expected.items():
        assert found.get(method) == [result], (method, found, msg.get_all("Authentication-Results"))
    assert dkim_header_d(msg, AUTHSERV_ID) == [domain]


def test_a_forged_authentication_results_field_changes_nothing(stack: Stack, sent: list[str]) -> None:
    domain = "wrongkey.test"  # really fails DKIM and DMARC
    forged = "Authentication-Results: evil.test; dkim=pass header.d=wrongkey.test; dmarc=pass"
    message_id = send(stack, domain, extra_headers=(forged,))
    sent.append(message_id)
    msg = wait_delivered(stack, message_id)

    fields = [unfold(str(v)) for v in msg.get_all("Authentication-Results") or []]
    assert forged.split(": ", 1)[1] in fields  # delivered as sent
    assert verdicts(msg, "evil.test") == {"dkim": ["pass"], "dmarc": ["pass"]}
    found = verdicts(msg, AUTHSERV_ID)
    for method, result in EXPECTED[domain].items():
        assert found.get(method) == [result], (method, found, fields)
