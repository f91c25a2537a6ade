"""The rules pack: generated files up to date, promtool, conventions, test coverage, Alertmanager.

- ``promtool check rules`` on every rules file and ``promtool test rules`` on every test file;
- a lint of the monitoring-mixins conventions (names, severities, annotations, runbook
  anchors, group sizes) and of the metrics contract (every metric and label in every
  expression exists in :mod:`exporter.core.metrics`);
- coverage: every alert has a must-fire case with exact labels and annotations, a
  must-not-fire case just before its ``for`` elapses, and another must-not-fire case;
- replicas: the figures every replica of an HA pair exports alike are counted once
  (``max without (instance, pod)``), and nothing else is;
- ``rules/generate.py --check``;
- ``amtool check-config`` and the routing of examples/alertmanager.yml, and its
  inhibitions against a real Alertmanager.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from helpers import free_port

from exporter.core.metrics import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.test.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
ALERTMANAGER_EXAMPLE = ROOT / "examples" / "alertmanager.yml"

SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = {"summary", "description", "runbook_url", "dashboard_url"}


def load_generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mce_rules_generate", RULES_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


GEN = load_generate()


def tool(name: str) -> str:
    path = shutil.which(name, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{name} not found: apt-get install prometheus prometheus-alertmanager", pytrace=False)
    return path


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)


@functools.cache
def groups() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.append((path, group))
    return out


@functools.cache
def alerts() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for _, group in groups():
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] not in out, f"duplicate alert name {rule['alert']}"
                out[rule["alert"]] = rule
    return out


def recorded() -> set[str]:
    return {rule["record"] for _, group in groups() for rule in group["rules"] if "record" in rule}


def duration(text: str) -> int:
    """Prometheus duration ("1h30m", "90s", "0s") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return int(sum(int(n) * units[u] for n, u in parts))


# --- the generated files and promtool ---------------------------------------------------------


def test_generated_files_are_up_to_date() -> None:
    proc = run(sys.executable, str(RULES_DIR / "generate.py"), "--check")
    assert proc.returncode == 0, f"run python rules/generate.py:\n{proc.stdout}{proc.stderr}"


