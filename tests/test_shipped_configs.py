"""Every configuration file the project ships passes its own tool's check.

Users copy these files.  A Prometheus config that promtool refuses, or an Alertmanager
config that amtool refuses, would fail on their first start, so each one is checked with
the real tool:

- every ``*.yml``/``*.yaml`` under ``examples/`` and ``deploy/`` is classified by its
  content, and a file that fits no class fails the test, so a new file cannot slip by
  unchecked: Prometheus configs (``promtool check config``, which also checks the rule
  files they load), Alertmanager configs (``amtool check-config``), rule files
  (``promtool check rules``), exporter configs (``--config.check``), exporter-toolkit web
  configs, Grafana provisioning, Kubernetes manifests and the compose file (the last two
  are checked in depth by tests/test_deploy.py);
- fenced YAML blocks in README.md and docs/*.md that are *complete* Prometheus or
  Alertmanager configs are checked too; fragments (a single job, a route) are not configs
  and are left alone.

Files a config refers to must resolve: relative paths against the config's directory,
absolute ones through the volumes that deploy/docker-compose.yml mounts, and rule-file
patterns must match at least one file.  Secret files (credentials, passwords, tokens) are
replaced by dummy files, since the real ones are never in the repository.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import Config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
SCANNED = ("examples", "deploy")

PROMETHEUS_KEYS = {
    "global",
    "rule_files",
    "scrape_config_files",
    "scrape_configs",
    "alerting",
    "remote_write",
    "remote_read",
    "storage",
    "tracing",
}
ALERTMANAGER_KEYS = {
    "global",
    "route",
    "receivers",
    "inhibit_rules",
    "time_intervals",
    "mute_time_intervals",
    "templates",
}
WEB_CONFIG_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
EXPORTER_KEYS = {f.metadata.get("key", f.name) for f in dataclasses.fields(Config)}
#: TLS material an exporter config may name: --config.check does not need it to exist.
EXPORTER_TLS_FILES = {"ca_file", "cert_file", "key_file"}
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def tool(name: str) -> str:
    path = shutil.which(name, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{name} not found: apt-get install prometheus prometheus-alertmanager", pytrace=False)
    return path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT, env=env)


# --- classification ----------------------------------------------------------------------------------


def load_documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def classify(docs: list[Any]) -> str | None:
    """What a YAML file is, from its content; None when it is nothing we know."""
    if docs and all(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in docs):
        return "kubernetes"
    if len(docs) != 1 or not isinstance(docs[0], dict):
        return None
    keys = set(docs[0])
    if "services" in keys:
        return "compose"
    if keys <= PROMETHEUS_KEYS and keys & {"scrape_configs", "rule_files", "alerting"}:
        return "prometheus"
    if keys <= ALERTMANAGER_KEYS and {"route", "receivers"} <= keys:
        return "alertmanager"
    if keys == {"groups"}:
        return "rules"
    if keys and keys <= WEB_CONFIG_KEYS:
        return "web-config"
    if docs[0].get("apiVersion") == 1 and keys & {"datasources", "providers"}:
        return "grafana-provisioning"
    if keys and keys <= EXPORTER_KEYS:
        return "exporter"
    return None


def shipped_files() -> list[Path]:
    found: set[Path] = set()
    for top in SCANNED:
        for pattern in ("*.yml", "*.yaml"):
            found.update((ROOT / top).rglob(pattern))
    return sorted(found)


SHIPPED = {path: classify(load_documents(path)) for path in shipped_files()}


def of_kind(kind: str) -> list[Path]:
    return [p for p, k in SHIPPED.items() if k == kind]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_every_shipped_yaml_file_is_classified() -> None:
    unknown = [rel(p) for p, kind in SHIPPED.items() if kind is None]
    assert unknown == [], f"not a config kind this test knows how to check: {unknown}"


def test_the_known_configs_are_found() -> None:
    """The classifier sees the files it must (guards against a glob or a rule gone wrong)."""
    found = {rel(p): k for p, k in SHIPPED.items()}
    expected = {
        "examples/alertmanager.yml": "alertmanager",
        "examples/alertmanager-webhook.yml": "alertmanager",
        "examples/prometheus-probe-sharding.yml": "prometheus",
        "examples/full.yml": "exporter",
        "deploy/compose/prometheus.yml": "prometheus",
        "deploy/compose/alertmanager.yml": "alertmanager",
        "deploy/compose/config.yml": "exporter",
        "deploy/kubernetes/config.yml": "exporter",
        "deploy/kubernetes/deployment.yaml": "kubernetes",
        "deploy/docker-compose.yml": "compose",
        "deploy/grafana/provisioning/datasources/prometheus.yml": "grafana-provisioning",
    }
    assert {name: found.get(name) for name in expected} == expected


# --- references to other files -----------------------------------------------------------------------


def compose_mounts(config: Path) -> dict[str, Path]:
    """Container path -> host path, for the compose service that mounts ``config``."""
    for compose in sorted(COMPOSE.parent.glob("docker-compose*.yml")):  # the single stack and the HA pair
        spec = yaml.safe_load(compose.read_text(encoding="utf-8"))
        for service in spec["services"].values():
            mounts: dict[str, Path] = {}
            for volume in service.get("volumes", []):
                source, target = volume.split(":")[:2]
                if source.startswith("."):
                    mounts[target] = (compose.parent / source).resolve()
            if config.resolve() in mounts.values():
                return mounts
    return {}


def resolve(pattern: str, config: Path, mounts: dict[str, Path]) -> str | None:
    """A path or glob of ``config`` as a host path, or None when it cannot be resolved."""
    if not pattern.startswith("/"):
        return str(config.parent / pattern)
    for target, source in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if pattern == target or pattern.startswith(target.rstrip("/") + "/"):
            return str(source) + pattern[len(target.rstrip("/")) :]
    return None


class Localizer:
    """Rewrites a config's file references so that its tool can check it here."""

    def __init__(self, config: Path, tmp: Path, *, strict: bool) -> None:
        self.config, self.tmp, self.strict = config, tmp, strict
        self.mounts = compose_mounts(config)
        self.problems: list[str] = []
        self.count = 0

    def pattern(self, value: str, where: str) -> str | None:
        """A rule file or file_sd pattern: must match at least one file."""
        host = resolve(value, self.config, self.mounts)
        if host is not None and sorted(Path("/").glob(host.lstrip("/"))):
            return host
        if self.strict:
            self.problems.append(f"{where}: {value!r} matches no file in the repository")
        return None

    def dummy(self, value: str) -> str:
        """A secret or credentials file: a dummy one in the temporary directory."""
        host = resolve(value, self.config, self.mounts)
        if host is not None and Path(host).is_file():
            return host
        self.count += 1
        path = self.tmp / f"secret-{self.count}"
        path.write_text("dummy-secret-value\n")
        return str(path)


