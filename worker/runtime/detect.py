"""Choosing the runtime driver from ``WARM_RUNTIME`` and ``WARM_RUNTIME_ENDPOINT``.

``cri`` and ``docker`` say which driver to use. With ``auto`` an endpoint's name decides (a
``docker.sock`` is the Docker Engine, anything else CRI); without an endpoint the usual sockets
are tried in order, and the first runtime that answers wins: a node that runs Docker next to a
containerd without the CRI plugin gets Docker, not a containerd that kubelet does not use.
"""

from __future__ import annotations

from pathlib import Path

from tasks.settings import RuntimeSettings

from .base import ImageRuntime, RuntimeUnavailable
from .cri import CriRuntime
from .docker import DockerRuntime

SOCKETS = (
    ("cri", "/run/containerd/containerd.sock"),
    ("cri", "/run/k3s/containerd/containerd.sock"),
    ("cri", "/var/run/crio/crio.sock"),
    ("docker", "/var/run/docker.sock"),
)


def open_runtime(settings: RuntimeSettings) -> ImageRuntime:
    """The driver for this node's runtime, checked to answer; :class:`RuntimeUnavailable` if not."""
    if settings.endpoint:
        return _open(kind_of(settings.kind, settings.endpoint), settings.endpoint, settings)
    tried = []
    for kind, path in SOCKETS:
        if settings.kind not in ("auto", kind) or not Path(path).exists():
            continue
        try:
            return _open(kind, f"unix://{path}", settings)
        except RuntimeUnavailable as error:
            tried.append(str(error))
    found = "; ".join(tried) or "no socket exists"
    raise RuntimeUnavailable(
        f"no container runtime answers at {', '.join(path for _, path in SOCKETS)} ({found}); "
        "set WARM_RUNTIME_ENDPOINT"
    )


def kind_of(kind: str, endpoint: str) -> str:
    if kind != "auto":
        return kind
    return "docker" if "docker" in Path(endpoint.split("://")[-1]).name else "cri"


def _open(kind: str, endpoint: str, settings: RuntimeSettings) -> ImageRuntime:
    probe = settings.image_fs_path
    runtime: ImageRuntime = (
        DockerRuntime(endpoint, image_fs_path=probe)
        if kind == "docker"
        else CriRuntime(endpoint, image_fs_path=probe)
    )
    try:
        runtime.version()  # fail at start-up, not at the first pull
    except RuntimeUnavailable:
        runtime.close()
        raise
    return runtime
