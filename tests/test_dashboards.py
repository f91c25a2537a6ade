"""Issue 8: the dashboards of dashboards/ -- drift, schema and the grafana/dashboard-linter rules.

The live check (every panel's PromQL against the stack's Prometheus) is test_dashboards_live.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.core.metrics import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
UIDS = ("mce-overview", "mce-delivery", "mce-continuity", "mce-domain")


def load_builder() -> Any:
    spec = importlib.util.spec_from_file_location("mce_dashboards_build", DASHBOARDS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def boards() -> dict[str, dict[str, Any]]:
    return {uid: json.loads((DASHBOARDS / f"{uid}.json").read_text()) for uid in UIDS}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows (with the panels of collapsed rows)."""
    out = []
    for p in board["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def exprs(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(board) for t in p["targets"]]


# --- (1) drift -------------------------------------------------------------------------------------------


def test_committed_dashboards_match_the_builder() -> None:
    proc = subprocess.run(
        [sys.executable, str(DASHBOARDS / "build.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for path, text in load_builder().render().items():
        assert path.read_text() == text, path


def test_check_fails_on_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = load_builder()
    for uid in UIDS:
        (tmp_path / f"{uid}.json").write_text((DASHBOARDS / f"{uid}.json").read_text())
    monkeypatch.setattr(build, "HERE", tmp_path)
    assert build.main(["--check"]) == 0
    path = tmp_path / "mce-domain.json"
    path.write_text(path.read_text().replace("Mail: domain", "Mail: edited"))
    assert build.main(["--check"]) == 1
    assert build.main([]) == 0  # regenerates
    assert build.main(["--check"]) == 0


# --- (2) schema ----------------------------------------------------------------------------------------

GRID = {
    "type": "object",
    "required": ["h", "w", "x", "y"],
    "properties": {
        "h": {"type": "integer", "minimum": 1},
        "w": {"type": "integer", "minimum": 1, "maximum": 24},
        "x": {"type": "integer", "minimum": 0, "maximum": 23},
        "y": {"type": "integer", "minimum": 0},
    },
}
DATASOURCE_REF = {"type": "object", "required": ["type", "uid"], "properties": {"uid": {"type": "string"}}}
TARGET = {
    "type": "object",
    "required": ["refId", "expr", "datasource"],
    "properties": {
        "refId": {"type": "string", "pattern": "^[A-Z]$"},
        "expr": {"type": "string", "minLength": 1},
        "datasource": DATASOURCE_REF,
        "legendFormat": {"type": "string"},
        "format": {"enum": ["time_series", "table", "heatmap"]},
        "instant": {"type": "boolean"},
        "range": {"type": "boolean"},
    },
}
PANEL = {
    "type": "object",
    "required": ["id", "type", "title", "gridPos"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "type": {"enum": ["row", "timeseries", "stat", "bargauge", "gauge", "state-timeline", "heatmap", "table"]},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "gridPos": GRID,
        "datasource": DATASOURCE_REF,
        "targets": {"type": "array", "minItems": 1, "items": TARGET},
        "fieldConfig": {
            "type": "object",
            "required": ["defaults", "overrides"],
            "properties": {"defaults": {"type": "object"}, "overrides": {"type": "array"}},
        },
        "options": {"type": "object"},
        "panels": {"type": "array"},
    },
}
VARIABLE = {
    "type": "object",
    "required": ["name", "type"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "type": {"enum": ["query", "datasource", "custom", "constant", "interval", "textbox", "adhoc"]},
        "label": {"type": "string"},
        "multi": {"type": "boolean"},
        "includeAll": {"type": "boolean"},
    },
}
DASHBOARD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time", "tags", "links"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "version": {"type": "integer"},
        "editable": {"type": "boolean"},
        "refresh": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "time": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
        },
        "panels": {"type": "array", "minItems": 1, "items": PANEL},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {"list": {"type": "array", "items": VARIABLE}},
        },
        "annotations": {"type": "object", "properties": {"list": {"type": "array"}}},
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "title"],
                "properties": {"type": {"enum": ["dashboards", "link"]}},
            },
        },
    },
}

