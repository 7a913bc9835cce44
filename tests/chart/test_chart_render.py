"""The chart lints, renders and validates for every value set, and follows the contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from chart_helpers import (
    CHART,
    CI_PASSWORDS,
    NAMESPACE,
    PREFIX,
    RELEASE,
    VALUE_SETS,
    Rendered,
    env_of,
    run_helm,
    secret_data,
    template,
    values_args,
)

# kubernetes-validate has no schema for CRDs: these kinds are checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor"}
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(helm: Path, value_set: str) -> None:
    lint = ["lint", "--strict", str(CHART), "-f", str(CI_PASSWORDS), *values_args(value_set)]
    result = run_helm(helm, *lint)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kube_version", ["1.28.0", "1.33.0"])
def test_manifests_validate_strictly(
    manifest_files: list[Path], rendered: dict[str, Rendered], kube_version: str
) -> None:
    """Every rendered document of every value set, in one kubernetes-validate call."""
    result = subprocess.run(
        [
            # The module of the interpreter running the tests, whatever is on PATH.
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            kube_version,
            *map(str, manifest_files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, "\n".join(line for line in lines if "passed" not in line)
    unexpected = [
        line
        for line in lines
        if line.startswith("WARN") and not any(f"kind {k} " in line for k in CUSTOM_KINDS)
    ]
    assert not unexpected, unexpected
    # Nothing skipped: each standard document has its "passed" line.
    standard = sum(1 for r in rendered.values() for d in r.docs if d["kind"] not in CUSTOM_KINDS)
    assert sum("passed" in line for line in lines) == standard


def test_kube_version_floor(helm: Path) -> None:
    assert template(helm, "--kube-version", "1.28.0").returncode == 0
    too_old = template(helm, "--kube-version", "1.27.0")
    assert too_old.returncode != 0
    assert "kubeVersion" in too_old.stderr


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_standard_labels(rendered: dict[str, Rendered], value_set: str) -> None:
    for doc in rendered[value_set].docs:
        labels = doc["metadata"]["labels"]
        missing = [key for key in STANDARD_LABELS if key not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_selectors_match_pod_labels(rendered: dict[str, Rendered], value_set: str) -> None:
    result = rendered[value_set]
    pods = [d for d in result.docs if d["kind"] in {"Deployment", "DaemonSet"}]
    for doc in pods:
        selector = doc["spec"]["selector"]["matchLabels"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), doc["metadata"]["name"]
    for service in result.of_kind("Service"):
        selector = service["spec"]["selector"]
        matched = [
            d
            for d in pods
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)}"


def test_component_commands(rendered: dict[str, Rendered]) -> None:
    """The commands of DESIGN.md's contract table."""
    default = rendered["default"]
    expected = {
        "watcher": ["python", "-m", "watcher"],
        "worker": ["python", "-m", "worker"],
        "beat": ["celery", "-A", "tasks", "beat"],
        "flower": ["celery", "-A", "tasks", "flower"],
        "test": ["celery", "-A", "tasks", "warm-status"],
    }
    for component, command in expected.items():
        actual = default.container(component)["command"]
        assert actual[: len(command)] == command, component


def test_one_image_for_every_component(rendered: dict[str, Rendered]) -> None:
    default = rendered["default"]
    images = {
        default.container(c)["image"] for c in ("watcher", "worker", "beat", "flower", "test")
    }
    assert images == {"ghcr.io/kubernetes-warm-images/warm-images:0.1.0"}
    digest = rendered["full"].container("worker")["image"]
    assert re.fullmatch(r"ghcr\.io/kubernetes-warm-images/warm-images@sha256:[0-9a-f]{64}", digest)


