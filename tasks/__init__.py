"""The contract every component shares: the Celery app, task names, queues, image references,
the catalog model, NATS subjects and buckets, settings and the ``celery`` CLI subcommands.

It depends on no other package of the project; watcher/, worker/ and beat/ depend on it and never
on each other.
"""

from .app import app
from .images import ImageRef, InvalidImageReference, normalize_image, parse_image
from .routing import queue_for_node
from .settings import Settings, SettingsError, load_settings

__all__ = [
    "ImageRef",
    "InvalidImageReference",
    "Settings",
    "SettingsError",
    "app",
    "load_settings",
    "normalize_image",
    "parse_image",
    "queue_for_node",
]
