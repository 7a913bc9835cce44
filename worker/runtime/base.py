"""The runtime seam: what the node worker needs from a container runtime, and nothing more.

Like an HTTP transport in httpx, a driver is small and swappable: the pull logic above it never
knows whether it talks CRI over gRPC or the Docker Engine API, and tests run the same logic
against a real containerd. A driver translates its runtime's errors into :class:`PullFailed`
with a :class:`FailureKind`, since only the driver can read its runtime's error text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # worth retrying later: network, 5xx, 429, deadline, runtime down
    PERMANENT = "permanent"  # retrying cannot help: unknown manifest, unauthorized, bad ref


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

    def __repr__(self) -> str:  # never let a password reach a log line or a traceback
        return f"Credentials(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class FilesystemUsage:
    used_bytes: int
    capacity_bytes: int | None  # None when the runtime does not tell


class ImageRuntime(Protocol):
    """The five operations the node worker needs from a container runtime."""

    name: str

    def list_images(self) -> list[RuntimeImage]: ...

    def image_status(self, reference: str) -> RuntimeImage | None: ...

    def pull(
        self, reference: str, *, credentials: Credentials | None = None, timeout: float
    ) -> str: ...

    def remove(self, reference: str) -> None: ...

    def filesystem_usage(self) -> FilesystemUsage: ...
