"""Fuzz targets: one per parser that reads untrusted bytes, shared by two fuzzers.

``tests/test_fuzz.py`` drives them with hypothesis (bounded, in CI) and
``benchmarks/fuzz/atheris_fuzz.py`` with atheris (coverage-guided, long runs).  Each
target takes raw bytes, as a broken server, a hostile zone or a stray client would send
them, and checks the parser's contract: it raises nothing but its documented error, and
what it returns satisfies the parser's invariants.  A failed assertion or any other
exception is a finding; the input that caused it goes into ``corpus/<target>/`` as a
regression seed (see docs/testing.md, "Fuzzing").

The ``render_*`` functions write parsed values back in the parser's input syntax, for
the round-trip properties (``parse(render(x)) == x``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import typing
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from exporter import config as cfgmod
from exporter.config.decode import Duration, format_duration
from exporter.continuity import webhook
from exporter.core.errors import ConfigError, WebhookError
from exporter.core.model import CheckState
from exporter.core.secrets import Secret
from exporter.logs import dovecot as dovecot_log
from exporter.logs import exim as exim_log
from exporter.logs import postfix as postfix_log
from exporter.logs.parsers import ParseOptions
from exporter.logs.record import LogRecord, parse_line, program_class
from exporter.logs.sources.syslog import Framer, parse_syslog_frame
from exporter.logs.tally import Tally
from exporter.probers import dnsrecords
from exporter.queues.showq_parse import MAX_RECIPIENTS, ShowqMessage, ShowqParser, parse_all
from exporter.roundtrip import authresults, received
from exporter.roundtrip import verdict as rverdict

CORPUS = Path(__file__).resolve().parent / "corpus"
#: Directory that relative ``*_file`` secrets in config inputs resolve against.
SECRETS_DIR = Path(__file__).resolve().parent / "secrets"
#: ``${MCE_FUZZ_SECRET}`` in config seeds; set here so that every fuzzer sees the same value.
ENV_SECRET = "env-secret-value-for-fuzzing"
os.environ.setdefault("MCE_FUZZ_SECRET", ENV_SECRET)


def corpus(target: str) -> list[tuple[str, bytes]]:
    """The committed seeds of a target: ``(file name, content)``, sorted by name."""
    return [(p.name, p.read_bytes()) for p in sorted((CORPUS / target).iterdir()) if p.is_file()]


# --- showq ---------------------------------------------------------------------------------------


def render_showq(messages: Iterable[ShowqMessage], announce: bool = True) -> bytes:
    """A showq stream (attr_print0) listing ``messages``, as Postfix's showq writes it."""
    out = [b"protocol\0mail_queue_list_protocol\0\0"] if announce else []
    for m in messages:
        attrs = [
            ("queue_name", m.queue_name),
            ("queue_id", m.queue_id),
            ("time", str(m.arrival_time)),
            ("size", str(m.size)),
            ("forced_expire", "1" if m.forced_expire else "0"),
            ("sender", m.sender),
        ]
        attrs += [pair for address, reason in m.recipients for pair in (("recipient", address), ("reason", reason))]
        out.append(b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in attrs) + b"\0")
    out.append(b"\0")
    return b"".join(out)


def _parse_chunked(data: bytes, size: int) -> tuple[list[ShowqMessage], str | None]:
    return parse_all(data[i : i + size] for i in range(0, len(data), size))


