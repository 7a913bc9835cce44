"""The worker's smaller parts: error classes, runtime detection, /healthz, its settings.

Error texts are the ones containerd 1.6 and dockerd 20.10 return for those registry answers;
detection and health run against the real containerd of this module's node.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from localcluster import Containerd, free_port
from tasks.settings import RuntimeSettings, SettingsError, load_settings
from worker import health
from worker.runtime import FailureKind, RuntimeUnavailable, detect, open_runtime
from worker.runtime.base import classify_text
from worker.runtime.cri import CriRuntime

PERMANENT = [
    'failed to resolve reference "r/a:x": r/a:x: not found',
    "unexpected status code [manifests v1]: 401 Unauthorized",
    "pull access denied, repository does not exist or may require authorization",
    "manifest for r/a:x not found: manifest unknown: manifest unknown",
    'Head "http://r/v2/a/manifests/v1": no basic auth credentials',
]
TRANSIENT = [
    'failed to do request: Head "http://r/v2/a/manifests/v1": dial tcp: connect: '
    "connection refused",
    "unexpected status code [manifests v1]: 503 Service Unavailable",
    "unexpected status code [manifests v1]: 429 Too Many Requests",
    "toomanyrequests: You have reached your pull rate limit",
    "DEADLINE_EXCEEDED: Deadline Exceeded",
]


@pytest.mark.parametrize("text", PERMANENT)
def test_registry_refusals_are_permanent(text: str) -> None:
    assert classify_text(text) is FailureKind.PERMANENT


@pytest.mark.parametrize("text", TRANSIENT)
def test_outages_limits_and_deadlines_are_transient(text: str) -> None:
    assert classify_text(text) is FailureKind.TRANSIENT


def test_auto_takes_the_first_socket_whose_runtime_answers(
    node: Containerd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = tmp_path / "containerd.sock"
    dead.touch()  # exists, but nothing listens: a runtime that is down
    sockets = (("cri", str(dead)), ("cri", str(node.socket)), ("docker", "/nonexistent"))
    monkeypatch.setattr(detect, "SOCKETS", sockets)

    runtime = open_runtime(RuntimeSettings(kind="auto"))

    assert isinstance(runtime, CriRuntime) and runtime.endpoint == node.endpoint
    runtime.close()
    monkeypatch.setattr(detect, "SOCKETS", (("cri", str(dead)),))
    with pytest.raises(RuntimeUnavailable, match="WARM_RUNTIME_ENDPOINT"):
        open_runtime(RuntimeSettings(kind="auto"))


def test_healthz_follows_the_runtime_socket_only(node: Containerd, tmp_path: Path) -> None:
    up, down = CriRuntime(node.endpoint), CriRuntime(f"unix://{tmp_path}/gone.sock")
    up_port, down_port = free_port(), free_port()
    servers = [health.serve(up_port, up), health.serve(down_port, down)]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{up_port}/healthz", timeout=10) as ok:
            assert ok.status == 200 and b"containerd" in ok.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{down_port}/healthz", timeout=10)
        assert refused.value.code == 503
    finally:
        for server in servers:
            if server is not None:
                server.stop()
        up.close()
        down.close()


def test_worker_settings_from_the_environment() -> None:
    defaults = load_settings({})
    assert defaults.runtime.disk_budget_percent == 80.0
    assert defaults.runtime.pull_secrets is True
    assert defaults.runtime.kubelet_credentials_file is None
    assert (defaults.probes.metrics_port, defaults.probes.health_port) == (9808, 8080)
    custom = load_settings(
        {
            "WARM_DISK_BUDGET_PERCENT": "70.5",
            "WARM_PULL_SECRETS": "false",
            "WARM_KUBELET_CREDENTIALS_FILE": "/var/lib/kubelet/config.json",
            "WARM_METRICS_PORT": "0",
            "WARM_HEALTH_PORT": "0",
        }
    )
    assert custom.runtime.disk_budget_percent == 70.5
    assert custom.runtime.pull_secrets is False
    assert custom.runtime.kubelet_credentials_file == "/var/lib/kubelet/config.json"
    assert (custom.probes.metrics_port, custom.probes.health_port) == (0, 0)
    with pytest.raises(SettingsError, match="WARM_PULL_SECRETS"):
        load_settings({"WARM_PULL_SECRETS": "maybe"})
