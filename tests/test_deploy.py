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
- the HA pair on PostgreSQL (docker-compose.ha.yml, the overlay kubernetes-ha): two
  replicas with the same hardening, no volume of their own, the store's URL from a secret
  file and never inline, PostgreSQL's health check, both replicas in Alertmanager's
  receiver and in Prometheus's job, anti-affinity and a PodDisruptionBudget, the rendered
  overlay against the schemas, and everything else kept equal to the single-replica files;
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


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


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


# --- an HA pair on PostgreSQL: compose --------------------------------------------------------------------

COMPOSE_HA = DEPLOY / "docker-compose.ha.yml"
HA_SPEC = load(COMPOSE_HA)
HA_SERVICES = HA_SPEC["services"]
HA_REPLICAS = ("exporter-a", "exporter-b")
COMPOSE_HA_DIR = DEPLOY / "compose" / "ha"
#: postgresql://USER:PASSWORD@... in any shipped text: the password must be a placeholder.
DSN_PASSWORD = re.compile(r"postgres(?:ql)?://[^:/@\s]+:([^@\s]+)@")


def bind_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to deploy/), for the bind mounts of a service."""
    return {t: s for s, t, *_ in (v.split(":") for v in svc.get("volumes", [])) if s.startswith(".")}


def tmpfs_paths(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> mount options ("" when none), for the tmpfs mounts of a service."""
    entries = [svc["tmpfs"]] if isinstance(svc.get("tmpfs"), str) else svc.get("tmpfs", [])
    return {path: opts for path, _, opts in (e.partition(":") for e in entries)}


def without_store(config: dict[str, Any]) -> dict[str, Any]:
    out = {**config, "continuity": dict(config["continuity"])}
    del out["continuity"]["store"]
    return out


def test_compose_ha_services() -> None:
    assert sorted(HA_SERVICES) == ["alertmanager", "exporter-a", "exporter-b", "grafana", "postgres", "prometheus"]
    # The same project as docker-compose.yml: the pair takes over its Prometheus, Alertmanager
    # and Grafana volumes (and its ports), so the two stacks are alternatives, never run together.
    assert HA_SPEC["name"] == SPEC["name"]
    assert {"prometheus-data", "alertmanager-data", "grafana-data"} <= set(HA_SPEC["volumes"]) & set(SPEC["volumes"])
    assert "exporter-data" not in HA_SPEC["volumes"], "the pair keeps no incident store on a volume"


@pytest.mark.parametrize("name", sorted(HA_SERVICES))
def test_compose_ha_service_hardening(name: str) -> None:
    svc = HA_SERVICES[name]
    assert svc["read_only"] is True
    assert svc["cap_drop"] == ["ALL"]
    assert svc["security_opt"] == ["no-new-privileges:true"]
    assert svc["healthcheck"]["test"][0] == "CMD"
    assert svc["restart"] == "unless-stopped"
    for port in svc.get("ports", []):
        assert port.startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"
    if "image" in svc and "build" not in svc:
        repo, _, tag = svc["image"].rpartition(":")
        # PostgreSQL versions are MAJOR.MINOR; the image tag also names the Debian release.
        pinned = r"\d+\.\d+-bookworm" if repo == "postgres" else r"v?\d+\.\d+\.\d+"
        assert repo and re.fullmatch(pinned, tag), f"{name}: pin the image by version, got {svc['image']}"
    if "user" in svc:
        assert not svc["user"].startswith(("0:", "root")), f"{name}: runs as root"


def test_compose_ha_shared_services_are_the_single_stacks() -> None:
    """Prometheus, Alertmanager and Grafana are docker-compose.yml's, but for the config files they load."""
    for name in ("prometheus", "alertmanager", "grafana"):
        ha = dict(HA_SERVICES[name])
        ha["volumes"] = [v.replace("./compose/ha/", "./compose/", 1) for v in ha["volumes"]]
        assert ha == SERVICES[name], f"{name} differs from docker-compose.yml beyond its config file"
    assert bind_mounts(HA_SERVICES["prometheus"])["/etc/prometheus/prometheus.yml"] == "./compose/ha/prometheus.yml"
    assert bind_mounts(HA_SERVICES["alertmanager"])["/etc/alertmanager/alertmanager.yml"] == (
        "./compose/ha/alertmanager.yml"
    )