def test_helm_test_hook(rendered: dict[str, Rendered]) -> None:
    pod = rendered["default"].get("Pod", "test-status")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_config_map_environment(rendered: dict[str, Rendered]) -> None:
    data = rendered["default"].get("ConfigMap", "config")["data"]
    assert data == {
        "WARM_NATS_URL": f"nats://{PREFIX}-nats:4222",
        "WARM_NATS_CONNECT_TIMEOUT": "5",
        "WARM_BROKER_VISIBILITY_TIMEOUT": "3600",
        "WARM_NAMESPACES": "*",
        "WARM_IGNORE_NAMESPACES": "",
        "WARM_NAMESPACE_SELECTOR": "",
        "WARM_OPT_IN": "false",
        "WARM_INCLUDE_IMAGES": "",
        "WARM_EXCLUDE_IMAGES": "",
        "WARM_EXPLICIT_IMAGES": "[]",
        "WARM_CATALOG_GRACE_PERIOD": "600",
        "WARM_RESYNC_INTERVAL": "3600",
        "WARM_PULL_SECRET_SYNC_INTERVAL": "60",
        "WARM_WATCH_STALE_AFTER": "600",
        "WARM_LEADER_ELECTION": "false",
        "WARM_LEASE_NAME": f"{PREFIX}-watcher",
        "WARM_STARTUP_TAINT": "",  # the gate is off unless startupGate.enabled
        "WARM_STARTUP_TAINT_DEADLINE": "600",
        "WARM_STARTUP_GATE_IMAGES": "all",
        "WARM_KUBELET_EVENTS": "true",
        "WARM_CANARY_NODES": "2",
        "WARM_REWARM_INTERVAL": "1800",
        "WARM_REWARM_WINDOW": "60",
        "WARM_BEAT_LOCK_TTL": "30",
        "WARM_MAX_CONCURRENT_PULLS": "2",
        "WARM_REGISTRY_PULL_LIMIT": "100",
        "WARM_REGISTRY_PULL_LIMITS": "{}",
        "WARM_WORKER_REMOTE_CONTROL": "false",
        "WARM_PULL_TIMEOUT": "600",
        "WARM_REFRESH_TAGS": "latest",
        "WARM_PULL_MAX_RETRIES": "5",
        "WARM_PULL_RETRY_BACKOFF_MAX": "600",
        "WARM_DISK_BUDGET_PERCENT": "80",
        "WARM_PULL_SECRETS": "false",
        "WARM_PULL_SECRET_NAMESPACE": f"{NAMESPACE}-pull-secrets",
        "WARM_KUBELET_CREDENTIALS_FILE": "",
        "WARM_METRICS_PORT": "9808",
        "WARM_HEALTH_PORT": "8080",
    }
    full = rendered["full"].get("ConfigMap", "config")["data"]
    assert full["WARM_NAMESPACES"] == "team-a team-b"
    assert full["WARM_IGNORE_NAMESPACES"] == "kube-system"
    assert json.loads(full["WARM_EXPLICIT_IMAGES"]) == ["busybox:1.36", "registry.k8s.io/pause:3.9"]
    assert full["WARM_LEADER_ELECTION"] == "true"
    assert full["WARM_LEASE_NAME"] == "warm-leader"
    assert rendered["credentials"].get("ConfigMap", "config")["data"]["WARM_PULL_SECRETS"] == "true"


def test_worker_node_identity_and_tolerations(rendered: dict[str, Rendered]) -> None:
    spec = rendered["default"].pod_spec("worker")
    node_name = env_of(spec["containers"][0])["WARM_NODE_NAME"]
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Tolerate everything: every node, tainted or not, gets warmed.
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert rendered["default"].get("DaemonSet", "worker")


def test_single_scheduler(rendered: dict[str, Rendered]) -> None:
    for result in rendered.values():
        beat = result.get("Deployment", "beat")
        assert beat["spec"]["replicas"] == 1
        assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_watcher_replicas_and_disruption_budget(rendered: dict[str, Rendered]) -> None:
    assert rendered["default"].get("Deployment", "watcher")["spec"]["strategy"]["type"] == (
        "Recreate"
    )
    assert not rendered["default"].of_kind("PodDisruptionBudget")
    full = rendered["full"]
    assert full.get("Deployment", "watcher")["spec"]["replicas"] == 3
    pdb = full.get("PodDisruptionBudget", "watcher")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "watcher"