_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
}


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """The subset of JSON Schema used above: type, required, properties, items, enum, bounds, pattern."""
    errors: list[str] = []
    typ = schema.get("type")
    if typ is not None:
        ok = isinstance(value, _TYPES[typ]) and not (typ in ("integer", "number") and isinstance(value, bool))
        if not ok:
            return [f"{path}: expected {typ}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not one of {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{path}: missing {key}" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += validate(value[key], sub, f"{path}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > {schema['maximum']}")
    return errors


def test_the_validator_rejects_broken_dashboards() -> None:
    good = boards()["mce-overview"]
    assert validate(good, DASHBOARD_SCHEMA) == []
    broken = json.loads(json.dumps(good))
    del broken["uid"]
    broken["schemaVersion"] = "39"
    broken["panels"][1]["gridPos"]["w"] = 30
    broken["panels"][1]["targets"][0]["refId"] = 1
    del broken["templating"]["list"][0]["name"]
    errors = validate(broken, DASHBOARD_SCHEMA)
    assert len(errors) == 5, errors


@pytest.mark.parametrize("uid", UIDS)
def test_dashboard_matches_the_schema(uid: str) -> None:
    board = boards()[uid]
    assert validate(board, DASHBOARD_SCHEMA) == []
    for p in panels(board):
        assert p.get("targets"), f"{p['title']}: no targets"
        assert "fieldConfig" in p and "description" in p, p["title"]
    try:
        import jsonschema
    except ImportError:  # optional: the small validator above is the contract
        return
    jsonschema.Draft202012Validator(DASHBOARD_SCHEMA).validate(board)


def test_grid_does_not_overlap() -> None:
    for uid, board in boards().items():
        cells: dict[tuple[int, int], str] = {}
        for p in board["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, (uid, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{uid}: {p['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = p["title"]


# --- (3) the grafana/dashboard-linter rules ------------------------------------------------------------

JOB = 'job=~"$job"'
INSTANCE = 'instance=~"$instance"'
#: ALERTS also keeps the alerts without an instance label (over the figures an HA pair shares, and
#: the lease alerts): instance=~"$instance|".
ALERTS_INSTANCE = 'instance=~"$instance|"'
DS_NAMES = ("$datasource", "${datasource}")
SELECTOR_RE = re.compile(r"\b(ALERTS|up|mail[_:][A-Za-z0-9_:]*)\b(\{[^}]*\})?")
RANGE_RE = re.compile(r"\[([^\]]*)\]")
RATE_RE = re.compile(r"\b(rate|irate|increase|deriv|delta|idelta|[a-z]+_over_time)\(")


def recorded_names() -> set[str]:
    names = set()
    for path in (ROOT / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(r["record"] for r in group["rules"] if "record" in r)
    return names


def known_series() -> dict[str, str]:
    """Series name -> family type, with the suffixes Prometheus adds."""
    out = {}
    for fam in FAMILIES.values():
        out[fam.name] = fam.type
        if fam.type == "histogram":
            out.update({f"{fam.name}_{s}": f"histogram_{s}" for s in ("bucket", "count", "sum")})
        if fam.type == "gaugehistogram":
            out.update({f"{fam.name}_{s}": "gauge" for s in ("bucket", "gcount", "gsum")})
    return out


def variable(board: dict[str, Any], name: str) -> dict[str, Any]:
    found = [v for v in board["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, f"{board['uid']}: no variable {name}"
    return found[0]


def query_text(var: dict[str, Any]) -> str:
    q = var.get("query")
    return q["query"] if isinstance(q, dict) else str(q)


def selector_problems(expr: str) -> list[str]:
    problems = []
    for m in SELECTOR_RE.finditer(expr):
        name, braces = m.group(1), m.group(2)
        # a label name in by (...)/without (...) or a function argument is not a metric
        before = expr[: m.start()].rstrip()
        if before.endswith(("by (", "without (", "on (", "ignoring (")) or re.search(r"by \([^)]*$", before):
            continue
        if not braces:
            problems.append(f"{name}: no label matchers")
            continue
        for matcher in (JOB, ALERTS_INSTANCE if name == "ALERTS" else INSTANCE):
            if matcher not in braces:
                problems.append(f"{name}: no {matcher}")
    return problems


@pytest.mark.parametrize("uid", UIDS)
def test_template_datasource_rule(uid: str) -> None:
    var = variable(boards()[uid], "datasource")
    assert var["type"] == "datasource"
    assert var["query"] == "prometheus"
    assert var["label"] == "Data source"


@pytest.mark.parametrize("uid", UIDS)
@pytest.mark.parametrize("name", ["job", "instance"])
def test_template_job_and_instance_rules(uid: str, name: str) -> None:
    var = variable(boards()[uid], name)
    assert var["type"] == "query"
    assert var["label"] == name
    assert var["datasource"]["uid"] in DS_NAMES
    assert var["multi"] is True
    assert var["allValue"] == ".+"
    query = query_text(var)
    assert re.fullmatch(rf"label_values\(\w+(\{{[^}}]*\}})?, {name}\)", query), query
    if name == "instance":
        assert JOB in query


@pytest.mark.parametrize("uid", UIDS)
def test_template_label_promql_rule(uid: str) -> None:
    """Every query variable is label_values over a known series, filtered like the panels."""
    known = known_series()
    for var in boards()[uid]["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?, (\w+)\)", query_text(var))
        assert m, var
        assert m.group(1) in known, var
        if var["name"] not in ("job", "instance"):
            assert selector_problems(f"{m.group(1)}{m.group(2) or ''}") == [], var


@pytest.mark.parametrize("uid", UIDS)
def test_panel_datasource_rule(uid: str) -> None:
    for p in panels(boards()[uid]):
        assert p["datasource"]["uid"] in DS_NAMES, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] in DS_NAMES, p["title"]
            assert t["datasource"]["type"] == "prometheus"


@pytest.mark.parametrize("uid", UIDS)
def test_panel_title_description_and_units_rules(uid: str) -> None:
    titles = set()
    for p in panels(boards()[uid]):
        assert p["title"].strip() and p["title"] not in titles, p["title"]
        titles.add(p["title"])
        assert p.get("description", "").strip(), f"{p['title']}: no description"
        unit = p["fieldConfig"]["defaults"].get("unit")
        assert unit, f"{p['title']}: no unit"


@pytest.mark.parametrize("uid", UIDS)
def test_target_rate_interval_rule(uid: str) -> None:
    """Every range in a panel query is $__rate_interval (rate, irate, increase and the rest)."""
    for title, expr in exprs(boards()[uid]):
        for rng in RANGE_RE.findall(expr):
            assert rng == "$__rate_interval", f"{title}: [{rng}] in {expr}"
        for m in RATE_RE.finditer(expr):
            rest = expr[m.end() :]
            assert "[$__rate_interval]" in rest, f"{title}: {m.group(1)} without $__rate_interval"


@pytest.mark.parametrize("uid", UIDS)
def test_target_job_and_instance_rules(uid: str) -> None:
    for title, expr in exprs(boards()[uid]):
        assert SELECTOR_RE.search(expr), f"{title}: no metric in {expr}"
        assert selector_problems(expr) == [], f"{title}: {selector_problems(expr)} in {expr}"


@pytest.mark.parametrize("uid", UIDS)
def test_target_promql_rule_metrics_exist_and_counters_are_rated(uid: str) -> None:
    known = known_series()
    recorded = recorded_names()
    for title, expr in exprs(boards()[uid]):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), title
        for m in SELECTOR_RE.finditer(expr):
            name = m.group(1)
            if not m.group(2) or name in ("ALERTS", "up"):
                continue
            assert name in known or name in recorded, f"{title}: unknown series {name}"
            if known.get(name) in ("counter", "histogram_bucket", "histogram_count", "histogram_sum"):
                before = expr[: m.start()]
                assert re.search(r"\b(rate|irate|increase)\($", before), f"{title}: counter {name} not rated"


@pytest.mark.parametrize("uid", UIDS)
def test_tables_are_instant_and_their_overrides_name_their_columns(uid: str) -> None:
    for p in panels(boards()[uid]):
        if p["type"] != "table":
            continue
        assert all(t["instant"] and t["format"] == "table" for t in p["targets"]), p["title"]
        organize = next(t for t in p["transformations"] if t["id"] == "organize")["options"]
        columns = set(organize["renameByName"].values())
        refs = {t["refId"] for t in p["targets"]}
        assert {k.removeprefix("Value #") for k in organize["renameByName"]} <= refs, p["title"]
        for o in p["fieldConfig"]["overrides"]:
            assert o["matcher"] == {"id": "byName", "options": o["matcher"]["options"]}, p["title"]
            assert o["matcher"]["options"] in columns, (p["title"], o["matcher"]["options"])


def test_selector_checker_catches_bad_queries() -> None:
    assert selector_problems('sum by (route) (mail_roundtrip_success{job=~"$job"})') == [
        'mail_roundtrip_success: no instance=~"$instance"'
    ]
    assert selector_problems("mail_mx_records") == ["mail_mx_records: no label matchers"]
    assert selector_problems(f"max by (domain) (mail_mx_records{{{JOB},{INSTANCE}}})") == []
    # ALERTS without the empty alternative would hide the alerts that have no instance
    assert selector_problems(f'count(ALERTS{{{JOB},{INSTANCE},alertstate="firing"}})') == [
        'ALERTS: no instance=~"$instance|"'
    ]
    assert selector_problems(f'count(ALERTS{{{JOB},{ALERTS_INSTANCE},alertstate="firing"}})') == []


# --- (4) an HA pair: the figures every replica exports alike are shown once -------------------------

#: Families that every replica of an HA pair exports alike (the continuity figures of the shared
#: store, label service; the dataset checks, label dataset): a pair must not show doubled lines or sums.
REPLICATED = {name for name, fam in FAMILIES.items() if {"service", "dataset"} & set(fam.labels)}
ONCE = "max without (instance, pod) ("


def replica_problems(expr: str) -> list[str]:
    """Selectors of replicated families not taken once: a gauge directly in max without (instance, pod),
    a counter in the increase()/rate() directly inside one (never the rate of a max)."""
    problems = []
    for m in SELECTOR_RE.finditer(expr):
        name = m.group(1)
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        if name not in REPLICATED and base not in REPLICATED:
            continue
        before = expr[: m.start()]
        counter = name not in FAMILIES or FAMILIES[name].type in ("counter", "histogram")
        wanted = (ONCE + "increase(", ONCE + "rate(") if counter else (ONCE,)
        if not before.endswith(wanted):
            problems.append(f"{name} not taken once for all replicas")
    return problems


def test_replica_checker_catches_doubled_figures() -> None:
    s = f"{{{JOB},{INSTANCE}}}"
    assert replica_problems(f"sum by (service) (mail_incidents_open{s})") == [
        "mail_incidents_open not taken once for all replicas"
    ]
    assert replica_problems(f"sum by (service) ({ONCE}mail_incidents_open{s}))") == []
    assert replica_problems(f"sum by (service) ({ONCE}increase(mail_incidents_total{s}[$__rate_interval])))") == []
    assert replica_problems(f"increase({ONCE}mail_incidents_total{s})[1h:])") != []
    assert replica_problems(f"max by (domain) (mail_mx_records{s})") == []


@pytest.mark.parametrize("uid", UIDS)
def test_replicated_figures_are_shown_once(uid: str) -> None:
    for title, expr in exprs(boards()[uid]):
        assert replica_problems(expr) == [], f"{title}: {replica_problems(expr)} in {expr}"


def test_overview_shows_the_lease_holder_per_instance() -> None:
    board = boards()["mce-overview"]
    found = [(p, t) for p in panels(board) for t in p["targets"] if t["expr"].startswith("mail_exporter_leader{")]
    assert len(found) == 1
    panel, target = found[0]
    assert target["legendFormat"] == "{{instance}}"
    assert panel["type"] in ("state-timeline", "stat")
    texts = {o["text"] for m in panel["fieldConfig"]["defaults"]["mappings"] for o in m["options"].values()}
    assert texts == {"leader", "standby"}


def test_stable_uids_and_unique_panel_ids() -> None:
    all_boards = boards()
    assert {b["uid"] for b in all_boards.values()} == set(UIDS)
    for uid, board in all_boards.items():
        assert board["uid"] == uid
        ids = [p["id"] for p in board["panels"]] + [q["id"] for p in board["panels"] for q in p.get("panels", [])]
        assert len(ids) == len(set(ids)), uid


def test_dashboards_link_to_each_other() -> None:
    all_boards = boards()
    for uid, board in all_boards.items():
        links = [link for link in board["links"] if link["type"] == "dashboards"]
        assert links, f"{uid}: no dashboards link"
        for link in links:
            assert link["includeVars"] and link["keepTime"]
            # every dashboard carries the tag, so the link reaches all four
            for other in all_boards.values():
                assert set(link["tags"]) <= set(other["tags"]), (uid, other["uid"])


def test_alert_dashboard_urls_point_at_these_dashboards() -> None:
    urls = []
    for path in (ROOT / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            urls += [r["annotations"]["dashboard_url"] for r in group["rules"] if "alert" in r]
    assert urls
    for url in urls:
        m = re.search(r"/d/([\w-]+)\?var-job=[^&]+&var-instance=", url)
        assert m and m.group(1) in UIDS, url


def test_domain_dashboard_has_domain_and_check_variables() -> None:
    board = boards()["mce-domain"]
    assert "mail_mx_records" in query_text(variable(board, "domain"))
    assert variable(board, "check")["type"] == "query"
    used = " ".join(e for _, e in exprs(board))
    assert 'domain=~"$domain"' in used and 'check=~"$check"' in used


def test_issue_content_is_covered() -> None:
    """The panels the issue asks for, by the series they query."""
    want = {
        "mce-overview": [
            "mail:roundtrip_error_budget:remaining_ratio30d",
            "mail_mx_healthy",
            "mail_mx_records",
            "mail:roundtrip_success:ratio_rate5m",
            "histogram_quantile(0.95",
            "mail_queue_oldest_message_age_seconds",
            "mail_incidents_open",
            'ALERTS{job=~"$job",instance=~"$instance|",alertstate="firing"}',
            "mail_exporter_leader",
            "mail_rpo_target_seconds",
            "mail_rto_target_seconds",
        ],
        "mce-delivery": [
            "mail_roundtrip_latency_seconds_bucket",
            "mail_roundtrip_probes_total",
            "mail_roundtrip_hop_delay_seconds",
            "sum by (source) (mail_queue_messages",
            "sum by (source, queue) (mail_queue_messages",
            "mail_queue_message_age_seconds_bucket",
            "mail_queue_deferred_reason_messages",
            "mail_queue_deferred_destination_messages",
            # mail flow from the logs (issue 15)
            "sum by (source, status) (rate(mail_log_deliveries_total",
            'status="bounced"',
            "histogram_quantile(0.95, sum by (source, stage, le) (rate(mail_log_delivery_delay_seconds_bucket",
            "mail_postfix_smtpd_rejects_total",
            "mail_postfix_smtpd_sasl_failures_total",
            'mail_dovecot_logins_total{job=~"$job",instance=~"$instance",result="failure",reason="auth_failed"}',
            "sum by (source, direction, protocol) (rate(mail_postfix_tls_connections_total",
            "mail_log_up",
            "mail_log_lines_unparsed_total",
            "mail_log_last_line_timestamp_seconds",
        ],
        "mce-continuity": [
            "mail_mttr_seconds",
            "mail_mttr_target_seconds",
            "mail_mtbf_seconds",
            "mail_availability_ratio",
            "mail_availability_target_ratio",
            "mail_incidents_total",
            "mail_rpo_estimate_seconds",
            "mail_backup_last_success_timestamp_seconds",
            "mail_replication_lag_seconds",
            "mail_rto_estimate_seconds",
            "mail_drill_last_timestamp_seconds",
            "mail_maintenance_active",
        ],
        "mce-domain": [
            "mail_smtp_up",
            "mail_imap_up",
            "mail_probe_phase_duration_seconds",
            "mail_tls_cert_expiry_timestamp_seconds",
            "mail_dns_record_ok",
            "mail_dnsbl_listed",
            # transport policy and DNSSEC (issue 16)
            "max by (domain, mx, policy) (mail_mx_policy",
            "mail_mx_policy_ok",
            "mail_mx_tlsa_match",
            "mail_mta_sts_policy_mode",
            "mail_mta_sts_policy_fetch_ok",
            "mail_mta_sts_policy_age_seconds",
            "mail_dns_dnssec_validated",
            "mail_dns_dnssec_bogus",
        ],
    }
    for uid, needles in want.items():
        text = "\n".join(e for _, e in exprs(boards()[uid]))
        for needle in needles:
            assert needle in text, (uid, needle)
