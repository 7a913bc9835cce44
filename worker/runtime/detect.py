"""Choosing the runtime driver from ``WARM_RUNTIME`` and ``WARM_RUNTIME_ENDPOINT``.

With ``auto`` and no endpoint, the usual socket paths are tried in order; the first that
exists wins. Docker support arrives with its driver; until then ``docker`` is refused clearly.
"""

from __future__ import annotations

from pathlib import Path

from tasks.settings import RuntimeSettings

from .base import ImageRuntime, RuntimeUnavailable
from .cri import CriRuntime

CRI_SOCKETS = (
    "/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
)


def open_runtime(settings: RuntimeSettings) -> ImageRuntime:
    if settings.kind == "docker":
        raise RuntimeUnavailable("WARM_RUNTIME=docker: the Docker driver is not available yet")
    endpoint = settings.endpoint or _first_existing(CRI_SOCKETS)
    if endpoint is None:
        raise RuntimeUnavailable(
            "no container runtime socket found (tried "
            + ", ".join(CRI_SOCKETS)
            + "); set WARM_RUNTIME_ENDPOINT"
        )
    runtime = CriRuntime(endpoint)
    runtime.version()  # fail at start-up, not at the first pull
    return runtime


def _first_existing(paths: tuple[str, ...]) -> str | None:
    return next((f"unix://{path}" for path in paths if Path(path).exists()), None)