def test_bundled_nats_with_jetstream(rendered: dict[str, Rendered]) -> None:
    default = rendered["default"]
    nats = default.container("nats")
    assert re.fullmatch(r"nats:2\.10-alpine@sha256:[0-9a-f]{64}", nats["image"])
    assert {"-js", "-sd", "/data"} <= set(nats["args"])
    config = default.get("Secret", "nats-config")["stringData"]["nats.conf"]
    assert "jetstream {" in config
    # Operator mode: the init container derives the accounts into the file nats.conf includes
    # (relative to /etc/nats-config), from the account key of the credentials Secret.
    assert "include ../nats-auth/auth.conf" in config
    spec = default.pod_spec("nats")
    [init] = spec["initContainers"]
    assert init["command"] == [
        "python", "-m", "tasks.natsauth", "server-config", "/etc/nats-auth/auth.conf"
    ]  # fmt: skip
    key = {"name": f"{PREFIX}-nats", "key": "account-key"}
    assert env_of(init)["WARM_NATS_ACCOUNT_KEY"]["valueFrom"]["secretKeyRef"] == key
    assert not env_of(nats)  # the server itself holds no key
    mounts = {m["mountPath"]: m["name"] for m in nats["volumeMounts"]}
    assert mounts["/etc/nats-auth"] == "auth" and mounts["/etc/nats-config"] == "config"
    # The watcher alone holds the key; the other parts ask its exchange, through its Service.
    watcher = env_of(default.container("watcher"))
    assert watcher["WARM_NATS_ACCOUNT_KEY"]["valueFrom"]["secretKeyRef"] == key
    service = default.get("Service", "watcher")
    assert service["spec"]["ports"][0]["port"] == int(
        watcher["WARM_NATS_CREDENTIALS_PORT"]["value"]
    )
    url = f"http://{PREFIX}-watcher:8090/nats/credentials"
    for component in ("worker", "beat", "flower", "test"):
        env = env_of(default.container(component))
        assert env["WARM_NATS_CREDENTIALS_URL"]["value"] == url
        assert "WARM_NATS_ACCOUNT_KEY" not in env and "WARM_NATS_PASSWORD" not in env
    # Authentication off: no operator, no key, no credentials anywhere.
    minimal = rendered["minimal"]
    assert "include" not in minimal.get("Secret", "nats-config")["stringData"]["nats.conf"]
    assert "initContainers" not in minimal.pod_spec("nats")
    assert not {"WARM_NATS_PASSWORD", "WARM_NATS_ACCOUNT_KEY", "WARM_NATS_CREDENTIALS_URL"} & set(
        env_of(minimal.container("watcher")) | env_of(minimal.container("worker"))
    )


def test_bundled_redis(rendered: dict[str, Rendered]) -> None:
    redis = rendered["default"].container("redis")
    assert re.fullmatch(r"redis:7-alpine@sha256:[0-9a-f]{64}", redis["image"])
    script = redis["command"][-1]
    assert 'requirepass "${REDIS_PASSWORD}"' in script
    for role in ("watcher", "worker", "beat", "client"):
        assert (
            f"user warm-{role} on >${{REDIS_{role.upper()}_PASSWORD}} ~* &* +@all -@dangerous"
            in script
        )
    assert "appendonly no" in script
    full_script = rendered["full"].container("redis")["command"][-1]
    assert "appendonly yes" in full_script
    assert "maxmemory 256mb" in full_script
    assert "maxclients 25000" in script  # 5,000 nodes at four connections each, and room
    assert "protected-mode no" in rendered["minimal"].container("redis")["command"][-1]


def test_persistence(rendered: dict[str, Rendered]) -> None:
    default_volumes = rendered["default"].pod_spec("nats")["volumes"]
    assert {"name": "data", "emptyDir": {}} in default_volumes
    full = rendered["full"]
    claim = full.get("PersistentVolumeClaim", "nats")
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    redis_volumes = {v["name"]: v for v in full.pod_spec("redis")["volumes"]}
    assert redis_volumes["data"]["persistentVolumeClaim"]["claimName"] == "redis-data"
    assert full.find("PersistentVolumeClaim", "redis") is None


