"""Container runtime drivers behind one small protocol (see :mod:`worker.runtime.base`).

:mod:`worker.runtime.fake` is an in-memory runtime and registry behind the same protocol, so
that the worker's own logic is tested in milliseconds (as httpx ships MockTransport).
"""

from .base import (
    Credentials,
    FailureKind,
    FilesystemUsage,
    ImageRuntime,
    PullFailed,
    RuntimeImage,
    RuntimeUnavailable,
)
from .detect import open_runtime

__all__ = [
    "Credentials",
    "FailureKind",
    "FilesystemUsage",
    "ImageRuntime",
    "PullFailed",
    "RuntimeImage",
    "RuntimeUnavailable",
    "open_runtime",
]