def localize_prometheus(data: dict[str, Any], loc: Localizer) -> dict[str, Any]:
    out = dict(data)
    out["rule_files"] = [
        p for p in (loc.pattern(v, "rule_files") for v in data.get("rule_files") or []) if p is not None
    ]
    return walk(out, loc, lambda key: key.endswith("_file"))


def walk(node: Any, loc: Localizer, is_secret: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "files" and isinstance(value, list):  # file_sd_configs
                out[key] = [p for p in (loc.pattern(v, "file_sd_configs.files") for v in value) if p is not None]
            elif isinstance(value, str) and is_secret(key):
                out[key] = loc.dummy(value)
            else:
                out[key] = walk(value, loc, is_secret)
        return out
    if isinstance(node, list):
        return [walk(v, loc, is_secret) for v in node]
    return node


def write(data: Any, tmp: Path, name: str) -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- the checks ----------------------------------------------------------------------------------------


def promtool_check_config(data: dict[str, Any], source: Path, tmp: Path, *, strict: bool = True) -> None:
    loc = Localizer(source, tmp, strict=strict)
    localized = localize_prometheus(data, loc)
    assert loc.problems == []
    path = write(localized, tmp, "prometheus.yml")
    proc = run(tool("promtool"), "check", "config", str(path))
    assert proc.returncode == 0, f"{source}: promtool check config failed:\n{proc.stdout}{proc.stderr}"
    assert f"SUCCESS: {path} is valid prometheus config file syntax" in proc.stdout
    for pattern in localized["rule_files"]:
        for rule_file in sorted(Path("/").glob(pattern.lstrip("/"))):
            assert f"Checking {rule_file}" in proc.stdout, f"{rule_file} was not checked"
        assert "FAILED" not in proc.stdout + proc.stderr


def amtool_check_config(data: dict[str, Any], source: Path, tmp: Path) -> None:
    loc = Localizer(source, tmp, strict=True)
    path = write(walk(data, loc, lambda key: key.endswith("_file")), tmp, "alertmanager.yml")
    proc = run(tool("amtool"), "check-config", str(path))
    assert proc.returncode == 0, f"{source}: amtool check-config failed:\n{proc.stdout}{proc.stderr}"
    assert f"Checking '{path}'  SUCCESS" in proc.stdout
    assert f" - {len(data['receivers'])} receivers" in proc.stdout


@pytest.mark.parametrize("path", of_kind("prometheus"), ids=rel)
def test_promtool_check_config(path: Path, tmp_path: Path) -> None:
    promtool_check_config(load_documents(path)[0], path, tmp_path)


@pytest.mark.parametrize("path", of_kind("alertmanager"), ids=rel)
def test_amtool_check_config(path: Path, tmp_path: Path) -> None:
    amtool_check_config(load_documents(path)[0], path, tmp_path)


@pytest.mark.parametrize("path", sorted({*of_kind("rules"), *(ROOT / "rules").glob("*.rules.yml")}), ids=rel)
def test_promtool_check_rules(path: Path) -> None:
    # rules/ itself, and any rule file that examples/ or deploy/ may ship later
    proc = run(tool("promtool"), "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def exporter_check_env(text: str, tmp: Path) -> dict[str, str]:
    """Every ``${VAR}`` the config uses, set to a directory of the temporary directory."""
    env = dict(os.environ)
    for name in sorted(set(ENV_RE.findall(text))):
        env[name] = str(tmp / "env" / name)
    return env


def localize_exporter(data: Any, config: Path, tmp: Path, env: dict[str, str]) -> Any:
    """Secret files (``*_file`` but TLS material) become dummy files; ``${VAR}`` paths are created."""

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: secret(v, k) if _is_secret_key(k, v) else fix(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    def secret(value: str, key: str) -> str:
        expanded = ENV_RE.sub(lambda m: env[m.group(1)], value)
        path = Path(expanded) if Path(expanded).is_absolute() else config.parent / expanded
        if ENV_RE.search(value) or not path.is_file():
            path = path if ENV_RE.search(value) else tmp / "secrets" / path.name
            path.parent.mkdir(parents=True, exist_ok=True)
            # continuity.store.url_file holds a URL, which the exporter checks
            url = key == "url_file"
            path.write_text("postgresql://u:dummy-secret-value@localhost/db\n" if url else "dummy-secret-value\n")
        return str(path)

    return fix(data)


def _is_secret_key(key: Any, value: Any) -> bool:
    return isinstance(value, str) and str(key).endswith("_file") and key not in EXPORTER_TLS_FILES


@pytest.mark.parametrize("path", of_kind("exporter"), ids=rel)
def test_exporter_config_check(path: Path, tmp_path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    env = exporter_check_env(text, tmp_path)
    data = localize_exporter(load_documents(path)[0], path, tmp_path, env)
    config = write(data, tmp_path, path.name)
    proc = run(sys.executable, "-m", "exporter", "--config.check", f"--config.file={config}", env=env)
    assert proc.returncode == 0, f"{rel(path)}: --config.check failed:\n{proc.stdout}{proc.stderr}"
    assert re.fullmatch(rf"{re.escape(str(config))}: configuration valid \(\d+ checks\)\n", proc.stdout)
    assert "dummy-secret-value" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("path", of_kind("web-config"), ids=rel)
def test_web_config_shape(path: Path) -> None:
    """exporter-toolkit web configs: known sections, and bcrypt hashes (never plain passwords)."""
    data = load_documents(path)[0]
    assert set(data) <= WEB_CONFIG_KEYS
    for user, hashed in (data.get("basic_auth_users") or {}).items():
        assert re.fullmatch(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}", str(hashed)), f"{user}: not a bcrypt hash"
    tls = data.get("tls_server_config") or {}
    assert ("cert_file" in tls) == ("key_file" in tls), "tls_server_config needs cert_file and key_file together"


@pytest.mark.parametrize("path", of_kind("grafana-provisioning"), ids=rel)
def test_grafana_provisioning_shape(path: Path) -> None:
    data = load_documents(path)[0]
    for item in data.get("datasources", []):
        assert {"name", "type", "url"} <= set(item), item
    for item in data.get("providers", []):
        assert item["type"] == "file" and item["options"]["path"].startswith("/"), item


# --- complete configs inside the documentation -----------------------------------------------------------


FENCE_RE = re.compile(r"^([ \t]*)```ya?ml\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def doc_blocks() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, match in enumerate(FENCE_RE.finditer(doc.read_text(encoding="utf-8"))):
            try:
                data = yaml.safe_load(textwrap.dedent(match.group(2)))
            except yaml.YAMLError:
                continue  # an excerpt with "..." placeholders, not a config
            kind = classify([data]) if isinstance(data, dict) else None
            if (kind == "prometheus" and "scrape_configs" in data) or kind == "alertmanager":
                out.append((f"{rel(doc)}#{n}", kind, data))
    return out


DOC_BLOCKS = doc_blocks()


def test_docs_have_complete_configs() -> None:
    kinds = {kind for _, kind, _ in DOC_BLOCKS}
    assert kinds == {"prometheus", "alertmanager"}, [name for name, _, _ in DOC_BLOCKS]


@pytest.mark.parametrize(("name", "kind", "data"), DOC_BLOCKS, ids=[b[0] for b in DOC_BLOCKS])
def test_configs_in_docs(name: str, kind: str, data: dict[str, Any], tmp_path: Path) -> None:
    source = ROOT / name.split("#")[0]
    if kind == "prometheus":
        promtool_check_config(data, source, tmp_path, strict=False)
    else:
        amtool_check_config(data, source, tmp_path)


def exporter_metric_jobs(data: dict[str, Any]) -> list[str]:
    """Jobs that scrape an exporter's own /metrics (port 10587, default path)."""
    return [
        job["job_name"]
        for job in data.get("scrape_configs") or []
        if job.get("metrics_path", "/metrics") == "/metrics"
        and any(t.endswith(":10587") for sc in job.get("static_configs", []) for t in sc.get("targets", []))
    ]


@pytest.mark.parametrize("path", of_kind("prometheus"), ids=rel)
def test_exporter_metrics_job_is_the_one_the_rules_select(path: Path) -> None:
    assert exporter_metric_jobs(load_documents(path)[0]) == ["mail"]