def test_external_nats_and_broker(rendered: dict[str, Rendered]) -> None:
    external = rendered["external"]
    components = {c for c, _ in external.pod_specs()}
    assert not components & {"nats", "redis"}
    assert external.get("ConfigMap", "config")["data"]["WARM_NATS_URL"] == (
        "nats://nats.messaging.svc:4222"
    )
    env = env_of(external.container("watcher"))
    broker_ref = env["WARM_BROKER_URL"]["valueFrom"]["secretKeyRef"]
    broker = external.get("Secret", broker_ref["name"])
    assert broker["metadata"]["name"] == f"{PREFIX}-broker"
    nats_ref = env["WARM_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert nats_ref["name"] == f"{PREFIX}-nats-client"


APP_COMPONENTS = ("watcher", "worker", "beat", "flower", "test")


def test_external_nats_with_token_and_private_ca(rendered: dict[str, Rendered]) -> None:
    """A token instead of user and password, from a Secret; the CA bundle mounted read-only in
    every component that talks to NATS, named by WARM_NATS_TLS_CA_FILE."""
    result = rendered["external-token"]
    data = result.get("ConfigMap", "config")["data"]
    assert data["WARM_NATS_URL"] == "tls://nats.messaging.svc:4222"
    assert data["WARM_NATS_TLS_CA_FILE"] == "/etc/warm-images/nats-ca/ca.crt"
    assert "WARM_NATS_TLS_CA_FILE" not in rendered["default"].get("ConfigMap", "config")["data"]
    client = result.get("Secret", "nats-client")
    assert secret_data(client) == {"nats-token": "extNatsT0kenValue"}
    for component in APP_COMPONENTS:
        spec = result.pod_spec(component)
        env = env_of(spec["containers"][0])
        assert "WARM_NATS_USER" not in env and "WARM_NATS_PASSWORD" not in env, component
        assert env["WARM_NATS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{PREFIX}-nats-client",
            "key": "nats-token",
        }
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["nats-ca"]["secret"] == {
            "secretName": "nats-ca",
            "items": [{"key": "ca.pem", "path": "ca.crt"}],
        }
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["nats-ca"] == {
            "name": "nats-ca",
            "mountPath": "/etc/warm-images/nats-ca",
            "readOnly": True,
        }
    assert "nats-ca" not in {v["name"] for v in rendered["external"].pod_spec("watcher")["volumes"]}


def test_external_nats_token_from_an_existing_secret(helm: Path) -> None:
    base = ["--set", "nats.enabled=false", "--set", "externalNats.url=nats://n:4222"]
    base += ["--set", "networkPolicy.enabled=false"]
    existing = ["--set", "externalNats.existingSecret=nats-creds"]
    result = template(helm, *base, *existing, "--set", "externalNats.existingSecretTokenKey=tok")
    assert result.returncode == 0, result.stderr
    rendered = Rendered.parse("existing-token", result.stdout)
    env = env_of(rendered.container("watcher"))
    assert env["WARM_NATS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "nats-creds",
        "key": "tok",
    }
    assert "WARM_NATS_USER" not in env
    assert not rendered.find("Secret", "nats-client")
    # Without a token key the existing Secret holds a user and password, as before.
    result = template(helm, *base, *existing)
    env = env_of(Rendered.parse("existing-user", result.stdout).container("watcher"))
    assert "WARM_NATS_PASSWORD" in env and "WARM_NATS_TOKEN" not in env


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "--set",
                "nats.enabled=false",
                "--set",
                "externalNats.url=nats://n:4222",
                "--set",
                "externalNats.user=u",
                "--set",
                "externalNats.password=p",
                "--set",
                "externalNats.token=t",
            ],
            "set a user and password or a token, not both",
        ),
        (["--set", "redis.enabled=false"], "set externalBroker.url"),
        (["--set", "nats.enabled=false"], "set externalNats.url"),
        (
            [
                "--set",
                "nats.enabled=false",
                "--set",
                "externalNats.url=nats://n:4222",
                "--set",
                "externalNats.user=u",
            ],
            "set externalNats.password",
        ),
    ],
)
def test_missing_external_service_fails_clearly(helm: Path, args: list[str], message: str) -> None:
    result = template(helm, *args)
    assert result.returncode != 0
    assert message in result.stderr


