"""Every product setting (tasks/settings.py) is reachable through values, with its own default.

The rendered ConfigMap is fed to the product's own ``load_settings``, so a value the chart renders
in a form the product cannot read fails here rather than at a pod's start-up.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
from chart_helpers import PREFIX, REPO, VALUE_SETS, Rendered, env_of, template

SETTINGS_PY = REPO / "tasks" / "settings.py"
# Settings the chart deliberately does not expose as values, and why.
NOT_VALUES = {
    # The values are the configuration file: a TOML file on top would be a second source.
    "WARM_CONFIG_FILE",
    # Set by the DaemonSet from spec.nodeName (WARM_NODE_NAME); NODE_NAME is its alias.
    "NODE_NAME",
    # Leader-election timings: client-go's defaults, tuned together (renew deadline below the
    # lease duration, retry period below the renew deadline), which a schema cannot check across
    # keys. Tests shorten them; a cluster can still use watcher.extraEnv.
    "WARM_LEASE_DURATION",
    "WARM_LEASE_RENEW_DEADLINE",
    "WARM_LEASE_RETRY_PERIOD",
}


def load_settings_module() -> ModuleType:
    """tasks/settings.py alone (stdlib only), without importing the tasks package."""
    spec = importlib.util.spec_from_file_location("_warm_settings_under_test", SETTINGS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def settings_module() -> ModuleType:
    return load_settings_module()


def variables_read_by_the_product() -> set[str]:
    return set(re.findall(r'"((?:WARM_|NODE_)[A-Z_]+)"', SETTINGS_PY.read_text()))


def config_data(result: Rendered) -> dict[str, str]:
    return result.get("ConfigMap", "config")["data"]


def test_every_setting_is_set_by_the_chart(rendered: dict[str, Rendered]) -> None:
    """Each variable of tasks/settings.py lands in the ConfigMap or a container's env (a Secret
    reference for credentials) for some value set, or is listed in NOT_VALUES with its reason."""
    product = variables_read_by_the_product()
    assert "WARM_PULL_TIMEOUT" in product  # the scan itself works
    set_by_chart: set[str] = set()
    for result in rendered.values():
        set_by_chart |= set(config_data(result))
        for _, spec in result.pod_specs():
            for container in spec["containers"]:
                set_by_chart |= set(env_of(container))
    missing = product - set_by_chart - NOT_VALUES
    assert not missing, f"settings with no value in the chart: {sorted(missing)}"
    assert not NOT_VALUES - product, "NOT_VALUES names a setting tasks/settings.py no longer reads"
    assert not NOT_VALUES & set_by_chart, "NOT_VALUES names a setting the chart sets"


def test_chart_defaults_are_the_products(
    rendered: dict[str, Rendered], settings_module: ModuleType
) -> None:
    """The default values give the product exactly its own defaults, but for what the chart
    must name (the NATS URL, the Lease per release and its namespace, the release's, the
    pull-secret copies' namespace of their own) and for
    reading pull secrets: off unless worker.credentials.enabled grants the worker a token and
    `get` on Secrets (least privilege by default)."""
    environ = {**config_data(rendered["default"]), "WARM_POD_NAMESPACE": "warm-images"}
    from_chart = settings_module.load_settings(environ)
    own = settings_module.load_settings({})
    expected = replace(
        own,
        nats=replace(own.nats, url=f"nats://{PREFIX}-nats:4222"),
        runtime=replace(own.runtime, pull_secrets=False),
        leader=replace(own.leader, lease_name=f"{PREFIX}-watcher", namespace="warm-images"),
        release_namespace="warm-images",
        pull_secret_namespace="warm-images-pull-secrets",
    )
    assert from_chart == expected


def test_settings_value_set(rendered: dict[str, Rendered], settings_module: ModuleType) -> None:
    """tests/chart/values/settings.yaml moves every setting off its default."""
    data = config_data(rendered["settings"])
    assert {key: data[key] for key in data if key not in {"WARM_NATS_URL", "WARM_LEASE_NAME"}} == {
        "WARM_NATS_CONNECT_TIMEOUT": "2.5",
        "WARM_BROKER_VISIBILITY_TIMEOUT": "7200",
        "WARM_NAMESPACES": "*",
        "WARM_IGNORE_NAMESPACES": "",
        "WARM_NAMESPACE_SELECTOR": "team=web,env!=dev",
        "WARM_OPT_IN": "true",
        "WARM_INCLUDE_IMAGES": "ghcr.io/acme/* docker.io/library/*",
        "WARM_EXCLUDE_IMAGES": "*:latest",
        "WARM_EXPLICIT_IMAGES": data["WARM_EXPLICIT_IMAGES"],  # JSON, checked below
        "WARM_CATALOG_GRACE_PERIOD": "0",
        "WARM_RESYNC_INTERVAL": "900",
        "WARM_PULL_SECRET_SYNC_INTERVAL": "30",
        "WARM_WATCH_STALE_AFTER": "300.5",
        "WARM_LEADER_ELECTION": "false",
        "WARM_STARTUP_TAINT": "startup-taint.cluster-autoscaler.kubernetes.io/warm-images",
        "WARM_STARTUP_TAINT_DEADLINE": "300.5",
        "WARM_STARTUP_GATE_IMAGES": "annotated",
        "WARM_KUBELET_EVENTS": "false",
        "WARM_CANARY_NODES": "0",
        # 1e+06 if rendered with quote alone.
        "WARM_REWARM_INTERVAL": "1000000",
        "WARM_REWARM_WINDOW": "0",
        "WARM_BEAT_LOCK_TTL": "45",
        "WARM_MAX_CONCURRENT_PULLS": "2",
        "WARM_REGISTRY_PULL_LIMIT": "0",
        "WARM_REGISTRY_PULL_LIMITS": '{"registry.local:5000":4}',
        "WARM_WORKER_REMOTE_CONTROL": "true",
        "WARM_PULL_TIMEOUT": "1800",
        "WARM_PULL_MAX_RETRIES": "0",
        "WARM_PULL_RETRY_BACKOFF_MAX": "300",
        "WARM_REFRESH_TAGS": "all",
        "WARM_DISK_BUDGET_PERCENT": "72.5",
        "WARM_PULL_SECRETS": "false",
        "WARM_PULL_SECRET_NAMESPACE": "warm-copies",
        "WARM_KUBELET_CREDENTIALS_FILE": "/var/lib/kubelet/config.json",
        "WARM_METRICS_PORT": "9808",
        "WARM_HEALTH_PORT": "8080",
    }
    assert json.loads(data["WARM_EXPLICIT_IMAGES"]) == [
        "busybox:1.36",
        {"image": "ghcr.io/acme/cuda:12", "nodeSelector": {"nvidia.com/gpu.present": "true"}},
    ]
    # And the product reads every one of them as meant.
    settings = settings_module.load_settings(data)
    watch, runtime = settings.watch, settings.runtime
    assert watch.namespace_selector == "team=web,env!=dev"
    assert watch.opt_in is True
    assert watch.include_images == ("ghcr.io/acme/*", "docker.io/library/*")
    assert watch.exclude_images == ("*:latest",)
    assert tuple(item.image for item in watch.explicit) == ("busybox:1.36", "ghcr.io/acme/cuda:12")
    assert watch.explicit[1].node_selector == (("nvidia.com/gpu.present", "true"),)
    assert (watch.catalog_grace_period, watch.resync_interval, watch.stale_after) == (
        0,
        900,
        300.5,
    )
    assert (settings.rewarm.interval, settings.rewarm.window, settings.rewarm.lock_ttl) == (
        1000000,
        0,
        45,
    )
    assert (runtime.pull_timeout, runtime.max_retries, runtime.retry_backoff_max) == (1800, 0, 300)
    assert runtime.disk_budget_percent == 72.5
    assert (runtime.registry_pull_limit, runtime.registry_pull_limits) == (
        0,
        (("registry.local:5000", 4),),
    )
    assert runtime.kubelet_credentials_file == "/var/lib/kubelet/config.json"
    assert settings.pull_secret_namespace == "warm-copies"
    assert settings.broker.visibility_timeout == 7200
    assert settings.nats.connect_timeout == 2.5


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_value_set_is_readable_by_the_product(
    rendered: dict[str, Rendered], settings_module: ModuleType, value_set: str
) -> None:
    settings_module.load_settings(config_data(rendered[value_set]))


def test_pod_namespace_for_the_lease(rendered: dict[str, Rendered]) -> None:
    """The Lease lives in the release namespace, which the watcher learns from the downward API."""
    for value_set in ("default", "full"):
        env = env_of(rendered[value_set].container("watcher"))
        field = env["WARM_POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.namespace"


@pytest.mark.parametrize(
    ("args", "fails"),
    [
        (["--set", "worker.pull.timeout=3600"], True),  # equal is not enough
        (["--set", "worker.pull.retryBackoffMax=5000"], True),
        (
            ["--set", "worker.pull.timeout=4000", "--set", "config.brokerVisibilityTimeout=4001"],
            False,
        ),
        (
            [
                "--set",
                "worker.pull.timeout=4000",
                "--set",
                "redis.enabled=false",
                "--set",
                "externalBroker.url=amqp://rabbit:5672//",
                "--set",
                "networkPolicy.enabled=false",
            ],
            False,  # RabbitMQ has no visibility timeout
        ),
    ],
)
def test_visibility_timeout_above_the_longest_pull(
    helm: Path, args: list[str], fails: bool
) -> None:
    result = template(helm, *args)
    assert (result.returncode != 0) is fails, result.stderr
    if fails:
        assert "config.brokerVisibilityTimeout (3600) must exceed" in result.stderr
