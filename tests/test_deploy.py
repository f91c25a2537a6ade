"""The deployment pack in deploy/: compose, the kustomize base and the systemd unit.

Images cannot be pulled and no cluster runs here, so the tests check what can be checked
offline, against the project's own sources of truth:

- compose: the services, their hardening (read-only, no capabilities, no new privileges,
  health checks), ports on 127.0.0.1 only, every bind mount a file of the repository, and
  the wiring between the files (the webhook token, the service names, the paths Grafana
  and Prometheus read);
- Kubernetes: every kustomize resource exists and renders (``kubectl kustomize`` when
  kubectl is installed), the pod's security context, probes on real routes of the app,
  the port names that tie Deployment, Service and ServiceMonitor together, the generated
  PrometheusRule up to date with rules/ and accepted by ``promtool check rules``, and the
  core manifests against the Kubernetes JSON schemas (``kubernetes-validate``, when
  installed);
- systemd: ``systemd-analyze verify`` and the hardening directives; the exporter really
  runs with write-xor-execute memory (what ``MemoryDenyWriteExecute=yes`` enforces).

(The exporter configs of compose and Kubernetes pass ``--config.check`` in
tests/test_shipped_configs.py, with every other shipped config.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ExporterProcess, free_port, metric_values, one
from test_continuity_support import am_alert, body, payload

from exporter.web.server import make_app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "mail-continuity-exporter.service"
STORAGE = "/var/lib/mail-continuity-exporter"
PORT = 10587


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times in {args}"
    return values[0]


def routes() -> set[tuple[str, str]]:
    app = make_app(None)  # type: ignore[arg-type]  # the routes do not need an exporter
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}


def rule_job_selectors() -> set[str]:
    found: set[str] = set()
    for path in sorted((ROOT / "rules").glob("*.rules.yml")):
        found.update(re.findall(r'job="([^"]+)"', path.read_text(encoding="utf-8")))
    return found


# --- compose ------------------------------------------------------------------------------------------

SPEC = load(COMPOSE)
SERVICES = SPEC["services"]


def test_compose_services() -> None:
    assert sorted(SERVICES) == ["alertmanager", "exporter", "grafana", "prometheus"]
    assert SERVICES["exporter"]["build"] == ".."
    assert (COMPOSE.parent / ".." / "Dockerfile").is_file()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_service_hardening(name: str) -> None:
    svc = SERVICES[name]
    assert svc["read_only"] is True
    assert svc["cap_drop"] == ["ALL"]
    assert svc["security_opt"] == ["no-new-privileges:true"]
    assert svc["healthcheck"]["test"][0] == "CMD"
    assert svc["restart"] == "unless-stopped"
    for port in svc["ports"]:
        assert port.startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"
    if "image" in svc and "build" not in svc:
        repo, _, tag = svc["image"].rpartition(":")
        assert repo and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin the image by version, got {svc['image']}"


def test_compose_exporter() -> None:
    svc = SERVICES["exporter"]
    assert svc["user"] == f"{PORT}:{PORT}"
    assert svc["tmpfs"] == ["/tmp"]
    assert svc["ports"] == [f"127.0.0.1:{PORT}:{PORT}"]
    assert flag(svc["command"], "web.listen-address") == f":{PORT}"
    assert flag(svc["command"], "storage.path") == STORAGE
    mounts = dict(reversed(v.split(":")[:2]) for v in svc["volumes"])
    assert mounts[STORAGE] == "exporter-data" and "exporter-data" in SPEC["volumes"]
    assert mounts[flag(svc["command"], "config.file")] == "./compose/config.yml"
    health = " ".join(svc["healthcheck"]["test"])
    assert f"http://127.0.0.1:{PORT}/-/healthy" in health and ("GET", "/-/healthy") in routes()


def test_compose_bind_mounts_exist_and_volumes_are_declared() -> None:
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} is not in the repository"
                assert mode == ["ro"], f"{name}: mount {source} read-only"
            else:
                assert source in SPEC["volumes"], f"{name}: volume {source} is not declared"
            assert target.startswith("/")


def test_compose_secrets_are_declared_and_never_committed() -> None:
    used = {s for svc in SERVICES.values() for s in svc.get("secrets", [])}
    assert used == set(SPEC["secrets"]) == {"webhook-token", "probe-password", "grafana-admin-password"}
    for spec in SPEC["secrets"].values():
        assert spec["file"].startswith("./compose/secrets/")
    ignore = (DEPLOY / "compose" / "secrets" / ".gitignore").read_text().splitlines()
    assert "*" in ignore and "!.gitignore" in ignore
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/compose/secrets"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert tracked.stdout.split() in ([], ["deploy/compose/secrets/.gitignore"])


def test_compose_webhook_token_is_one_secret_on_both_sides() -> None:
    """Alertmanager sends the very file the exporter checks, to the exporter's service name."""
    exporter_config = load(DEPLOY / "compose" / "config.yml")
    am = load(DEPLOY / "compose" / "alertmanager.yml")
    hooks = [h for r in am["receivers"] if r["name"] == "mail-continuity-exporter" for h in r["webhook_configs"]]
    assert len(hooks) == 1
    assert hooks[0]["url"] == f"http://exporter:{PORT}/alertmanager" and ("POST", "/alertmanager") in routes()
    assert hooks[0]["send_resolved"] is True
    token = "/run/secrets/webhook-token"
    assert hooks[0]["http_config"]["authorization"]["credentials_file"] == token
    assert exporter_config["webhook"]["bearer_token_file"] == token
    assert "webhook-token" in SERVICES["alertmanager"]["secrets"] and "webhook-token" in SERVICES["exporter"]["secrets"]
    assert am["route"]["routes"][0]["receiver"] == "mail-continuity-exporter"
    assert am["route"]["routes"][0]["continue"] is True
    assert exporter_config["continuity"]["reconcile"]["alertmanager_url"] == "http://alertmanager:9093"