def test_flower_service_and_ingress(rendered: dict[str, Rendered]) -> None:
    assert rendered["default"].get("Service", "flower")["spec"]["ports"][0]["port"] == 5555
    assert not rendered["default"].of_kind("Ingress")
    result = rendered["flower-ingress"]
    ingress = result.get("Ingress", "flower")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "warm.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{PREFIX}-flower", "port": {"name": "http"}}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"] == "warm-example-tls"
    flower = result.container("flower")
    assert env_of(flower)["FLOWER_URL_PREFIX"]["value"] == "flower"
    assert flower["livenessProbe"]["httpGet"]["path"] == "/flower/healthcheck"
    assert not rendered["minimal"].find("Deployment", "flower")


def test_service_monitor(rendered: dict[str, Rendered]) -> None:
    """Checked by hand, since kubernetes-validate has no schema for this CRD."""
    full = rendered["full"]
    monitor = full.get("ServiceMonitor", PREFIX)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        s for s in full.of_kind("Service") if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert {s["metadata"]["name"] for s in scraped} == {
        f"{PREFIX}-watcher-metrics",
        f"{PREFIX}-worker-metrics",
    }
    port = monitor["spec"]["endpoints"][0]["port"]
    assert all(port in {p["name"] for p in s["spec"]["ports"]} for s in scraped)
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]


def test_grafana_dashboard(rendered: dict[str, Rendered]) -> None:
    dashboard = json.loads((CHART / "dashboards" / "warm-images.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for metric in (
        "warm_images_present / warm_images_expected",
        "rate(warm_pulls_total[5m])",
        "histogram_quantile(0.95",
        "warm_pull_duration_seconds_bucket",
        "warm_queue_depth",
        "warm_watcher_node_untaint_seconds_bucket",
        'warm_watcher_kubelet_pulls_total{result="hit"}',
        "warm_watcher_kubelet_wait_seconds_total",
        "warm_watcher_waves",
        "warm_watcher_wave_transitions_total",
    ):
        assert any(metric in expr for expr in exprs), metric
    assert not rendered["default"].find("ConfigMap", "dashboard")
    config_map = rendered["full"].get("ConfigMap", "dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert json.loads(config_map["data"]["warm-images.json"]) == dashboard


def test_priority_class(rendered: dict[str, Rendered]) -> None:
    full = rendered["full"]
    created = full.get("PriorityClass", PREFIX)
    assert created["preemptionPolicy"] == "Never"
    assert full.pod_spec("worker")["priorityClassName"] == "system-node-critical"
    assert full.pod_spec("watcher")["priorityClassName"] == PREFIX
    assert "priorityClassName" not in rendered["default"].pod_spec("watcher")


def test_network_policies(rendered: dict[str, Rendered]) -> None:
    """On by default, one per part, each closing both directions to what the part uses."""
    default = rendered["default"]
    release = {"app.kubernetes.io/name": "warm-images", "app.kubernetes.io/instance": RELEASE}
    policies = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]
        for p in default.of_kind("NetworkPolicy")
    }
    parts = {"watcher", "worker", "beat", "flower", "test", "nats", "redis"}
    assert set(policies) == parts
    for part, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress", "Egress"], part
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == part
    for name, port in (("nats", 4222), ("redis", 6379)):
        (rule,) = policies[name]["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": release}}]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        assert policies[name]["egress"] == []  # the servers reach nothing
    assert policies["beat"]["ingress"] == [] and policies["test"]["ingress"] == []

    def reached(part: str) -> set[object]:
        found: set[object] = set()
        for rule in policies[part]["egress"]:
            ports = {(p["port"], p["protocol"]) for p in rule["ports"]}
            targets = [
                t["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                for t in rule.get("to", [])
            ]
            found |= set(targets) or ports
        return found

    clients = {"nats", "redis", (53, "UDP"), (53, "TCP")}
    api = {(443, "TCP"), (6443, "TCP")}
    assert reached("watcher") == clients | api  # its TokenReviews included
    # The other parts ask the watcher's exchange for their NATS credentials; the worker
    # reads no Secret by default: no API server.
    assert reached("worker") == clients | {"watcher"}
    assert reached("beat") == reached("flower") == reached("test") == clients | {"watcher"}
    exchange = policies["watcher"]["ingress"][-1]
    assert exchange == {
        "from": [{"podSelector": {"matchLabels": release}}],
        "ports": [{"port": 8090, "protocol": "TCP"}],
    }
    with_credentials = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]
        for p in rendered["credentials"].of_kind("NetworkPolicy")
    }
    egress = with_credentials["worker"]["egress"]
    assert {(p["port"], p["protocol"]) for r in egress for p in r["ports"]} >= api
    # The given Flower peers, and an external server reached through extraEgress.
    (flower,) = rendered["full"].get("NetworkPolicy", "flower")["spec"]["ingress"]
    assert flower["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    external = rendered["external"].get("NetworkPolicy", "worker")["spec"]["egress"]
    assert external[-1]["ports"] == [
        {"port": 4222, "protocol": "TCP"},
        {"port": 6379, "protocol": "TCP"},
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "nats.enabled=false", "--set", "externalNats.url=nats://n:4222"],
            "networkPolicy.extraEgress",
        ),
        (
            ["--set", "networkPolicy.enabled=false", "--set", "redis.auth.enabled=false"],
            "redis.auth.enabled=false needs networkPolicy.enabled=true",
        ),
        (
            ["--set", "networkPolicy.enabled=false", "--set", "nats.auth.enabled=false"],
            "nats.auth.enabled=false needs networkPolicy.enabled=true",
        ),
        (["--set", "flower.ingress.enabled=true"], "flower.ingress has no tls"),
    ],
)
def test_unsafe_combinations_are_refused(helm: Path, args: list[str], message: str) -> None:
    result = template(helm, *args)
    assert result.returncode != 0
    assert message in result.stderr


