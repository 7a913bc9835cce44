"""The watcher's settings, by the environment names the chart uses."""

from __future__ import annotations

import pytest

from tasks.settings import ExplicitImage, SettingsError, load_settings


def test_watch_settings_from_the_environment() -> None:
    settings = load_settings(
        {
            "WARM_EXPLICIT_IMAGES": '["pause:3.9", {"image": "agent:1", '
            '"nodeSelector": {"kubernetes.io/arch": "arm64"}}]',
            "WARM_NAMESPACE_SELECTOR": "warm=yes",
            "WARM_OPT_IN": "true",
            "WARM_INCLUDE_IMAGES": "registry.local/* docker.io/*",
            "WARM_EXCLUDE_IMAGES": "*:latest",
            "WARM_CATALOG_GRACE_PERIOD": "0",
            "WARM_RESYNC_INTERVAL": "900",
            "WARM_WATCH_STALE_AFTER": "120",
            "WARM_LEADER_ELECTION": "true",
            "WARM_LEASE_NAME": "warm",
            "WARM_POD_NAMESPACE": "warm-images",
        }
    )
    watch, leader = settings.watch, settings.leader
    assert watch.explicit == (
        ExplicitImage("pause:3.9"),
        ExplicitImage("agent:1", (("kubernetes.io/arch", "arm64"),)),
    )
    assert tuple(item.image for item in watch.explicit) == ("pause:3.9", "agent:1")
    assert (watch.namespace_selector, watch.opt_in) == ("warm=yes", True)
    assert watch.include_images == ("registry.local/*", "docker.io/*")
    assert watch.exclude_images == ("*:latest",)
    assert (watch.catalog_grace_period, watch.resync_interval, watch.stale_after) == (0, 900, 120)
    assert (leader.enabled, leader.lease_name, leader.namespace) == (True, "warm", "warm-images")


def test_watch_defaults() -> None:
    settings = load_settings({})
    assert settings.watch.catalog_grace_period == 600
    assert not settings.watch.opt_in
    assert not settings.leader.enabled
    assert settings.leader.lease_name == "warm-images-watcher"
    assert settings.leader.namespace == "default"
    assert (settings.probes.health_port, settings.probes.metrics_port) == (8080, 9808)


@pytest.mark.parametrize(
    "env",
    [
        {"WARM_EXPLICIT_IMAGES": '[{"nodeSelector": {}}]'},
        {"WARM_EXPLICIT_IMAGES": '[{"image": "a", "nodeSelector": {"x": 1}}]'},
        {"WARM_OPT_IN": "maybe"},
    ],
)
def test_malformed_watch_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(env)