def test_compose_ha_replicas() -> None:
    a, b = (HA_SERVICES[name] for name in HA_REPLICAS)
    # One definition: they differ only in their host name and their published port.
    assert {k: v for k, v in a.items() if k not in ("hostname", "ports")} == {
        k: v for k, v in b.items() if k not in ("hostname", "ports")
    }
    assert (a["hostname"], b["hostname"]) == HA_REPLICAS
    assert a["ports"] != b["ports"] and {a["ports"][0].rsplit(":", 1)[1], b["ports"][0].rsplit(":", 1)[1]} == {
        str(PORT)
    }
    single = SERVICES["exporter"]
    for key in ("build", "image", "user", "read_only", "cap_drop", "security_opt", "healthcheck", "restart"):
        assert a[key] == single[key], f"{key} differs from docker-compose.yml's exporter"
    assert a["command"] == single["command"]
    assert flag(a["command"], "web.listen-address") == f":{PORT}"
    storage = flag(a["command"], "storage.path")
    assert storage == STORAGE
    # --storage.path on a tmpfs the exporter's user owns; no volume holds anything of the exporter
    tmpfs = tmpfs_paths(a)
    assert "/tmp" in tmpfs
    options = dict(o.partition("=")[::2] for o in tmpfs[storage].split(","))
    assert (options["uid"], options["gid"]) == (str(PORT), str(PORT)) == tuple(a["user"].split(":"))
    assert [v for v in a["volumes"] if not v.startswith(".")] == [], "a named volume on an exporter of the pair"
    assert bind_mounts(a) == {flag(a["command"], "config.file"): "./compose/ha/config.yml"}
    assert {"webhook-token", "store-url"} <= set(a["secrets"])
    assert a["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_compose_ha_postgres() -> None:
    pg = HA_SERVICES["postgres"]
    assert pg["image"].startswith("postgres:16.")
    env = pg["environment"]
    assert "POSTGRES_PASSWORD" not in env, "the password goes in a secret file, never in the environment"
    assert env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password" and "postgres-password" in pg["secrets"]
    assert "ports" not in pg, "PostgreSQL is reached on the compose network only"
    (data,) = [v for v in pg["volumes"] if not v.startswith(".")]
    volume, target = data.split(":")[:2]
    assert volume in HA_SPEC["volumes"] and target == "/var/lib/postgresql/data"
    check = pg["healthcheck"]["test"]
    assert check[1] == "pg_isready"
    args = dict(a.removeprefix("--").partition("=")[::2] for a in check[2:])
    # over TCP (the image's first-start server listens on the socket only), as the exporters' user and database
    assert args == {"host": "127.0.0.1", "username": env["POSTGRES_USER"], "dbname": env["POSTGRES_DB"]}
    assert "/var/run/postgresql" in tmpfs_paths(pg), "read-only root: the socket directory is a tmpfs"


def test_compose_ha_store_url_comes_from_a_secret_file() -> None:
    config = load(COMPOSE_HA_DIR / "config.yml")
    store = config["continuity"]["store"]
    assert store == {"url_file": "/run/secrets/store-url"}, "the URL, with its password, is a secret file"
    for name in HA_REPLICAS:
        svc = HA_SERVICES[name]
        assert "store-url" in svc["secrets"]
        assert not any(a.startswith("--storage.url") for a in svc["command"]), "a password on the command line"
        assert "environment" not in svc
    # The URL the header tells you to write matches the PostgreSQL service: user, host, port, database.
    header = COMPOSE_HA.read_text(encoding="utf-8").split("\nname:")[0]
    (template,) = re.findall(
        r"printf '(postgres(?:ql)?://[^']+)' \"\$\(cat compose/secrets/postgres-password\)\"", header
    )
    match = re.fullmatch(r"postgresql://(\w+):%s@([\w-]+):(\d+)/(\w+)", template)
    assert match is not None, template
    env = HA_SERVICES["postgres"]["environment"]
    assert match.groups() == (env["POSTGRES_USER"], "postgres", "5432", env["POSTGRES_DB"])
    assert re.search(r"> compose/secrets/store-url\n", header)


def test_compose_ha_secrets_are_declared_and_never_committed() -> None:
    used = {s for svc in HA_SERVICES.values() for s in svc.get("secrets", [])}
    assert used == set(HA_SPEC["secrets"]) == {*SPEC["secrets"], "postgres-password", "store-url"}
    header = COMPOSE_HA.read_text(encoding="utf-8").split("\nname:")[0]
    for name, spec in HA_SPEC["secrets"].items():
        assert spec["file"] == f"./compose/secrets/{name}", "in the directory git ignores"
        assert re.search(rf"> compose/secrets/{re.escape(name)}\n", header), f"{name}: the header does not create it"
    ignore = (DEPLOY / "compose" / "secrets" / ".gitignore").read_text().splitlines()
    assert "*" in ignore and "!.gitignore" in ignore
    for svc in HA_SERVICES.values():
        for key in svc.get("environment", {}):
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert key.endswith("_FILE"), f"{key}: a secret in the environment"


def test_no_password_in_any_ha_file() -> None:
    paths = [
        COMPOSE_HA,
        *sorted(COMPOSE_HA_DIR.iterdir()),
        *sorted((DEPLOY / "kubernetes-ha").iterdir()),
        ROOT / "docs" / "deploy.md",
    ]
    found = 0
    for path in paths:
        for password in DSN_PASSWORD.findall(path.read_text(encoding="utf-8")):
            found += 1
            assert password in ("%s", "PASSWORD") or "REPLACE-ME" in password, f"{path}: a password in a URL"
    assert found >= 3  # the compose header, the Kubernetes Secret's placeholder, the guide


def test_compose_ha_alertmanager_notifies_both_replicas() -> None:
    am = load(COMPOSE_HA_DIR / "alertmanager.yml")
    base = load(DEPLOY / "compose" / "alertmanager.yml")
    receivers = {r["name"]: r for r in am["receivers"]}
    hooks = receivers["mail-continuity-exporter"]["webhook_configs"]
    assert [h["url"] for h in hooks] == [f"http://{name}:{PORT}/alertmanager" for name in HA_REPLICAS]
    (base_hook,) = {r["name"]: r for r in base["receivers"]}["mail-continuity-exporter"]["webhook_configs"]
    for hook in hooks:
        # each one the single stack's webhook, token and send_resolved included, to another replica
        assert {**hook, "url": base_hook["url"]} == base_hook
    token = base_hook["http_config"]["authorization"]["credentials_file"]
    assert load(COMPOSE_HA_DIR / "config.yml")["webhook"]["bearer_token_file"] == token
    assert all("webhook-token" in HA_SERVICES[s]["secrets"] for s in ("alertmanager", *HA_REPLICAS))
    # the rest is the single stack's: the same routes and receivers
    receivers["mail-continuity-exporter"]["webhook_configs"] = [base_hook]
    assert am == base


def test_compose_ha_prometheus_scrapes_both_replicas() -> None:
    prom = load(COMPOSE_HA_DIR / "prometheus.yml")
    base = load(DEPLOY / "compose" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["mail"]["static_configs"] == [{"targets": [f"{name}:{PORT}" for name in HA_REPLICAS]}]
    assert rule_job_selectors() == {"mail"}
    jobs["mail"]["static_configs"] = [{"targets": [f"exporter:{PORT}"]}]
    assert prom == base, "beyond the targets, the single stack's prometheus.yml"


def test_compose_ha_config_is_the_single_stacks_plus_the_store() -> None:
    ha = load(COMPOSE_HA_DIR / "config.yml")
    assert without_store(ha) == load(DEPLOY / "compose" / "config.yml")
    assert "url" not in ha["continuity"]["store"]


def test_compose_ha_bind_mounts_exist_and_volumes_are_declared() -> None:
    for name, svc in HA_SERVICES.items():
        for volume in svc.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source.startswith("."):
                assert (COMPOSE_HA.parent / source).exists(), f"{name}: {source} is not in the repository"
                assert mode == ["ro"], f"{name}: mount {source} read-only"
            else:
                assert source in HA_SPEC["volumes"], f"{name}: volume {source} is not declared"
            assert target.startswith("/")


def localize_secrets(node: Any, tmp_path: Path) -> Any:
    """The config with each secret file (``*_file``) replaced by a dummy here; the store's is a URL."""
    if isinstance(node, list):
        return [localize_secrets(v, tmp_path) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if str(key).endswith("_file") and isinstance(value, str):
            assert value.startswith("/"), f"{key}: {value} is relative to the config file's directory"
            dummy = tmp_path / "secrets" / value.strip("/").replace("/", "_")
            dummy.parent.mkdir(exist_ok=True)
            dummy.write_text("postgresql://mce:dummy-password@postgres:5432/mce\n" if key == "url_file" else "dummy\n")
            out[key] = str(dummy)
        else:
            out[key] = localize_secrets(value, tmp_path)
    return out


@pytest.mark.parametrize("config", [COMPOSE_HA_DIR / "config.yml", DEPLOY / "kubernetes-ha" / "config.yml"], ids=rel)
def test_ha_exporter_config_check(config: Path, tmp_path: Path) -> None:
    """``--config.check`` with the secret files in place, the store's a URL (as the real one is)."""
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(localize_secrets(load(config), tmp_path), sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={path}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"{path}: configuration valid")
    assert "dummy-password" not in proc.stdout + proc.stderr


def test_compose_ha_prometheus_passes_promtool(tmp_path: Path) -> None:
    """promtool check config, with the rule files as the HA compose file mounts them."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus", pytrace=False)
    prom = load(COMPOSE_HA_DIR / "prometheus.yml")
    mounts = {t: (COMPOSE_HA.parent / s).resolve() for t, s in bind_mounts(HA_SERVICES["prometheus"]).items()}
    (pattern,) = prom["rule_files"]
    directory, _, glob = pattern.rpartition("/")
    prom["rule_files"] = [str(mounts[directory] / glob)]
    assert sorted(mounts[directory].glob(glob)), f"{pattern} matches no rule file"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(prom, sort_keys=False))
    proc = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {path} is valid prometheus config file syntax" in proc.stdout


def test_compose_ha_alertmanager_passes_amtool(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool not found: apt-get install prometheus-alertmanager", pytrace=False)
    token = tmp_path / "webhook-token"
    token.write_text("dummy")
    text = (COMPOSE_HA_DIR / "alertmanager.yml").read_text(encoding="utf-8")
    path = tmp_path / "alertmanager.yml"
    path.write_text(text.replace("/run/secrets/webhook-token", str(token)))
    proc = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Checking '{path}'  SUCCESS" in proc.stdout


# --- an HA pair on PostgreSQL: Kubernetes -----------------------------------------------------------------

K8S_HA = DEPLOY / "kubernetes-ha"
HA_KUSTOMIZATION = load(K8S_HA / "kustomization.yaml")
HA_PATCH = load(K8S_HA / "deployment-patch.yaml")
HA_POD = HA_PATCH["spec"]["template"]["spec"]
(HA_CONTAINER,) = HA_POD["containers"]
HA_PDB = load(K8S_HA / "pdb.yaml")
HA_STORE_SECRET = load(K8S_HA / "secret-store.yaml")
HA_CONFIG = load(K8S_HA / "config.yml")


def test_ha_overlay_is_an_overlay_of_the_base() -> None:
    # a sibling of the base: kustomize refuses an overlay inside its base's directory
    assert HA_KUSTOMIZATION["resources"] == ["../kubernetes", "secret-store.yaml", "pdb.yaml"]
    assert (K8S_HA / HA_KUSTOMIZATION["resources"][0]).resolve() == K8S
    for name in HA_KUSTOMIZATION["resources"][1:]:
        assert (K8S_HA / name).is_file()
    paths = [p["path"] for p in HA_KUSTOMIZATION["patches"] if "path" in p]
    assert paths == ["deployment-patch.yaml"]
    target = HA_PATCH["kind"], HA_PATCH["metadata"]["name"]
    assert target == ("Deployment", DEPLOYMENT["metadata"]["name"])
    (generator,) = HA_KUSTOMIZATION["configMapGenerator"]
    (base_generator,) = KUSTOMIZATION["configMapGenerator"]
    assert generator == {**base_generator, "behavior": "replace"}
    for name in generator["files"]:
        assert (K8S_HA / name).is_file()
    assert HA_KUSTOMIZATION["labels"] == KUSTOMIZATION["labels"]


def test_ha_overlay_deletes_the_pvc() -> None:
    (inline,) = [yaml.safe_load(p["patch"]) for p in HA_KUSTOMIZATION["patches"] if "patch" in p]
    pvc = MANIFESTS["PersistentVolumeClaim"]
    assert inline == {
        "$patch": "delete",
        "apiVersion": pvc["apiVersion"],
        "kind": pvc["kind"],
        "metadata": {"name": pvc["metadata"]["name"]},
    }


def test_ha_deployment_patch() -> None:
    spec = HA_PATCH["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    # the patch merges into the base's container by name: another name would add a second container
    assert HA_CONTAINER["name"] == CONTAINER["name"]
    assert set(HA_CONTAINER) == {"name", "volumeMounts"}, "the base's args, probes and hardening stay as they are"
    volumes = {v["name"]: v for v in HA_POD["volumes"]}
    base_mounts = {m["mountPath"]: m["name"] for m in CONTAINER["volumeMounts"]}
    data = volumes[base_mounts[flag(CONTAINER["args"], "storage.path")]]
    assert "emptyDir" in data and data["persistentVolumeClaim"] is None, "--storage.path on an emptyDir"


def test_ha_pods_spread_over_nodes() -> None:
    terms = HA_POD["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    by_key = {t["podAffinityTerm"]["topologyKey"]: t for t in terms}
    assert by_key["kubernetes.io/hostname"]["weight"] == 100
    selector = DEPLOYMENT["spec"]["selector"]["matchLabels"]
    for term in terms:
        assert term["podAffinityTerm"]["labelSelector"] == {"matchLabels": selector}
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in HA_POD["affinity"]["podAntiAffinity"]


def test_ha_pdb() -> None:
    assert HA_PDB["apiVersion"] == "policy/v1" and HA_PDB["kind"] == "PodDisruptionBudget"
    assert HA_PDB["spec"]["minAvailable"] == 1 < HA_PATCH["spec"]["replicas"]
    assert HA_PDB["spec"]["selector"] == {"matchLabels": DEPLOYMENT["spec"]["selector"]["matchLabels"]}
    assert "maxUnavailable" not in HA_PDB["spec"]


def test_ha_store_url_comes_from_a_secret_file() -> None:
    store = HA_CONFIG["continuity"]["store"]
    assert set(store) == {"url_file"}, "the URL, with its password, is a secret file; never inline"
    mount_dir, _, file_name = store["url_file"].rpartition("/")
    (mount,) = [m for m in HA_CONTAINER["volumeMounts"] if m["mountPath"] == mount_dir]
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in HA_POD["volumes"]}[mount["name"]]["secret"]
    assert volume["secretName"] == HA_STORE_SECRET["metadata"]["name"]
    assert volume["defaultMode"] == 0o440
    (item,) = volume["items"]
    assert item["path"] == file_name and item["key"] in HA_STORE_SECRET["stringData"]
    # a placeholder, and a URL (the exporter refuses anything else)
    url = HA_STORE_SECRET["stringData"][item["key"]]
    assert url.startswith("postgresql://") and "REPLACE-ME" in url
    assert not any(a.startswith("--storage.url") for a in CONTAINER["args"])
    assert "env" not in HA_CONTAINER and "envFrom" not in HA_CONTAINER


def test_ha_config_is_the_bases_plus_the_store() -> None:
    assert without_store(HA_CONFIG) == load(K8S / "config.yml")


def test_ha_readiness_does_not_depend_on_the_lease() -> None:
    """Readiness is the base's ``/-/ready``, and a standby (not holding the lease) is ready.

    Were it tied to the lease, the Service would send Alertmanager's notifications to the
    leader alone, and a rollout or a failover would wait for a new leader to be ready.
    """
    from types import SimpleNamespace

    from exporter.app import Exporter, Options

    assert "readinessProbe" not in HA_CONTAINER
    assert CONTAINER["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    standby = Exporter(Options())
    standby.continuity = SimpleNamespace(  # type: ignore[assignment]
        is_leader=lambda: False, lease_holder="exporter-a/1/abcdef", store=SimpleNamespace(shared=True)
    )
    standby.config = object()  # type: ignore[assignment]
    standby.scheduler = SimpleNamespace(scheduled=SimpleNamespace(is_set=lambda: True))  # type: ignore[assignment]
    assert standby.ready is True
    standby.scheduler = SimpleNamespace(scheduled=SimpleNamespace(is_set=lambda: False))  # type: ignore[assignment]
    assert standby.ready is False  # (what readiness does wait for: the checks scheduled)


def test_ha_overlay_files_match_the_kubernetes_schemas() -> None:
    import kubernetes_validate as kv  # the test extra

    for manifest in (HA_PDB, HA_STORE_SECRET):
        kv.validate(manifest, "1.30", strict=True)


@pytest.fixture(scope="module")
def ha_rendered() -> dict[tuple[str, str], dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (Debian: kubernetes-client); the overlay's files are checked without it")
    proc = subprocess.run([kubectl, "kustomize", str(K8S_HA)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(proc.stdout) if d is not None}


def test_ha_kubectl_kustomize_renders(ha_rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    kinds = sorted(kind for kind, _ in ha_rendered)
    expected = [k for k in MANIFESTS if k != "PersistentVolumeClaim"] + ["ConfigMap", "PodDisruptionBudget", "Secret"]
    assert kinds == sorted(expected), "no PVC; a PDB and the store's Secret added"
    deployment = ha_rendered["Deployment", DEPLOYMENT["metadata"]["name"]]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # everything of the base's pod survives the patch: args, probes, security contexts, resources
    for key in ("args", "ports", "livenessProbe", "readinessProbe", "startupProbe", "securityContext", "resources"):
        assert container[key] == CONTAINER[key], key
    assert pod["securityContext"] == POD["securityContext"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("persistentVolumeClaim" not in v for v in volumes.values())
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(volumes[mounts[flag(container["args"], "storage.path")]]) == {"name", "emptyDir"}
    assert {m["mountPath"] for m in container["volumeMounts"]} > {m["mountPath"] for m in CONTAINER["volumeMounts"]}
    # every Secret the pods mount is rendered (placeholders to replace before the first apply)
    secrets = {name for kind, name in ha_rendered if kind == "Secret"}
    assert {v["secret"]["secretName"] for v in volumes.values() if "secret" in v} == secrets
    (config_map,) = [d for (kind, _), d in ha_rendered.items() if kind == "ConfigMap"]
    assert config_map["data"]["config.yml"] == (K8S_HA / "config.yml").read_text(encoding="utf-8")
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    pdb = ha_rendered["PodDisruptionBudget", HA_PDB["metadata"]["name"]]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    for obj in ha_rendered.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "mail-continuity-exporter"


def test_ha_rendered_core_manifests_match_the_kubernetes_schemas(
    ha_rendered: dict[tuple[str, str], dict[str, Any]],
) -> None:
    import kubernetes_validate as kv  # the test extra

    checked = 0
    for manifest in ha_rendered.values():
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: no schema in kubernetes-validate
        kv.validate(manifest, "1.30", strict=True)
        checked += 1
    assert checked == 6  # ConfigMap, two Secrets, Service, Deployment, PodDisruptionBudget


def test_deploy_guide_names_existing_files() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = guide.split("## An HA pair on PostgreSQL", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"(deploy/[\w./-]+\w)", section))
    assert {"deploy/docker-compose.ha.yml", "deploy/kubernetes-ha"} <= named
    for path in named:
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    assert "scaling.md#two-exporters-on-one-postgresql-store" in section
    # and the guide's own links to its sections resolve (GitHub's heading anchors)
    anchors = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", guide, re.M)
    }
    links = set(re.findall(r"\]\(#([\w-]+)\)", guide))
    assert {"an-ha-pair-on-postgresql", "kubernetes-the-overlay-deploykubernetes-ha"} <= links
    assert links <= anchors, f"links to missing sections: {links - anchors}"
    for path in [COMPOSE_HA, *sorted(K8S_HA.iterdir())]:
        for anchor in re.findall(r"docs/deploy\.md#([\w-]+)", path.read_text(encoding="utf-8")):
            assert anchor in anchors, f"{rel(path)}: docs/deploy.md#{anchor} is no section"
    assert "\n## Two exporters on one PostgreSQL store\n" in (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    assert "mail_exporter_leader" in section


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