def test_insecure_ingress_only_when_asked(helm: Path) -> None:
    args = ["--set", "flower.ingress.enabled=true", "--set", "flower.ingress.allowInsecure=true"]
    result = template(helm, *args)
    assert result.returncode == 0, result.stderr
    assert "tls" not in Rendered.parse("insecure", result.stdout).get("Ingress", "flower")["spec"]


def test_flower_is_read_only_for_a_viewer(rendered: dict[str, Rendered]) -> None:
    env = env_of(rendered["default"].container("flower"))
    assert env["FLOWER_READ_ONLY"]["value"] == "true"
    auth = secret_data(rendered["default"].get("Secret", "flower"))["basic-auth"]
    assert auth.startswith("warm-viewer:")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            [],
            [
                "port-forward svc/warm-warm-images-flower 5555:5555",
                "celery -A tasks warm-status",
                "helm test warm",
                "get secret warm-warm-images-flower",
            ],
        ),
        (["-f", "tests/chart/values/flower-ingress.yaml"], ["https://warm.example.com/flower"]),
    ],
)
def test_notes(helm: Path, args: list[str], expected: list[str]) -> None:
    result = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
        "-f",
        str(CI_PASSWORDS),
        *[str(CHART.parent / a) if a.endswith(".yaml") else a for a in args],
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.partition("NOTES:")[2]
    for text in expected:
        assert text in notes


def test_health_probes(rendered: dict[str, Rendered], helm: Path) -> None:
    """watcher and worker are probed on /healthz at WARM_HEALTH_PORT; the probes can be off."""
    for component, extra in (("watcher", {"nats-exchange": 8090}), ("worker", {})):
        container = rendered["default"].container(component)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": 9808, "health": 8080, **extra}
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    result = template(helm, "--set", "probes.enabled=false")
    assert result.returncode == 0, result.stderr
    off = Rendered.parse("probes-off", result.stdout)
    assert "livenessProbe" not in off.container("watcher")
    assert "readinessProbe" not in off.container("worker")


def test_every_pod_pulls_with_the_charts_secrets(rendered: dict[str, Rendered]) -> None:
    """imagePullSecrets reach every pod, the bundled NATS and Redis included (a mirror that
    needs credentials serves them too)."""
    for component, spec in rendered["full"].pod_specs():
        assert spec.get("imagePullSecrets") == [{"name": "ghcr-pull"}], component


def test_bundled_images_by_tag_when_no_digest(helm: Path) -> None:
    args = ["--set", "nats.image.digest=", "--set", "redis.image.digest="]
    result = Rendered.parse("tags", template(helm, *args).stdout)
    assert result.container("nats")["image"] == "nats:2.10-alpine"
    assert result.container("redis")["image"] == "redis:7-alpine"