def test_compose_prometheus_wiring() -> None:
    prom = load(DEPLOY / "compose" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["mail"]["static_configs"] == [{"targets": [f"exporter:{PORT}"]}]
    assert rule_job_selectors() == {"mail"}, "the rules select this job name"
    assert prom["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]
    mounts = {t: s for s, t, *_ in (v.split(":") for v in SERVICES["prometheus"]["volumes"])}
    assert prom["rule_files"] == ["/etc/prometheus/rules/*.rules.yml"]
    assert mounts["/etc/prometheus/rules"] == "../rules"


def test_compose_grafana_wiring() -> None:
    mounts = {t: s for s, t, *_ in (v.split(":") for v in SERVICES["grafana"]["volumes"])}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "mail.yml")["providers"][0]
    assert mounts[provider["options"]["path"]] == "../dashboards"
    assert len(sorted((ROOT / "dashboards").glob("*.json"))) == 4
    datasource = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in SERVICES
    env = SERVICES["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana-admin-password"


# --- Kubernetes ----------------------------------------------------------------------------------------

KUSTOMIZATION = load(K8S / "kustomization.yaml")


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> manifest, for every resource of the kustomization."""
    out = {}
    for name in KUSTOMIZATION["resources"]:
        docs = [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d is not None]
        assert len(docs) == 1, f"{name}: one object per file"
        out[docs[0]["kind"]] = docs[0]
    return out


MANIFESTS = manifests()
DEPLOYMENT = MANIFESTS["Deployment"]
POD = DEPLOYMENT["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]


def test_kustomization_lists_existing_files() -> None:
    assert sorted(MANIFESTS) == [
        "Deployment",
        "PersistentVolumeClaim",
        "PrometheusRule",
        "Secret",
        "Service",
        "ServiceMonitor",
    ]
    for name in KUSTOMIZATION["resources"]:
        assert (K8S / name).is_file()
    for generator in KUSTOMIZATION["configMapGenerator"]:
        for name in generator["files"]:
            assert (K8S / name).is_file()
    optional = load(K8S / "networkpolicy.yaml")
    assert optional["kind"] == "NetworkPolicy"
    assert optional["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_kubectl_kustomize_renders(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (Debian: kubernetes-client); the structure is checked without it")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rendered = {d["kind"]: d for d in yaml.safe_load_all(proc.stdout) if d is not None}
    assert sorted(rendered) == sorted([*MANIFESTS, "ConfigMap"])
    config_map = rendered["ConfigMap"]
    assert re.fullmatch(r"mail-continuity-exporter-config-[a-z0-9]{10}", config_map["metadata"]["name"])
    assert config_map["data"]["config.yml"] == (K8S / "config.yml").read_text(encoding="utf-8")
    volumes = {v["name"]: v for v in rendered["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"], "a config change rolls the pod"
    for obj in rendered.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "mail-continuity-exporter"


def test_deployment_single_writer() -> None:
    assert DEPLOYMENT["spec"]["replicas"] == 1
    assert DEPLOYMENT["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in POD["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in CONTAINER["volumeMounts"]}
    claim = volumes[mounts[flag(CONTAINER["args"], "storage.path")]]["persistentVolumeClaim"]["claimName"]
    pvc = MANIFESTS["PersistentVolumeClaim"]
    assert claim == pvc["metadata"]["name"] and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_deployment_security_context() -> None:
    assert POD["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": PORT,
        "runAsGroup": PORT,
        "fsGroup": PORT,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert CONTAINER["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert POD["automountServiceAccountToken"] is False
    resources = CONTAINER["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"} and set(resources["limits"]) == {"memory"}


def test_deployment_probes_are_real_routes() -> None:
    app_routes = routes()
    probes = {kind: CONTAINER[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/-/healthy"
    assert probes["readinessProbe"]["path"] == "/-/ready"
    for probe in probes.values():
        assert ("GET", probe["path"]) in app_routes
        assert probe["port"] == "http"


def test_ports_tie_deployment_service_and_servicemonitor() -> None:
    (port,) = CONTAINER["ports"]
    assert port == {"name": "http", "containerPort": PORT, "protocol": "TCP"}
    assert flag(CONTAINER["args"], "web.listen-address") == f":{PORT}"
    (service_port,) = MANIFESTS["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    (endpoint,) = MANIFESTS["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint["path"] == "/metrics" and ("GET", "/metrics") in routes()
    selector = MANIFESTS["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    assert selector == MANIFESTS["Service"]["spec"]["selector"] == DEPLOYMENT["spec"]["selector"]["matchLabels"]
    job = [r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
    assert job == sorted(rule_job_selectors()) == ["mail"]


def test_secret_keys_are_the_files_the_config_reads() -> None:
    config_text = (K8S / "config.yml").read_text(encoding="utf-8")
    (mount,) = [m["mountPath"] for m in CONTAINER["volumeMounts"] if m["name"] == "secrets"]
    read = set(re.findall(rf"_file: ({re.escape(mount)}/[\w.-]+)", config_text))
    secret = MANIFESTS["Secret"]
    assert (
        read
        == {f"{mount}/{key}" for key in secret["stringData"]}
        == {
            f"{mount}/webhook-token",
            f"{mount}/probe-password",
        }
    )
    (volume,) = [v for v in POD["volumes"] if v["name"] == "secrets"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert flag(CONTAINER["args"], "config.file") == "/etc/mail-continuity-exporter/config.yml"


def test_core_manifests_match_the_kubernetes_schemas() -> None:
    import kubernetes_validate as kv  # the test extra

    for name in [*KUSTOMIZATION["resources"], "networkpolicy.yaml"]:
        manifest = load(K8S / name)
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: no schema in kubernetes-validate; their structure is tested above
        kv.validate(manifest, "1.30", strict=True)


def test_prometheusrule_is_generated_from_rules() -> None:
    proc = subprocess.run(
        [sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"run python deploy/kubernetes/generate.py\n{proc.stdout}{proc.stderr}"
    groups = [g for path in sorted((ROOT / "rules").glob("*.rules.yml")) for g in load(path)["groups"]]
    assert MANIFESTS["PrometheusRule"]["spec"]["groups"] == groups


def test_prometheusrule_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus", pytrace=False)
    groups = MANIFESTS["PrometheusRule"]["spec"]["groups"]
    extracted = tmp_path / "prometheusrule.rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    proc = subprocess.run([promtool, "check", "rules", str(extracted)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {count} rules found" in proc.stdout


# --- systemd --------------------------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines (continuations joined), every value of a repeated key."""
    out: dict[str, list[str]] = defaultdict(list)
    for line in text.replace("\\\n", " ").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out[key.strip()].append(" ".join(value.split()))
    return out


UNIT_TEXT = UNIT.read_text(encoding="utf-8")
DIRECTIVES = unit_directives(UNIT_TEXT)


def test_unit_hardening() -> None:
    expected = {
        "DynamicUser": ["yes"],
        "SupplementaryGroups": ["postdrop"],
        "StateDirectory": ["mail-continuity-exporter"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""],
        "AmbientCapabilities": [""],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
        "MemoryDenyWriteExecute": ["yes"],
        "ReadOnlyPaths": ["-/var/spool/postfix"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
    }
    assert {key: DIRECTIVES.get(key) for key in expected} == expected
    (exec_start,) = DIRECTIVES["ExecStart"]
    args = exec_start.split()
    assert flag(args, "storage.path") == f"/var/lib/{DIRECTIVES['StateDirectory'][0]}"
    assert flag(args, "config.file") == "/etc/mail-continuity-exporter/config.yml"


def analyzable_unit(tmp_path: Path, extra: str = "") -> Path:
    """The unit with an ExecStart binary that exists here (verify insists on it)."""
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", UNIT_TEXT, count=1, flags=re.MULTILINE)
    path = tmp_path / UNIT.name
    path.write_text(text.replace("[Install]", f"{extra}[Install]"))
    return path


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (Debian: systemd)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    proc = systemd_analyze("verify", str(analyzable_unit(tmp_path)))
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    # and verify does notice a mistake in this very file (the check can fail)
    bad = systemd_analyze("verify", str(analyzable_unit(tmp_path, "ProtectSytem=strict\n")))
    assert "Unknown key 'ProtectSytem'" in bad.stdout + bad.stderr


def test_systemd_analyze_security(tmp_path: Path) -> None:
    proc = systemd_analyze("security", "--offline=true", "--no-pager", str(analyzable_unit(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert match is not None, proc.stdout[-2000:]
    assert float(match.group(1)) <= 2.0, proc.stdout  # systemd rates 0-10; "OK" is below 4.0


MDWE_LAUNCHER = """\
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.executable, [sys.executable, "-m", "exporter", *sys.argv[1:]])
"""

MDWE_CONFIG = """\
continuity:
  services:
    - {name: inbound, incident_match: {service: inbound}}
webhook:
  bearer_token: s3cret-token
"""


def test_exporter_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    """What MemoryDenyWriteExecute=yes enforces, with the kernel's own switch (Linux 6.3+).

    The exporter serves, and its store's writer process (which inherits the switch)
    stores a notification.
    """
    config = tmp_path / "config.yml"
    config.write_text(MDWE_CONFIG)
    port = free_port()
    argv = [
        sys.executable,
        "-c",
        MDWE_LAUNCHER,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.path={tmp_path / 'data'}",
        f"--config.file={config}",
    ]
    log_path = tmp_path / "exporter.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    exp = ExporterProcess(proc, port, log_path)
    try:
        try:
            proc.wait(0.5)
        except subprocess.TimeoutExpired:
            pass
        if proc.returncode == 77:
            pytest.skip("the kernel has no PR_SET_MDWE (Linux < 6.3)")
        exp.wait_ready()
        alert = am_alert(
            "f00d", {"alertname": "MailMxDown", "service": "inbound", "severity": "critical"}, 1_700_000_000.0
        )
        headers = {"Content-Type": "application/json", "Authorization": "Bearer s3cret-token"}
        assert exp.post("/alertmanager", body(payload([alert])), headers).status == 200
        text = exp.wait_for(lambda t: 'mail_incidents_open{service="inbound",severity="critical"} 1.0' in t)
        assert one(metric_values(text, "mail_webhook_notifications_total"), result="accepted") == 1
        assert one(metric_values(text, "mail_incidents_total"), service="inbound", severity="critical") == 1
    finally:
        exp.stop()
    assert "Traceback" not in log_path.read_text(encoding="utf-8")
