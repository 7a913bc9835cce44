"""Least privilege: RBAC rules, security contexts, host mounts, and where credentials live."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from chart_helpers import (
    CHART,
    NAMESPACE,
    PREFIX,
    RELEASE,
    VALUE_SETS,
    Doc,
    Rendered,
    env_of,
    load_values,
    run_helm,
    secret_data,
    template,
)

WORKLOAD_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"],
        "verbs": ["list", "watch"],
    },
    {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": ["list", "watch"]},
]
# Waves (config.canaryNodes > 0): a stopped wave's Event on each workload using the image.
EVENT_RULE = {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}
CLUSTER_RULES = [
    {"apiGroups": [""], "resources": ["nodes", "namespaces"], "verbs": ["list", "watch"]}
]
# The kubelet's Pulled Events (kubeletEvents.enabled, the default), through either API version.
KUBELET_EVENTS_RULE = {
    "apiGroups": ["", "events.k8s.io"],
    "resources": ["events"],
    "verbs": ["list", "watch"],
}
# The NATS credentials exchange (bundled NATS with auth): TokenReviews, and `get` on the Pods
# of the release namespace, to check a worker's pod.
EXCHANGE_RULES = {
    "ClusterRole": {
        "apiGroups": ["authentication.k8s.io"],
        "resources": ["tokenreviews"],
        "verbs": ["create"],
    },
    "Role": {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
}
# The startup gate's only writes: a Node's taint (patch) and an Event in "default".
STARTUP_GATE_RULES = {
    "ClusterRole": {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
    "Role": EVENT_RULE,
}
# The parts with users of their own on the bundled NATS and Redis.
ROLES = ("watcher", "worker", "beat", "client")
# Components running the application image with the non-root defaults.
NON_ROOT_APP = ("watcher", "beat", "flower", "test")
SOCKETS = {
    "default": ("/run/containerd/containerd.sock", "cri"),
    "k3s": ("/run/k3s/containerd/containerd.sock", "cri"),
    "crio": ("/var/run/crio/crio.sock", "cri"),
    "docker": ("/var/run/docker.sock", "docker"),
    "full": ("/var/snap/microk8s/common/run/containerd.sock", "cri"),
}
# The image filesystem each value set mounts read-only for the disk budget's statvfs.
IMAGE_FILESYSTEMS = {
    "default": "/var/lib/containerd",
    "k3s": "/var/lib/rancher/k3s/agent/containerd",
    "crio": "/var/lib/containers/storage",
    "docker": "/var/lib/docker",
    "full": "/var/snap/microk8s/common/var/lib/containerd",
    "settings": "/data/containerd",
}
# Env variables that carry a credential and must come from a Secret.
CREDENTIAL_ENV = re.compile(
    r"PASSWORD|BASIC_AUTH|TOKEN(?!_FILE$)|SECRET|^WARM_NATS_USER$|AUTH$|_KEY$"
)
# Secret keys whose values are credentials (user names are not secret, and may be short words).
CREDENTIAL_KEY = re.compile(r"password|auth|url|token|key")


def rules_of(result: Rendered, kind: str, name: str, namespace: str | None = None) -> list[Doc]:
    role = (
        result.get(kind, name)
        if namespace is None
        else next(
            d
            for d in result.of_kind(kind)
            if d["metadata"]["name"] == f"{PREFIX}-{name}"
            and d["metadata"]["namespace"] == namespace
        )
    )
    return role["rules"]


# ---------------------------------------------------------------------------------------- RBAC


def test_default_rbac_is_the_watcher_cluster_role_only(rendered: dict[str, Rendered]) -> None:
    default = rendered["default"]
    assert [r["metadata"]["name"] for r in default.of_kind("ClusterRole")] == [f"{PREFIX}-watcher"]
    assert rules_of(default, "ClusterRole", "watcher") == [
        *CLUSTER_RULES,
        KUBELET_EVENTS_RULE,
        EXCHANGE_RULES["ClusterRole"],
        *WORKLOAD_RULES,
        EVENT_RULE,
    ]
    # A single watcher elects no leader, and the worker reads no Secret by default: the one
    # Role is the exchange's, in the release namespace, bound to the watcher alone.
    (role,) = default.of_kind("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [EXCHANGE_RULES["Role"]]
    (binding,) = default.of_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{PREFIX}-watcher", "namespace": NAMESPACE}
    ]


def test_leader_election_lease_rules(rendered: dict[str, Rendered]) -> None:
    rules = rules_of(rendered["full"], "Role", "watcher-leader-election", NAMESPACE)
    assert rules == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["warm-leader"],
            "verbs": ["get", "update"],
        },
    ]


def test_startup_gate_rules_only_when_enabled(rendered: dict[str, Rendered]) -> None:
    gated = rendered["settings"]  # and waves off: no Event on workloads
    assert rules_of(gated, "ClusterRole", "watcher") == [
        *CLUSTER_RULES,
        STARTUP_GATE_RULES["ClusterRole"],
        EXCHANGE_RULES["ClusterRole"],
        *WORKLOAD_RULES,
    ]
    assert rules_of(gated, "Role", "watcher-node-events", "default") == [STARTUP_GATE_RULES["Role"]]
    for value_set in ("default", "full"):
        assert rendered[value_set].find("Role", "watcher-node-events") is None


def test_namespaced_watch_uses_roles(rendered: dict[str, Rendered]) -> None:
    full = rendered["full"]
    assert rules_of(full, "ClusterRole", "watcher") == [
        *CLUSTER_RULES,
        KUBELET_EVENTS_RULE,
        EXCHANGE_RULES["ClusterRole"],
    ]
    for namespace in ("team-a", "team-b"):
        assert rules_of(full, "Role", "watcher", namespace) == [
            *WORKLOAD_RULES,
            EVENT_RULE,  # waves: Events on the workloads, in their own namespaces only
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["regcred"],
                "verbs": ["get"],
            },
        ]
    assert full.find("ClusterRole", "worker") is None


def test_worker_credentials_grant_get_secrets_only(rendered: dict[str, Rendered]) -> None:
    credentials = rendered["credentials"]
    assert rules_of(credentials, "Role", "worker", f"{NAMESPACE}-pull-secrets") == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    ]
    assert credentials.pod_spec("worker")["automountServiceAccountToken"] is True
    assert rendered["default"].pod_spec("worker")["automountServiceAccountToken"] is False


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_broad_rbac(rendered: dict[str, Rendered], value_set: str) -> None:
    """No wildcard, no write beyond the Lease and the pull secrets' copies in their own
    namespace, Secrets only with credentials on, and only `get` outside that namespace."""
    result = rendered[value_set]
    values = load_values(value_set)
    credentials = values.get("worker", {}).get("credentials", {}).get("enabled", False)
    copies = f"{PREFIX}-watcher-pull-secrets"
    gate = values.get("startupGate", {}).get("enabled", False)
    exchange = values.get("nats", {}).get("auth", {}).get("enabled", True)
    waves = values.get("config", {}).get("canaryNodes", 2) > 0
    for role in result.of_kind("ClusterRole") + result.of_kind("Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], role["metadata"]["name"]
            if rule == EVENT_RULE:
                assert gate or waves, f"{rule} without startupGate.enabled nor waves"
                continue
            if rule in STARTUP_GATE_RULES.values():
                assert gate, f"{rule} without startupGate.enabled"
                continue
            if rule in EXCHANGE_RULES.values():
                assert exchange, f"{rule} without the NATS credentials exchange"
                continue
            writes = {"create", "update", "delete"} & set(rule["verbs"])
            assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "update", "delete"}
            if writes and rule["resources"] != ["leases"]:
                assert role["metadata"]["name"] == copies, role["metadata"]["name"]
                assert role["metadata"]["namespace"] == f"{NAMESPACE}-pull-secrets"
            if "secrets" in rule["resources"]:
                assert credentials
                assert rule["verbs"] == ["get"] or role["metadata"]["name"] == copies


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_bindings_point_at_chart_roles_and_accounts(
    rendered: dict[str, Rendered], value_set: str
) -> None:
    """Never the cluster-wide `view` role or any role the chart does not define."""
    result = rendered[value_set]
    accounts = {a["metadata"]["name"] for a in result.of_kind("ServiceAccount")}
    for binding in result.of_kind("ClusterRoleBinding") + result.of_kind("RoleBinding"):
        role_kind = binding["roleRef"]["kind"]
        namespace = binding["metadata"].get("namespace")
        roles = [
            r for r in result.of_kind(role_kind) if r["metadata"].get("namespace") == namespace
        ]
        assert binding["roleRef"]["name"] in {r["metadata"]["name"] for r in roles}
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert subject["name"] in accounts
            assert subject["namespace"] == NAMESPACE


def test_rbac_can_be_left_to_the_cluster_admin(rendered: dict[str, Rendered]) -> None:
    minimal = rendered["minimal"]
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not minimal.of_kind(kind)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_api_tokens_only_where_needed(rendered: dict[str, Rendered], value_set: str) -> None:
    result = rendered[value_set]
    for account in result.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
    for component, spec in result.pod_specs():
        if component == "watcher":
            assert spec["automountServiceAccountToken"] is True
        elif component != "worker":
            assert spec["automountServiceAccountToken"] is False, component


# ---------------------------------------------------------------------------- security contexts


def assert_locked_down(container: Doc) -> None:
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context.get("privileged", False) is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert not context["capabilities"].get("add")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_is_locked_down(rendered: dict[str, Rendered], value_set: str) -> None:
    for component, spec in rendered[value_set].pod_specs():
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), f"{component}: {key}"
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            assert_locked_down(container)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_non_root_components(rendered: dict[str, Rendered], value_set: str) -> None:
    result = rendered[value_set]
    for component, spec in result.pod_specs():
        if component in (*NON_ROOT_APP, "nats", "redis"):
            context = spec["securityContext"]
            assert context["runAsNonRoot"] is True, component
            assert context["runAsUser"] > 0, component


def test_worker_runs_as_root_by_default_and_can_run_as_non_root(
    rendered: dict[str, Rendered],
) -> None:
    """uid 0 (root-owned sockets) but no capabilities; the Docker set uses the socket's group."""
    default = rendered["default"].pod_spec("worker")["securityContext"]
    assert default["runAsUser"] == 0
    docker = rendered["docker"].pod_spec("worker")["securityContext"]
    assert docker["runAsUser"] == 10001
    assert docker["runAsNonRoot"] is True
    assert docker["supplementalGroups"] == [998]


