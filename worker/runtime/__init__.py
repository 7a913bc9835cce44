"""Container runtime drivers behind one small protocol (see :mod:`worker.runtime.base`)."""

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