def check_showq(data: bytes) -> None:
    messages, error = parse_all([data])
    # Chunking never matters (a socket delivers any split).
    for size in (1, 7, max(1, len(data) // 3)):
        if size == 1 and len(data) > 4096:
            continue
        assert _parse_chunked(data, size) == (messages, error), f"chunks of {size} bytes differ"
    parser = ShowqParser()
    parser.feed(data)
    parser.close()
    assert parser.error == error
    assert error is not None or parser.done  # after close(): a clean end, or an error saying why
    assert error is None or (error and error.isprintable())
    for m in messages:
        assert m.arrival_time >= 0 and m.size >= 0
        assert len(m.recipients) <= MAX_RECIPIENTS
        assert m.recipient_count >= len(m.recipients)
        assert m.recipient_count == len(m.recipients) or len(m.recipients) == MAX_RECIPIENTS
    # A stream cut short yields a prefix of the messages, and an error.
    half, half_error = parse_all([data[: len(data) // 2]])
    assert half == messages[: len(half)]
    assert error is not None or half_error is not None


# --- Received headers ---------------------------------------------------------------------------

_HOP_LABEL = re.compile(r"^\d+:[a-z0-9._:\[\]-]{1,64}$")
_IP_CHARS = re.compile(r"^[0-9A-Fa-f:.]+$")


def render_received(rec: received.Received, date: str) -> str:
    """A Postfix-style ``Received:`` value with every clause of ``rec`` that is set."""
    parts = []
    if rec.from_host:
        parts.append(f"from {rec.from_host}" + (f" ({rec.from_host} [{rec.from_ip}])" if rec.from_ip else ""))
    for keyword, value in (("by", rec.by_host), ("with", rec.protocol), ("id", rec.id), ("for", rec.for_addr)):
        if value:
            parts.append(f"{keyword} {value}")
    return "\n\t".join(parts) + f"; {date}"


def _check_received_fields(rec: received.Received) -> None:
    for name in ("from_host", "from_ip", "by_host", "via", "protocol", "id", "for_addr"):
        value = getattr(rec, name)
        assert value is None or (isinstance(value, str) and "\n" not in value and "\r" not in value), name
    assert rec.from_ip is None or _IP_CHARS.match(rec.from_ip)
    if rec.timestamp is None:
        assert rec.utc_offset is None and rec.whole_seconds
    else:
        assert math.isfinite(rec.timestamp)
    assert rec.utc_offset is None or abs(rec.utc_offset) < 86400


def check_received(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    # The private parser: the public one swallows exceptions, which would hide a bug from the fuzzer.
    rec = received._parse_received(text)
    assert received.parse_received(text) == rec
    _check_received_fields(rec)
    date = received._parse_date(text[: received.MAX_HEADER_CHARS])
    assert date is None or (math.isfinite(date.timestamp) and (date.utc_offset is None or abs(date.utc_offset) < 86400))
    chain = received.parse_chain([text] * (received.MAX_HOPS + 2))
    hops = received.hop_delays(chain, sent_at=1_700_000_000.5)
    assert len(hops) == received.MAX_HOPS
    for hop in hops:
        assert _HOP_LABEL.match(hop.label), hop.label
        assert (hop.delay is None) == (hop.timestamp is None)


# --- Authentication-Results headers ---------------------------------------------------------------

_AR_KEYWORD = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_AR_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}(?:\.[a-z0-9][a-z0-9_-]{0,63})?$")
_AR_TOKEN = re.compile(r"[!#-'*+\-.0-9A-Z^-~]+")  # RFC 2045 token
_AR_RUN = re.compile(r'[^ \t\r\n;()"]+')  # what the parser reads as an unquoted value


def _ar_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ar_value(value: str) -> str:
    return value if _AR_RUN.fullmatch(value) else _ar_quote(value)


def render_authresults(ar: authresults.AuthResults) -> str:
    """An ``Authentication-Results`` value stating ``ar`` (folded, values quoted only when they must be)."""
    parts = []
    for r in ar.results:
        items = [f"{r.method}={r.result}"]
        if r.reason is not None:
            items.append(f"reason={_ar_value(r.reason)}")
        items += [f"{key}={_ar_value(value)}" for key, value in r.properties]
        parts.append(" ".join(items))
    if ar.authserv_id == authresults.NO_AUTHSERV_ID:  # Microsoft 365: no authserv-id
        return ";\n\t".join(parts)
    head = ar.authserv_id if _AR_TOKEN.fullmatch(ar.authserv_id) else _ar_quote(ar.authserv_id)
    if ar.version is not None:
        head += f" {ar.version}"
    return f"{head}; none" if not ar.results else f"{head};\n\t" + ";\n\t".join(parts)


def _printable_within(value: str, limit: int) -> bool:
    return len(value) <= limit and value.isprintable()


def _check_authresults_fields(ar: authresults.AuthResults) -> None:
    assert _printable_within(ar.authserv_id, authresults.MAX_AUTHSERV_ID_CHARS), ar.authserv_id
    assert ar.authserv_id == ar.authserv_id.strip().lower(), ar.authserv_id
    if ar.authserv_id == authresults.NO_AUTHSERV_ID:
        assert ar.results and ar.version is None, ar
    assert ar.version is None or 0 <= ar.version < 10**9
    assert len(ar.results) <= authresults.MAX_RESULTS
    for r in ar.results:
        assert _AR_KEYWORD.match(r.method) and _AR_KEYWORD.match(r.result), r
        assert r.reason is None or _printable_within(r.reason, authresults.MAX_VALUE_CHARS), r.reason
        assert len(r.properties) <= authresults.MAX_PROPERTIES
        for key, value in r.properties:
            assert _AR_KEY.match(key) and key != "reason", key
            assert _printable_within(value, authresults.MAX_VALUE_CHARS), value
        assert r.comment == "" or _printable_within(r.comment, authresults.MAX_VALUE_CHARS), r.comment
        assert r in ar.get(r.method.upper())


def check_authresults(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    # The private parser: the public one swallows exceptions, which would hide a bug from the fuzzer.
    ar = authresults._parse(text)
    assert authresults.parse_authentication_results(text) == ar
    if ar is not None:
        _check_authresults_fields(ar)
        again = render_authresults(ar)
        if len(again) <= authresults.MAX_HEADER_CHARS:  # quoting can lengthen a value written unquoted
            assert authresults._parse(again) == ar, (again, ar)
    # Only the fields of the asked authserv-id count; verdicts come from the bounded set.
    headers = [text, "forged.example; spf=pass; dkim=pass", text]
    wanted = {"example.com", authresults.NO_AUTHSERV_ID, "forged.example"} | ({ar.authserv_id} if ar else set())
    for authserv_id in wanted:
        chosen = authresults.results_for(headers, authserv_id)
        assert all(x.authserv_id == authserv_id for x in chosen), (authserv_id, chosen)
        mine = 2 if ar is not None and ar.authserv_id == authserv_id else 0
        assert len(chosen) == mine + (authserv_id == "forged.example"), (authserv_id, chosen)
        for method in (*authresults.METHODS, "compauth", "X-Unknown"):
            found = [r.result for x in chosen for r in x.get(method)]
            result = authresults.verdict(chosen, method)
            assert result in authresults.RESULTS, result
            if not found or "pass" in found:
                assert result == ("pass" if found else "none"), (found, result)
            else:
                first = "fail" if found[0] == "hardfail" else found[0]
                assert result == (first if first in authresults.RESULTS else "other"), (found, result)
    # The whole verdict (exporter/roundtrip/verdict.py) stays inside its label sets, whatever the
    # fields say, the spam filters' fields included.
    fields = [("Authentication-Results", text)] + [(name, text) for name in (*rverdict.SPAM_HEADERS, "X-Rspamd-Score")]
    for authserv_id in (*wanted, None):
        v = rverdict.judge(fields, authserv_id=authserv_id, from_domain=text[:300])
        assert [m for m, _ in v.auth][:3] == (list(rverdict.AUTH_METHODS) if authserv_id is not None else [])
        assert all(r in authresults.RESULTS for _, r in v.auth), v
        assert v.dmarc_policy in rverdict.DMARC_POLICIES and v.dmarc_disposition in rverdict.DMARC_POLICIES, v
        assert v.spam in rverdict.SPAM_VERDICTS, v
        assert v.spam_score is None or math.isfinite(v.spam_score), v
        assert v.header_present == bool(authresults.results_for([text], authserv_id or "")) or authserv_id is None


# --- Alertmanager webhook ---------------------------------------------------------------------

_ERROR_PATH = re.compile(
    r"^(body|payload|version|status|receiver|groupKey|externalURL|groupLabels|commonLabels|"
    r"commonAnnotations|truncatedAlerts|alerts)\b"
)


def _check_alert_labels(labels: tuple[tuple[str, str], ...]) -> None:
    names = [k for k, _ in labels]
    assert names == sorted(set(names))
    assert all(0 < len(k) <= webhook.MAX_LABEL_NAME and len(v) <= webhook.MAX_LABEL_VALUE for k, v in labels)


def check_webhook(data: bytes) -> None:
    try:
        note = webhook.parse_notification(data)
    except WebhookError as exc:
        message = str(exc)
        assert exc.status == 400
        assert _ERROR_PATH.match(message), message
        assert len(message) <= 512, len(message)
    else:
        assert note.status in ("firing", "resolved") and note.truncated_alerts >= 0
        for alert in note.alerts:
            assert re.fullmatch(r"[!-~]{1,128}", alert.fingerprint)
            assert abs(alert.starts_ms - alert.starts_at * 1000) < 1
            if alert.status == "resolved":
                assert alert.ends_at is not None and alert.ends_at >= alert.starts_at
            else:
                assert alert.ends_at is None
            _check_alert_labels(alert.labels)
    try:
        active = webhook.parse_active_alerts(data)
    except WebhookError as exc:
        assert exc.status == 502 and str(exc).startswith("alertmanager /api/v2/alerts: ")
    else:
        for a in active:
            assert re.fullmatch(r"[!-~]{1,128}", a.fingerprint) and isinstance(a.state, str)
            _check_alert_labels(a.labels)


def render_notification(status: str, alerts: list[dict[str, Any]], **extra: Any) -> bytes:
    """A version 4 webhook body, the way Alertmanager's notify/webhook writes it."""
    body = {"version": "4", "status": status, "receiver": "mail", "groupKey": "{}:{}", "alerts": alerts, **extra}
    return json.dumps(body).encode()


# --- DNS TXT records -------------------------------------------------------------------------------

TXT_PARSERS: dict[str, Callable[[str], dnsrecords.RecordCheck]] = {
    "spf": dnsrecords.parse_spf,
    "dmarc": dnsrecords.parse_dmarc,
    "mta_sts": dnsrecords.parse_mta_sts_txt,
    "tlsrpt": dnsrecords.parse_tlsrpt,
    "dkim": dnsrecords.parse_dkim,
    "mta_sts_policy": dnsrecords.parse_mta_sts_policy,
}
_IS = {"spf": dnsrecords.is_spf, "mta_sts": dnsrecords.is_sts, "tlsrpt": dnsrecords.is_tlsrpt}
_SPF_LOOKUPS = {"include", "a", "mx", "ptr", "exists", "redirect"}
_SPF_AMBIGUOUS = re.compile(r"(?:^| )[+?~-]?(?:all|include|a|mx|ptr|ip4|ip6|exists)=", re.IGNORECASE)


_SPF_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}


def _spf_term(name: str, value: str) -> str:
    mechanism = name.lstrip("+-?~") in _SPF_MECHANISMS and (not value or value[0] in ":/")
    return name + value if mechanism else f"{name}={value}"


def render_spf(fields: Iterable[tuple[str, str]]) -> str:
    """An SPF record from :func:`~exporter.probers.dnsrecords.parse_spf` fields (mechanisms and modifiers)."""
    return " ".join(["v=spf1", *(_spf_term(name, value) for name, value in fields)])


def render_tags(fields: Iterable[tuple[str, str]], sep: str = "; ") -> str:
    """A DMARC-style tag list, or an MTA-STS / TLS-RPT field list."""
    return sep.join(f"{name}={value}" for name, value in fields)


def _check_record(kind: str, text: str, result: dnsrecords.RecordCheck) -> None:
    assert isinstance(result, dnsrecords.RecordCheck)
    if result.ok:
        # "ok", or "ok (<note>)": parse_dmarc notes a report URI it ignores
        assert result.reason == "ok" or re.fullmatch(r"ok \([ -~]+\)", result.reason), result.reason
        assert len(result.reason) <= 100, result.reason
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.fields)
        if kind in _IS:
            assert _IS[kind](text), f"{kind} parser accepts what is_{kind} rejects"
    else:
        assert result.fields == ()
        assert result.reason and result.reason.isascii() and result.reason.isprintable(), result.reason
        assert len(result.reason) <= 100, result.reason


def _check_reparse(kind: str, text: str, result: dnsrecords.RecordCheck) -> None:
    """A valid record, written back from its fields, parses to the same fields."""
    fields = result.fields
    if kind == "spf":
        if _SPF_AMBIGUOUS.search(text):
            return  # a modifier named like a mechanism ("include=:x"): the fields cannot tell them apart
        names = [n.lstrip("+-?~") for n, _ in fields]
        assert sum(n in _SPF_LOOKUPS for n in names) <= 10
        again = dnsrecords.parse_spf(render_spf(fields))
    elif kind == "dmarc":
        again = dnsrecords.parse_dmarc(render_tags(fields))
    elif kind == "mta_sts":
        again = dnsrecords.parse_mta_sts_txt(render_tags([("v", "STSv1"), *fields]))
    elif kind == "tlsrpt":
        again = dnsrecords.parse_tlsrpt(render_tags([("v", "TLSRPTv1"), *fields]))
    else:
        return
    assert again.ok and again.fields == fields, (kind, fields, again)


def check_dns_txt(data: bytes) -> None:
    text = dnsrecords.join_txt([data[:255], data[255:]])  # as read from DNS: split into character-strings
    for kind, parse in TXT_PARSERS.items():
        result = parse(text)
        _check_record(kind, text, result)
        if result.ok:
            _check_reparse(kind, text, result)


# --- config ------------------------------------------------------------------------------------------

_LINE = re.compile(r"\(line (\d+)\)$")


def _is_duration(tp: Any) -> bool:
    return bool(tp == Duration or Duration in typing.get_args(tp))


def _plain_str(value: str) -> str:
    return value.replace("$", "$$")  # the decoder expands ${ENV} and $$ in every string


def render_config(obj: Any, tp: Any = None) -> Any:
    """A decoded config (or part of one) as the plain YAML data that decodes to it again."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        hints = typing.get_type_hints(type(obj), include_extras=True)
        return {
            str(f.metadata.get("key", f.name)): render_config(getattr(obj, f.name), hints[f.name])
            for f in dataclasses.fields(obj)
        }
    if obj is None or isinstance(obj, bool | int):
        return obj
    if isinstance(obj, float):
        return format_duration(obj) if _is_duration(tp) else obj
    if isinstance(obj, Secret):
        return _plain_str(obj.reveal())
    if isinstance(obj, str):
        return _plain_str(obj)
    if isinstance(obj, tuple):
        item_tp = next(iter(typing.get_args(tp)), None)
        return [render_config(item, item_tp) for item in obj]
    if isinstance(obj, MappingProxyType | dict):
        return {k: render_config(v) for k, v in obj.items()}
    raise TypeError(f"cannot render {type(obj).__name__}")


def check_config_text(text: str) -> cfgmod.Config | None:
    """Load ``text``; return the config, or None after checking the error's contract."""
    try:
        cfg = cfgmod.load_text(text, "fuzz.yml", SECRETS_DIR)
    except ConfigError as exc:
        assert exc.issues
        n_lines = text.count("\n") + 1
        for issue in exc.issues:
            assert issue.file == "fuzz.yml" and issue.message, issue
            m = _LINE.search(issue.message)
            assert m is None or 1 <= int(m.group(1)) <= n_lines, issue
        return None
    again = cfgmod.load_text(yaml.safe_dump(render_config(cfg)), "again.yml")
    assert again == cfg, "config does not round-trip through render_config"
    return cfg


def check_config(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # exporter.config.load refuses it before parsing ("expected UTF-8 text")
    check_config_text(text)


# --- syslog frames ---------------------------------------------------------------------------------

#: A small frame bound, so that the fuzzer reaches the "too long" paths of the framer.
_SYSLOG_MAX_FRAME = 64


def _frame_stream(data: bytes, size: int) -> tuple[list[bytes], Counter[str], bool, bool]:
    errors: Counter[str] = Counter()
    framer = Framer(_SYSLOG_MAX_FRAME, errors)
    frames = []
    for i in range(0, len(data), size):
        frames += framer.feed(data[i : i + size])
    return frames, errors, framer.broken, framer.pending()


def check_syslog_frame(data: bytes) -> None:
    """One syslog message (RFC 3164/5424) and one TCP stream (RFC 6587 framings) from the same bytes."""
    rec = parse_syslog_frame(data, now=1_765_094_400.0)
    if rec is not None:
        text = data.decode("utf-8", "replace")
        assert rec.timestamp is None or math.isfinite(rec.timestamp)
        assert rec.pid is None or 0 <= rec.pid < 10**10
        assert rec.host in text and rec.message in text, rec
        # parse_line names the program of an Exim main log or Dovecot log file line itself.
        assert rec.program in text or rec.program in ("exim", "dovecot"), rec
    # Framing never depends on how TCP cut the stream into segments.
    whole = _frame_stream(data, max(1, len(data)))
    for size in (1, 7):
        if size == 1 and len(data) > 4096:
            continue
        assert _frame_stream(data, size) == whole, f"segments of {size} bytes differ"
    assert all(len(frame) <= _SYSLOG_MAX_FRAME for frame in whole[0])


# --- Exim and Dovecot logs ------------------------------------------------------------------------

#: Label values each log family may carry (the bounded sets the parsers export); domains apart.
_DSN_VALUES = exim_log.DSN_CODES | {"2.other", "4.other", "5.other"}
LOG_LABELS: dict[str, tuple[Iterable[str], ...]] = {
    "mail_log_messages_received_total": (),
    "mail_log_deliveries_total": (exim_log.TRANSPORTS, exim_log.STATUSES),
    "mail_log_delivery_dsn_total": (exim_log.STATUSES, _DSN_VALUES),
    "mail_log_delivery_delay_seconds": (exim_log.TRANSPORTS, ("total",)),
    "mail_log_deliveries_by_domain_total": (exim_log.STATUSES, ()),  # domains: see check_log_tally
    "mail_exim_rejects_total": (exim_log.REJECT_REASONS,),
    "mail_exim_frozen_total": (),
    "mail_exim_panics_total": (),
    "mail_dovecot_logins_total": (dovecot_log.PROTOCOLS, dovecot_log.RESULTS, dovecot_log.REASONS),
    "mail_dovecot_lmtp_deliveries_total": (dovecot_log.LMTP_RESULTS,),
}


def log_options() -> ParseOptions:
    """Options with both kinds of domain label: one configured domain and room for two more."""
    return ParseOptions(domains=frozenset({"example.test"}), top_domains=2)


def check_log_tally(tally: Tally, opts: ParseOptions) -> None:
    """Every count and observation has label values from the bounded sets, and fits the contract."""
    domains = opts.domains | opts.seen_domains | {"other"}
    assert len(opts.seen_domains) <= opts.top_domains
    for (family, values), n in tally.counts.items():
        allowed = LOG_LABELS[family]
        assert len(values) == len(allowed), (family, values)
        for value, legal in zip(values, allowed, strict=True):
            assert value in legal or (family == "mail_log_deliveries_by_domain_total" and value in domains), (
                family,
                values,
            )
        assert n > 0 and math.isfinite(n)
    for (family, values), seen in tally.observations.items():
        assert family in LOG_LABELS and all(math.isfinite(v) and v >= 0 for v in seen), (family, seen)
        assert all(value in legal for value, legal in zip(values, LOG_LABELS[family], strict=True))
    tally.flush(CheckState(), "fuzz")  # validates every key against the metrics contract


def _log_lines(data: bytes, program: str) -> list[LogRecord]:
    """Each line as parse_line splits it, and whole as a message of ``program`` (two ways in)."""
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        rec = parse_line(line, now=1_765_094_400.0)
        if rec is not None:
            out.append(rec)
        out.append(LogRecord(None, "", program, None, line))
    return out


def check_exim_log(data: bytes) -> None:
    tally, opts = Tally(), log_options()
    for rec in _log_lines(data, "exim"):
        if program_class(rec.program) != "exim":
            continue
        # The private parser: the registered one swallows exceptions, which would hide a bug.
        understood = exim_log._parse(rec.message, tally, opts)
        assert understood in (True, False)
        assert exim_log.parse_exim(rec, Tally(), log_options()) is understood
    check_log_tally(tally, opts)


def check_dovecot_log(data: bytes) -> None:
    tally, opts = Tally(), log_options()
    for rec in _log_lines(data, "dovecot"):
        if program_class(rec.program) != "dovecot":
            continue
        understood = dovecot_log._parse(rec.program, rec.message, tally)
        assert understood in (True, False)
        assert dovecot_log.parse_dovecot(rec, Tally(), opts) is understood
    check_log_tally(tally, opts)


# --- Postfix logs ----------------------------------------------------------------------------------

#: Daemons whose handlers every input also goes through, whatever parse_line made of it.
_POSTFIX_PROGRAMS = tuple(
    "postfix/" + d
    for d in (
        "smtpd", "submission/smtpd", "smtp", "lmtp", "local", "virtual", "pipe", "error", "qmgr", "cleanup",
        "bounce", "postscreen", "tlsproxy", "pickup", "master", "brand-new-daemon",
    )
)  # fmt: skip


def fuzz_postfix_log(data: bytes) -> None:
    """Postfix log lines: the parser never raises and counts only bounded label values."""
    opts = ParseOptions(domains=frozenset({"example.com"}), top_domains=2)
    tally = Tally()
    for line in data.decode("utf-8", "replace").splitlines():
        rec = parse_line(line, now=1_765_094_400.0)
        recs = [LogRecord(None, "mx", program, 1, line) for program in _POSTFIX_PROGRAMS]
        if rec is not None and program_class(rec.program) == "postfix":
            recs.append(rec)
        for r in recs:
            # The unguarded parser: parse_postfix swallows exceptions, which would hide a bug.
            understood = postfix_log.parse(r, tally, opts)
            assert understood in (True, False)
            assert postfix_log.parse_postfix(r, Tally(), ParseOptions()) is understood
    domains = opts.domains | opts.seen_domains | {"other"}
    assert len(opts.seen_domains) <= opts.top_domains
    for family, values in [*tally.counts, *tally.observations]:
        allowed = postfix_log.LABEL_SETS[family]
        assert len(values) == len(allowed), (family, values)
        for value, legal in zip(values, allowed, strict=True):
            assert value in (domains if legal is None else legal), (family, values)
    for seen in tally.observations.values():
        assert all(math.isfinite(v) and v >= 0 for v in seen), seen
    tally.flush(CheckState(), "fuzz")  # validates every key against the metrics contract


TARGETS: dict[str, Callable[[bytes], None]] = {
    "config": check_config,
    "showq": check_showq,
    "received": check_received,
    "authresults": check_authresults,
    "webhook": check_webhook,
    "dns_txt": check_dns_txt,
    "exim_log": check_exim_log,
    "dovecot_log": check_dovecot_log,
    "postfix_log": fuzz_postfix_log,
    "syslog_frame": check_syslog_frame,
}