def test_resources_everywhere(rendered: dict[str, Rendered]) -> None:
    for component, spec in rendered["default"].pod_specs():
        for container in spec["containers"]:
            resources = container["resources"]
            assert resources["requests"]["memory"], component
            assert resources["limits"]["memory"], component


# ------------------------------------------------------------------------------- runtime socket


@pytest.mark.parametrize("value_set", sorted(SOCKETS))
def test_runtime_socket_mount(rendered: dict[str, Rendered], value_set: str) -> None:
    path, api = SOCKETS[value_set]
    spec = rendered[value_set].pod_spec("worker")
    volumes = {v["name"]: v for v in spec["volumes"]}
    # The socket itself, checked to be a socket, not the directory it is in.
    assert volumes["runtime-socket"] == {
        "name": "runtime-socket",
        "hostPath": {"path": path, "type": "Socket"},
    }
    container = spec["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["runtime-socket"] == path
    env = env_of(container)
    assert env["WARM_RUNTIME"]["value"] == api
    assert env["WARM_RUNTIME_ENDPOINT"]["value"] == f"unix://{path}"


@pytest.mark.parametrize("value_set", sorted(IMAGE_FILESYSTEMS))
def test_image_filesystem_probe_mount(rendered: dict[str, Rendered], value_set: str) -> None:
    """The disk budget's statvfs reads an empty directory under the runtime's root, made by the
    kubelet, mounted read-only where WARM_IMAGE_FS_PATH says."""
    probe = f"{IMAGE_FILESYSTEMS[value_set]}/warm-images-fs-probe"
    spec = rendered[value_set].pod_spec("worker")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["image-fs"]["hostPath"] == {"path": probe, "type": "DirectoryOrCreate"}
    container = spec["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    target = env_of(container)["WARM_IMAGE_FS_PATH"]["value"]
    assert mounts["image-fs"] == {"name": "image-fs", "mountPath": target, "readOnly": True}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_runtime_root_is_mounted(rendered: dict[str, Rendered], value_set: str) -> None:
    """Neither the runtime's root nor any directory above it reaches the worker: a file-read
    bug there must not expose every container's layers or Docker's config.v2.json files."""
    roots = set(IMAGE_FILESYSTEMS.values()) | {"/var/lib/containerd", "/var/lib/docker"}
    for _, spec in rendered[value_set].pod_specs():
        for volume in spec.get("volumes", []):
            path = volume.get("hostPath", {}).get("path")
            if path is None:
                continue
            for root in roots:
                assert not root.startswith(path.rstrip("/") + "/") and path != root, (
                    f"{value_set}: {volume['name']} mounts {path}, which holds {root}"
                )


def test_image_filesystem_not_mounted_when_disabled(rendered: dict[str, Rendered]) -> None:
    """worker.diskBudget.enabled false (the minimal set): nothing of the host but the socket."""
    spec = rendered["minimal"].pod_spec("worker")
    host_paths = [v for v in spec["volumes"] if "hostPath" in v]
    assert [v["name"] for v in host_paths] == ["runtime-socket"]
    mounts = [m["name"] for m in spec["containers"][0]["volumeMounts"]]
    assert "image-fs" not in mounts


def test_kubelet_credentials_file_mount(rendered: dict[str, Rendered]) -> None:
    """Only when set, and then that one file, read-only, at the path WARM_* names."""
    path = "/var/lib/kubelet/config.json"
    spec = rendered["settings"].pod_spec("worker")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kubelet-credentials"]["hostPath"] == {"path": path, "type": "File"}
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["kubelet-credentials"] == {
        "name": "kubelet-credentials",
        "mountPath": path,
        "readOnly": True,
    }
    data = rendered["settings"].get("ConfigMap", "config")["data"]
    assert data["WARM_KUBELET_CREDENTIALS_FILE"] == path
    default_volumes = rendered["default"].pod_spec("worker")["volumes"]
    assert "kubelet-credentials" not in {v["name"] for v in default_volumes}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_host_mounts_are_read_only(rendered: dict[str, Rendered], value_set: str) -> None:
    """Every hostPath but the socket (which must be written to, to talk) is mounted read-only,
    and none is mounted with a propagation that could leak mounts back to the host."""
    spec = rendered[value_set].pod_spec("worker")
    host_volumes = {v["name"] for v in spec["volumes"] if "hostPath" in v}
    for mount in spec["containers"][0]["volumeMounts"]:
        if mount["name"] in host_volumes - {"runtime-socket"}:
            assert mount.get("readOnly") is True, mount
        assert mount.get("mountPropagation", "None") in {"None", "HostToContainer"}, mount


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_only_the_worker_touches_the_host(rendered: dict[str, Rendered], value_set: str) -> None:
    result = rendered[value_set]
    for component, spec in result.pod_specs():
        host_paths = [v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v]
        if component != "worker":
            assert not host_paths, component
        elif value_set != "docker":
            assert "/var/run/docker.sock" not in host_paths


# ------------------------------------------------------------------------------------ credentials


def credentials_of(result: Rendered, value_set: str) -> set[str]:
    """Every credential value: from the rendered Secrets and the passwords given in values."""
    found = {
        value
        for secret in result.of_kind("Secret")
        for key, value in secret_data(secret).items()
        if CREDENTIAL_KEY.search(key)
    }
    values = load_values(value_set)
    for section in ("nats", "redis", "flower"):
        auth = values.get(section, {}).get("auth", {})
        found.add(auth.get("password", ""))
        found.add(auth.get("accountKey", ""))
        found.update(auth.get("passwords", {}).values())
    found.add(values.get("externalNats", {}).get("password", ""))
    found.add(values.get("externalNats", {}).get("token", ""))
    found.add(values.get("externalBroker", {}).get("url", ""))
    return {value for value in found if value}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_credentials_only_in_secrets(rendered: dict[str, Rendered], value_set: str) -> None:
    result = rendered[value_set]
    credentials = credentials_of(result, value_set)
    outside = [d for d in result.docs if d["kind"] != "Secret"]
    for doc in outside:
        text = str(doc)
        leaked = [value for value in credentials if value in text]
        assert not leaked, f"{doc['kind']}/{doc['metadata']['name']} holds a credential"


def test_given_passwords_reach_their_secrets(rendered: dict[str, Rendered]) -> None:
    """The leak test is meaningful: the passwords of the value set are in the Secrets."""
    result = rendered["credentials"]
    assert secret_data(result.get("Secret", "nats"))["account-key"] == "natsAccountKeyValue0"
    redis = secret_data(result.get("Secret", "redis"))
    assert redis["redis-password"] == "redisValuesPassw0rd"
    assert redis["worker-broker-url"] == (
        f"redis://warm-worker:redisWorkerPassw0rd@{PREFIX}-redis:6379/0"
    )
    flower = secret_data(result.get("Secret", "flower"))
    assert flower["basic-auth"] == "ops:flowerValuesPassw0rd"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_credential_env_comes_from_secrets(rendered: dict[str, Rendered], value_set: str) -> None:
    for component, spec in rendered[value_set].pod_specs():
        for container in spec["containers"]:
            for name, entry in env_of(container).items():
                if name == "WARM_NATS_USER" and "value" in entry:
                    # The bundled NATS's user names are the parts' names, not secrets.
                    assert entry["value"] in {f"warm-{role}" for role in ROLES}, component
                elif CREDENTIAL_ENV.search(name):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{component}: {name}"
                elif name == "WARM_BROKER_URL" and "value" in entry:
                    # Plain only without a password, or assembled by the kubelet from a Secret.
                    assert "@" not in entry["value"] or "$(WARM_REDIS_PASSWORD)@" in entry["value"]


def test_existing_secrets_are_referenced(rendered: dict[str, Rendered]) -> None:
    result = rendered["existing-secrets"]
    # The chart creates no credential Secret of its own, only the NATS config.
    assert [s["metadata"]["name"] for s in result.of_kind("Secret")] == [f"{PREFIX}-nats-config"]
    env = env_of(result.container("watcher"))
    assert env["WARM_NATS_ACCOUNT_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "warm-nats-creds",
        "key": "account-key",
    }
    assert env["WARM_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "warm-redis-creds",
        "key": "watcher-password",
    }
    assert env["WARM_BROKER_URL"]["value"] == (
        f"redis://warm-watcher:$(WARM_REDIS_PASSWORD)@{PREFIX}-redis:6379/0"
    )
    # The Redis pod alone holds the default user's password, under the key given.
    redis = env_of(result.container("redis"))["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert redis == {"name": "warm-redis-creds", "key": "password"}
    flower = env_of(result.container("flower"))["FLOWER_BASIC_AUTH"]
    assert flower["valueFrom"]["secretKeyRef"] == {"name": "warm-flower-creds", "key": "auth"}


def test_generated_passwords_are_strong(rendered: dict[str, Rendered]) -> None:
    default = rendered["default"]
    keys = [("nats", "account-key")]
    keys += [("redis", f"{role}-password") for role in ROLES]
    for name, key in [*keys, ("redis", "redis-password"), ("flower", "password")]:
        password = secret_data(default.get("Secret", name))[key]
        assert re.fullmatch(r"[A-Za-z0-9]{32}", password), name


# ------------------------------------------------------------------ passwords under GitOps


def secrets_of(text: str) -> dict[str, dict[str, str]]:
    result = Rendered.parse("render", text)
    return {s["metadata"]["name"]: secret_data(s) for s in result.of_kind("Secret")}


def test_helm_template_gives_the_same_secrets_every_time(helm: Path) -> None:
    """With the passwords given (as a GitOps repository gives them), two renders agree, and the
    pods' checksum of the credentials with them, so nothing rolls or drifts between syncs."""
    first, second = (template(helm) for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert secrets_of(first.stdout) == secrets_of(second.stdout)
    assert first.stdout == second.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nats.auth.accountKey is empty"),
        (["--set", "nats.auth.existingSecret=nats-creds"], "redis.auth.password is empty"),
        (
            ["--set", "nats.auth.existingSecret=n", "--set", "redis.auth.existingSecret=r"],
            "flower.auth.password is empty",
        ),
    ],
)
def test_helm_template_without_passwords_fails_clearly(
    helm: Path, args: list[str], message: str
) -> None:
    """Without a cluster to read generated passwords back from, no password is made up."""
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Passwords and GitOps" in result.stderr


def test_existing_secrets_need_no_passwords(helm: Path) -> None:
    existing = ["nats", "redis", "flower"]
    args = [arg for name in existing for arg in ("--set", f"{name}.auth.existingSecret={name}-c")]
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr


def test_a_changed_password_rolls_its_clients(helm: Path) -> None:
    """Pods read passwords at start: a new one must restart the server and every client."""

    def checksums(*args: str) -> dict[str, str]:
        result = Rendered.parse("render", template(helm, *args).stdout)
        return {
            owner["metadata"]["labels"]["app.kubernetes.io/component"]: annotations.get(
                "checksum/credentials", ""
            )
            for owner in result.docs
            if owner["kind"] in ("Deployment", "DaemonSet")
            for annotations in [owner["spec"]["template"]["metadata"]["annotations"]]
        }

    before = checksums()
    after = checksums("--set", "redis.auth.passwords.worker=aNewOne")
    assert set(before) >= {"watcher", "worker", "beat", "flower", "redis"}
    for component in ("watcher", "worker", "beat", "flower", "redis"):
        assert before[component] != after[component], component


def test_readme_explains_the_security_model() -> None:
    """What an operator must know before installing: the socket is node root, and a warmed
    private image needs the kubelet's credential verification to stay private."""
    readme = (CHART / "README.md").read_text()
    section = readme.split("### Security model", 1)[1].split("\n### ", 1)[0]
    for needed in (
        "node root",
        "KubeletEnsureSecretPulledImages",
        "imagePullCredentialsVerificationPolicy: AlwaysVerify",
        "NeverVerifyPreloadedImages",
        "AlwaysPullImages",
        "warm-viewer",
        "-@dangerous",
    ):
        assert needed in section, needed
