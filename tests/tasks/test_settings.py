from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]
SETTING = re.compile(r"(?<![A-Z0-9_])WARM_[A-Z0-9_]+")
READ_SETTING = re.compile(r"(?<=[\"'])WARM_[A-Z0-9_]+")  # a variable name in a string literal


def test_defaults_follow_the_contract() -> None:
    settings = load_settings({})
    assert settings.broker.url == "redis://127.0.0.1:6379/0"
    assert settings.nats.url == "nats://127.0.0.1:4222"
    assert settings.runtime.kind == "auto"
    assert settings.runtime.max_concurrent_pulls == 2
    assert settings.runtime.refresh_tags == "latest"
    assert settings.runtime.registry_pull_limit == 100
    assert settings.runtime.registry_pull_limits == ()
    assert settings.watch.namespaces == ("*",)
    assert settings.rewarm.interval == 1800


def test_environment_names_from_the_contract() -> None:
    settings = load_settings(
        {
            "WARM_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
            "NODE_NAME": "fallback-node",
            "WARM_RUNTIME": "CRI",
            "WARM_RUNTIME_ENDPOINT": "unix:///run/containerd/containerd.sock",
            "WARM_NAMESPACES": "apps batch",
            "WARM_IGNORE_NAMESPACES": "kube-system,kube-public",
            "WARM_EXPLICIT_IMAGES": '["nginx:1.25"]',
        }
    )
    assert settings.broker.url.startswith("amqp://")
    assert settings.node.name == "fallback-node"
    assert settings.runtime.kind == "cri"
    assert settings.watch.namespaces == ("apps", "batch")
    assert settings.watch.ignore_namespaces == ("kube-system", "kube-public")
    assert tuple(item.image for item in settings.watch.explicit) == ("nginx:1.25",)


def test_registry_pull_limits_map_hosts_to_limits() -> None:
    limits = '{"ghcr.io": 5, "r:5000": 0}'
    runtime = load_settings(
        {"WARM_REGISTRY_PULL_LIMIT": "0", "WARM_REGISTRY_PULL_LIMITS": limits}
    ).runtime
    assert runtime.registry_pull_limit == 0
    assert runtime.registry_pull_limits == (("ghcr.io", 5), ("r:5000", 0))


def test_warm_node_name_wins_over_node_name() -> None:
    assert load_settings({"WARM_NODE_NAME": "a", "NODE_NAME": "b"}).node.name == "a"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WARM_RUNTIME": "podman"}, "WARM_RUNTIME='podman' is not one of auto, cri, docker"),
        ({"WARM_REFRESH_TAGS": "some"}, "WARM_REFRESH_TAGS='some' is not one of none, latest, all"),
        ({"WARM_MAX_CONCURRENT_PULLS": "two"}, "WARM_MAX_CONCURRENT_PULLS='two' is not a int"),
        ({"WARM_MAX_CONCURRENT_PULLS": "0"}, "must be at least 1"),
        ({"WARM_EXPLICIT_IMAGES": "nginx"}, "WARM_EXPLICIT_IMAGES is not valid JSON"),
        ({"WARM_EXPLICIT_IMAGES": "[1]"}, "JSON list of image references"),
        ({"WARM_REGISTRY_PULL_LIMIT": "-1"}, "WARM_REGISTRY_PULL_LIMIT='-1' must be at least 0"),
        ({"WARM_REGISTRY_PULL_LIMITS": "{docker.io: 2}"}, "WARM_REGISTRY_PULL_LIMITS is not valid"),
        ({"WARM_REGISTRY_PULL_LIMITS": '{"docker.io": "2"}'}, "JSON object of registry host"),
        ({"WARM_REGISTRY_PULL_LIMITS": '["docker.io"]'}, "JSON object of registry host"),
    ],
)
def test_malformed_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env)


def test_a_config_file_gives_defaults_that_the_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "warm.toml"
    path.write_text('WARM_REWARM_INTERVAL = 60\nWARM_NATS_URL = "nats://file:4222"\n')
    settings = load_settings({"WARM_CONFIG_FILE": str(path), "WARM_NATS_URL": "nats://env:4222"})
    assert settings.rewarm.interval == 60
    assert settings.nats.url == "nats://env:4222"


def test_an_unreadable_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="WARM_CONFIG_FILE"):
        load_settings({"WARM_CONFIG_FILE": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"WARM_LEASE_DURATION": "10", "WARM_LEASE_RENEW_DEADLINE": "10"},
            "WARM_LEASE_RENEW_DEADLINE=10 must be less than WARM_LEASE_DURATION=10",
        ),
        (
            {"WARM_LEASE_RENEW_DEADLINE": "2", "WARM_LEASE_RETRY_PERIOD": "3"},
            "WARM_LEASE_RETRY_PERIOD=3 must be less than WARM_LEASE_RENEW_DEADLINE=2",
        ),
        (
            {"WARM_REWARM_INTERVAL": "30"},  # the default window is 60 s
            "WARM_REWARM_WINDOW=60 must not exceed WARM_REWARM_INTERVAL=30",
        ),
    ],
)
def test_settings_that_contradict_each_other_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(env)


def test_a_process_with_contradicting_settings_exits_with_one_line() -> None:
    env = {**os.environ, "WARM_LEASE_RENEW_DEADLINE": "20", "PYTHONPATH": str(REPO)}
    started = subprocess.run(
        [sys.executable, "-c", "import celeryconfig"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert started.returncode == 1
    assert started.stderr.splitlines() == [
        "warm-images: WARM_LEASE_RENEW_DEADLINE=20 must be less than WARM_LEASE_DURATION=15: "
        "a leader must renew its Lease before the Lease runs out"
    ]


def test_the_readme_lists_every_setting_the_code_reads() -> None:
    product = [REPO / "celeryconfig.py"]
    for package in ("tasks", "watcher", "worker", "beat"):
        product += (REPO / package).rglob("*.py")
    read = {name for path in product for name in READ_SETTING.findall(path.read_text())}
    listed = set(SETTING.findall((REPO / "README.md").read_text()))

    assert read, "no WARM_* names found: the pattern is broken"
    assert sorted(read - listed) == [], "settings missing from README.md's Settings table"