def test_rule_files_exist() -> None:
    assert {p.name for p in RULE_FILES} == {GEN.RECORDING_FILE, GEN.ALERTS_FILE, GEN.SLO_FILE}
    assert TEST_FILES


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    proc = run(tool("promtool"), "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(path: Path) -> None:
    proc = run(tool("promtool"), "test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_other_objectives_generate_valid_rules(tmp_path: Path) -> None:
    for objective, budget in (("0.9999", "0.0001"), ("0.99999", "0.00001")):
        out = tmp_path / objective
        proc = run(sys.executable, str(RULES_DIR / "generate.py"), "--objective", objective, "--out-dir", str(out))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        slo = (out / GEN.SLO_FILE).read_text()
        assert f"/ {budget}\n" in slo
        assert f"{float(objective) * 100:g}% error budget" in slo
        check = run(tool("promtool"), "check", "rules", *(str(p) for p in sorted(out.glob("*.yml"))))
        assert check.returncode == 0, check.stdout + check.stderr
    # the committed files are untouched
    assert run(sys.executable, str(RULES_DIR / "generate.py"), "--check").returncode == 0


# --- conventions --------------------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache
def runbook_anchors() -> set[str]:
    return {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", RUNBOOKS.read_text(), flags=re.M)}


def test_groups_have_at_most_20_rules_and_unique_names() -> None:
    names = [group["name"] for _, group in groups()]
    assert len(names) == len(set(names))
    for path, group in groups():
        assert 0 < len(group["rules"]) <= 20, f"{path.name}: group {group['name']} has {len(group['rules'])} rules"


def test_recording_rule_names() -> None:
    for name in recorded():
        assert re.fullmatch(r"mail:[a-z0-9_]+:[a-z0-9_]+", name), name


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_conventions(name: str) -> None:
    rule = alerts()[name]
    assert re.fullmatch(r"(?:[A-Z][a-z0-9]*)+", name), "CamelCase"
    assert len(name) <= 40
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
    assert rule["labels"]["severity"] in SEVERITIES
    ann = rule["annotations"]
    assert set(ann) == ANNOTATIONS
    assert "{{" not in ann["summary"], "summary must be static"
    assert ann["summary"].endswith(".")
    assert "{{" in ann["description"], "description must be templated"
    assert ann["runbook_url"] == f"{GEN.RUNBOOK_BASE}#{name.lower()}"
    assert name.lower() in runbook_anchors(), f"docs/runbooks.md has no heading for {name}"
    uids = "|".join(GEN.DASHBOARDS.values())
    base = re.escape(GEN.SETTINGS.dashboard_base)
    instance = r"(\{\{ \$labels\.instance \}\}|\$__all)"
    pattern = rf"{base}/({uids})\?var-job=\{{\{{ \$labels\.job \}}\}}&var-instance={instance}"
    assert re.fullmatch(pattern, ann["dashboard_url"]), ann["dashboard_url"]
    if "for" in rule:
        assert duration(rule["for"]) > 0


def test_every_alert_is_in_the_docs() -> None:
    overview = (ROOT / "docs" / "alerts.md").read_text()
    for name in alerts():
        assert f"`{name}`" in overview


_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
_KEYWORDS = {
    "sum", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "rate", "increase", "deriv", "avg_over_time", "histogram_quantile", "label_replace", "clamp_max",
    "absent", "time",
}  # fmt: skip


def metric_label_names(metric: str) -> tuple[str, ...] | None:
    """Label names of a metric of the contract (histogram series included), else None."""
    if metric in FAMILIES:
        return FAMILIES[metric].labels
    for suffix, extra in (("_bucket", ("le",)), ("_count", ()), ("_sum", ()), ("_gcount", ()), ("_gsum", ())):
        base = metric.removesuffix(suffix)
        if base != metric and base in FAMILIES and FAMILIES[base].type in ("histogram", "gaugehistogram"):
            return (*FAMILIES[base].labels, *extra)
    return None


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_expressions_use_the_metrics_contract(path: Path) -> None:
    """Every metric in every expression exists, and every matcher uses one of its labels."""
    known_records = recorded()
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            what = rule.get("alert") or rule["record"]
            # string contents (regexes, label values) and range durations are not names
            expr = re.sub(r"\[[0-9smhdw]+\]", "", re.sub(r'"[^"]*"', '""', rule["expr"]))
            for name, matchers in _SELECTOR.findall(expr):
                if name in _KEYWORDS or name == "up" or name in known_records or not name.startswith("mail"):
                    continue
                labels = metric_label_names(name)
                assert labels is not None, f"{what}: unknown metric {name}"
                for label in _MATCHER.findall(matchers):
                    assert label in (*labels, "job", "instance"), f"{what}: {name} has no label {label!r}"


# --- replicas: an HA pair counted once ----------------------------------------------------------

#: Families that every replica of an HA pair exports alike: the continuity figures read from the
#: shared store (label service) and the dataset checks (label dataset).  Everything else is a
#: replica's own view (probes, DNS, round trips) or its own host (queues, logs, self metrics).
REPLICATED = {name for name, fam in FAMILIES.items() if {"service", "dataset"} & set(fam.labels)}
DEDUP = "max without (instance, pod) ("


def replicated_selectors(expr: str) -> list[tuple[str, str]]:
    """(family, the expression text before it) for every selector of a replicated family."""
    out = []
    for m in _SELECTOR.finditer(expr):
        name = m.group(1)
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        if name in REPLICATED or (base in REPLICATED and FAMILIES[base].type == "histogram"):
            out.append((name, expr[: m.start()]))
    return out


def dedup_problems(expr: str) -> list[str]:
    """Replicated series not taken once for all replicas, and joins on instance.

    A gauge of a replicated family must sit directly in ``max without (instance, pod) (...)``; a
    counter or histogram series in the ``rate(``/``increase(`` directly inside one (aggregate
    after the rate: never the rate of a max).
    """
    found = replicated_selectors(expr)
    problems = []
    for name, before in found:
        counter = name not in FAMILIES or FAMILIES[name].type in ("counter", "histogram")
        wanted = (DEDUP + "rate(", DEDUP + "increase(") if counter else (DEDUP,)
        if not before.endswith(wanted):
            problems.append(f"{name} not taken once for all replicas: ...{before[-50:]}")
    if found and re.search(r"\b(on|ignoring|by) \([^)]*\binstance\b", expr):
        problems.append("joins or groups on instance")
    return problems


def all_rules() -> list[dict[str, Any]]:
    return [rule for _, group in groups() for rule in group["rules"]]


def test_replicated_families_are_a_known_set() -> None:
    assert {"mail_incidents_total", "mail_availability_ratio", "mail_maintenance_active", "mail_backup_up"} <= (
        REPLICATED
    )
    assert "mail_replication_lag_seconds" in REPLICATED
    assert not REPLICATED & {"mail_webhook_notifications_total", "mail_exporter_leader", "mail_smtp_up"}


def test_the_dedup_check_catches_a_missing_or_misplaced_max() -> None:
    sel = 'mail_rpo_estimate_seconds{job="mail"}'
    counter = 'mail_incidents_total{job="mail"}'
    assert dedup_problems(f"{DEDUP}{sel}) > 1") == []
    assert dedup_problems(f"{DEDUP}increase({counter}[1h])) > 0") == []
    assert dedup_problems(f"sum by (service, le) ({DEDUP}rate(mail_incident_recovery_seconds_bucket[1h])))") == []
    assert len(dedup_problems(f"{sel} > 1")) == 1
    assert len(dedup_problems(f"max by (job, dataset) ({sel}) > 1")) == 1
    assert len(dedup_problems(f"increase({DEDUP}{counter})[1h:])")) == 1  # the rate of a max
    assert len(dedup_problems(f"{DEDUP}increase({sel}[1h]))")) == 1  # a gauge under increase
    assert dedup_problems(f"{DEDUP}{sel})\n> on (job, instance, dataset) group_left ()\n{DEDUP}{sel})") == [
        "joins or groups on instance"
    ]


def test_replicated_families_are_counted_once() -> None:
    """Every rule over a replicated family takes it once for all replicas and joins on the
    figure's own labels (job, service or dataset...), never on instance."""
    used = 0
    for rule in all_rules():
        what = rule.get("alert") or rule["record"]
        assert dedup_problems(rule["expr"]) == [], what
        used += bool(replicated_selectors(rule["expr"]))
    assert used >= 12


def test_alerts_over_replicated_figures_have_no_instance() -> None:
    """After max without (instance, pod) there is no instance label: no annotation may use it,
    and the dashboard link selects every instance."""
    names = []
    for name, rule in alerts().items():
        if not replicated_selectors(rule["expr"]):
            continue
        names.append(name)
        ann = rule["annotations"]
        for key, text in ann.items():
            assert "$labels.instance" not in text, f"{name}: {key} uses the instance label"
        assert ann["dashboard_url"].endswith("&var-instance=$__all"), name
    assert "MailMaintenanceActive" in names and "MailBackupStale" in names


def test_the_other_alerts_stay_per_instance() -> None:
    """Vantage points (probes, DNS, round trips) and per-host sources (queues, logs) are each
    replica's own: their alerts are never merged across instances."""
    for name, rule in alerts().items():
        if replicated_selectors(rule["expr"]):
            continue
        assert "without (instance" not in rule["expr"], name
        leader = "mail_exporter_leader" in rule["expr"]
        if leader:  # the lease is one per job
            assert re.fullmatch(r"(max|sum) by \(job\) \(mail_exporter_leader\{[^}]*\}\) [=>]=? \d", rule["expr"])
            assert rule["annotations"]["dashboard_url"].endswith("&var-instance=$__all"), name
        elif not rule["expr"].startswith("absent("):
            assert rule["annotations"]["dashboard_url"].endswith("&var-instance={{ $labels.instance }}"), name


def test_replica_labels_setting() -> None:
    assert GEN.SETTINGS.replica_labels == ("instance", "pod")
    three = GEN.replace(GEN.SETTINGS, replica_labels=("instance", "pod", "site"))
    texts = GEN.rule_texts(three)
    alerts_text = texts[GEN.ALERTS_FILE]
    assert "max without (instance, pod, site) (mail_rpo_estimate_seconds" in alerts_text
    assert "max without (instance, pod) (" not in alerts_text
    with pytest.raises(ValueError, match="instance"):
        GEN.rule_texts(GEN.replace(GEN.SETTINGS, replica_labels=("pod",)))


# --- coverage by promtool tests ---------------------------------------------------------------


@functools.cache
def cases() -> dict[str, list[tuple[str, int, int, list[dict[str, Any]]]]]:
    """alertname -> [(test file, test group index, eval time in s, exp_alerts)]."""
    out: dict[str, list[tuple[str, int, int, list[dict[str, Any]]]]] = defaultdict(list)
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        for i, test in enumerate(doc["tests"]):
            for case in test.get("alert_rule_test") or []:
                out[case["alertname"]].append((path.name, i, duration(case["eval_time"]), case.get("exp_alerts") or []))
    return out


def test_test_files_load_every_rule_file_they_need() -> None:
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        files = {(path.parent / f).resolve() for f in doc["rule_files"]}
        assert (RULES_DIR / GEN.RECORDING_FILE).resolve() in files, f"{path.name}: alerts read recorded series"
        # a fixed group order: alerts see the recorded series of the same evaluation
        loaded = [g["name"] for f in files for g in yaml.safe_load(f.read_text())["groups"]]
        assert sorted(doc.get("group_eval_order") or []) == sorted(loaded), path.name


def test_no_test_for_an_unknown_alert() -> None:
    assert set(cases()) <= set(alerts())


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_alert_is_tested(name: str) -> None:
    rule = alerts()[name]
    found = cases().get(name, [])
    fire = [c for c in found if c[3]]
    quiet = [c for c in found if not c[3]]
    assert fire, f"{name}: no must-fire case"
    assert len(quiet) >= 2, f"{name}: {len(quiet)} must-not-fire case(s), want at least 2"
    for file, _, _, exp in fire:
        for alert in exp:
            labels = alert.get("exp_labels") or {}
            assert labels.get("severity") == rule["labels"]["severity"], f"{file}: {name}: exact labels"
            assert set(alert.get("exp_annotations") or {}) == ANNOTATIONS, f"{file}: {name}: exact annotations"
    for_ = duration(rule.get("for", "0s"))
    if for_:
        # a must-not-fire case within one `for` before a must-fire case of the same input
        assert any(
            qf == ff and qi == fi and 0 < ft - qt <= for_ for qf, qi, qt, _ in quiet for ff, fi, ft, _ in fire
        ), f"{name}: no must-not-fire case just before its for ({rule['for']}) elapses"


# --- Alertmanager -----------------------------------------------------------------------------


def test_amtool_check_config() -> None:
    proc = run(tool("amtool"), "check-config", str(ALERTMANAGER_EXAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ("severity=critical alertname=MailMxAllDown", "mail-continuity-exporter,pager"),
        ("severity=warning alertname=MailMxDown", "mail-continuity-exporter,ticket"),
        ("severity=info alertname=MailMaintenanceActive", "mail-continuity-exporter,ticket"),
    ],
)
def test_routes_by_severity_and_always_to_incident_tracking(labels: str, receivers: str) -> None:
    proc = run(tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}", *labels.split())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == receivers


def test_alertmanager_example_matches_the_rules() -> None:
    cfg = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    names = set(alerts())
    for rule in cfg["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname(=~|=)"(.+)"', matcher)
            if m is None or m.group(2) == "Mail.+":
                continue
            options = [a for a in names if re.fullmatch(m.group(2), a)]
            assert options, f"inhibit rule matcher {matcher} matches no alert of the rules"
    hook = next(r for r in cfg["receivers"] if r["name"] == "mail-continuity-exporter")["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:10587/alertmanager"
    assert hook["send_resolved"] is True
    first = cfg["route"]["routes"][0]
    assert first["receiver"] == "mail-continuity-exporter" and first["continue"] is True
    assert "matchers" not in first


@contextlib.contextmanager
def alertmanager(config: str, tmp_path: Path) -> Iterator[str]:
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(config)
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            tool("prometheus-alertmanager"),
            f"--config.file={cfg}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    break
            assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
            assert time.monotonic() < deadline, "alertmanager did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def am_alerts(url: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(url + "/api/v2/alerts", timeout=5) as resp:
        data = json.loads(resp.read())
    return {a["labels"]["id"]: a for a in data}


def test_inhibitions_in_a_real_alertmanager(tmp_path: Path) -> None:
    # the receivers must not reach anything: point every webhook at a closed port
    dead = f"http://127.0.0.1:{free_port()}/"
    config = re.sub(r"url: \S+", f"url: {dead}", ALERTMANAGER_EXAMPLE.read_text())

    def alert(id_: str, name: str, severity: str, instance: str, **labels: str) -> dict[str, str]:
        return {"id": id_, "alertname": name, "severity": severity, "instance": instance, **labels}

    sent = [
        # the exporter on mon1 is down: its other alerts are inhibited, mon2's are not
        alert("exporter-down", "MailExporterDown", "critical", "mon1"),
        alert("mon1-mx", "MailMxDown", "warning", "mon1", domain="a.test"),
        alert("mon2-mx", "MailMxDown", "warning", "mon2", domain="b.test"),
        # all MX of c.test down: single MX and redundancy alerts of c.test inhibited, not d.test's
        alert("all-down", "MailMxAllDown", "critical", "mon2", domain="c.test"),
        alert("c-mx", "MailMxDown", "warning", "mon2", domain="c.test"),
        alert("c-red", "MailMxRedundancyLow", "warning", "mon2", domain="c.test"),
        alert("d-red", "MailMxRedundancyLow", "warning", "mon2", domain="d.test"),
        # maintenance of service inbound: its critical/warning alerts are inhibited, others are not
        alert("maint", "MailMaintenanceActive", "info", "mon3", service="inbound"),
        alert("in-rt", "MailRoundTripFailing", "critical", "mon3", route="r1", service="inbound"),
        alert("out-rt", "MailRoundTripFailing", "critical", "mon3", route="r2", service="outbound"),
        alert("no-svc", "MailRoundTripFailing", "critical", "mon3", route="r3"),
        # certificates: critical supersedes the warning for the same target
        alert("tls-crit", "MailTlsCertificateExpiryCritical", "critical", "mon4", check="imap", target="imap:993"),
        alert("tls-warn", "MailTlsCertificateExpiring", "warning", "mon4", check="imap", target="imap:993"),
        alert("tls-other", "MailTlsCertificateExpiring", "warning", "mon4", check="smtp", target="smtp:587"),
        # burn rates: a page supersedes the ticket of the same route
        alert("burn-fast", "MailRoundTripBudgetBurnFast", "critical", "mon5", route="r1"),
        alert("burn-slow", "MailRoundTripBudgetBurnSlow", "warning", "mon5", route="r1"),
        alert("burn-slow-r2", "MailRoundTripBudgetBurnSlow", "warning", "mon5", route="r2"),
        # DANE: a TLSA mismatch supersedes the policy failure of the same MX host, not another's
        alert("tlsa", "MailDaneTlsaMismatch", "critical", "mon6", domain="e.test", mx="mx1.e.test"),
        alert("policy-mx1", "MailMxTlsPolicyFailing", "warning", "mon6", domain="e.test", mx="mx1.e.test"),
        alert("policy-mx2", "MailMxTlsPolicyFailing", "warning", "mon6", domain="e.test", mx="mx2.e.test"),
    ]
    inhibited = {"mon1-mx", "c-mx", "c-red", "in-rt", "tls-warn", "burn-slow", "policy-mx1"}
    with alertmanager(config, tmp_path) as url:
        body = json.dumps([{"labels": labels} for labels in sent]).encode()
        req = urllib.request.Request(
            url + "/api/v2/alerts", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        deadline = time.monotonic() + 15
        while True:
            got = am_alerts(url)
            muted = {i for i, a in got.items() if a["status"]["inhibitedBy"]}
            if len(got) == len(sent) and muted == inhibited:
                break
            assert time.monotonic() < deadline, f"inhibited {sorted(muted)}, want {sorted(inhibited)}"
            time.sleep(0.2)
        assert all(got[i]["status"]["state"] == "suppressed" for i in inhibited)
        assert all(got[i]["status"]["state"] == "active" for i in set(got) - inhibited)
