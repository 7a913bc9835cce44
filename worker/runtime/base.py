"""The runtime seam: what the node worker needs from a container runtime, and nothing more.

Like an HTTP transport in httpx, a driver is small and swappable: the pull logic above it never
knows whether it talks CRI over gRPC or the Docker Engine API, and tests run the same logic
against a real containerd. A driver translates its runtime's errors into :class:`PullFailed`
with a :class:`FailureKind`, since only the driver can read its runtime's error text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # worth retrying later: network, 5xx, 429, deadline, runtime down
    PERMANENT = "permanent"  # retrying cannot help: unknown manifest, unauthorized, bad ref


# What registries and runtimes say when retrying cannot help. Both containerd and the Docker
# Engine pass the registry's answer on as text (containerd with gRPC code UNKNOWN, dockerd often
# with HTTP 500), so the text is what tells a missing tag from a registry that is down.
_PERMANENT_TEXT = re.compile(
    r"not found|manifest unknown|name unknown|unauthorized|authentication required|denied"
    r"|no basic auth credentials|does not exist|invalid reference|failed to parse"
    r"|no match for platform|invalid reference format",
    re.IGNORECASE,
)


def classify_text(text: str) -> FailureKind:
    """Permanent when the message says so; everything else (network, 5xx, 429) is transient."""
    return FailureKind.PERMANENT if _PERMANENT_TEXT.search(text) else FailureKind.TRANSIENT


class PullFailed(Exception):
    """A pull that did not succeed; ``reason`` is the runtime's or registry's own words."""

    def __init__(self, image: str, kind: FailureKind, reason: str) -> None:
        super().__init__(f"pull of {image} failed ({kind}): {reason}")
        self.image = image
        self.kind = kind
        self.reason = reason


class RuntimeUnavailable(Exception):
    """The runtime's socket does not answer."""


@dataclass(frozen=True)
class RuntimeImage:
    """An image held by the runtime, with every name it is known by."""

    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int

    def known_as(self, reference: str) -> bool:
        return reference in self.repo_tags or reference in self.repo_digests


@dataclass(frozen=True)
class Credentials:
    """Registry credentials, only ever held in memory for the duration of one pull."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:  # never let a secret reach a log line or a traceback
        return f"Credentials(username={self.username!r}, password=***, identity_token=***)"


@dataclass(frozen=True)
class FilesystemUsage:
    """The image filesystem: what images take, and how full the disk under them is."""

    used_bytes: int  # by images, as the runtime counts them
    capacity_bytes: int | None = None  # None when the filesystem is not visible from here
    available_bytes: int | None = None

    @property
    def used_percent(self) -> float | None:
        """How full the disk is, as kubelet's image GC thresholds measure it."""
        if not self.capacity_bytes or self.available_bytes is None:
            return None
        return 100.0 * (self.capacity_bytes - self.available_bytes) / self.capacity_bytes


class ImageRuntime(Protocol):
    """The operations the node worker needs from a container runtime."""

    name: str

    def version(self, timeout: float | None = None) -> str:
        """``name version``; raises :class:`RuntimeUnavailable` when the runtime is down."""
        ...

    def list_images(self) -> list[RuntimeImage]: ...

    def image_status(self, reference: str) -> RuntimeImage | None: ...

    def pull(
        self, reference: str, *, credentials: Credentials | None = None, timeout: float
    ) -> str: ...

    def remove(self, reference: str) -> None: ...

    def filesystem_usage(self) -> FilesystemUsage: ...

    def close(self) -> None: ...
