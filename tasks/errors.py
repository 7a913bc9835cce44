"""The exceptions node tasks end with, so that a task's Celery state says what happened.

Flower, ``celery inspect`` and the task events show a task's state and its exception: a pull
that failed for good ends in FAILURE, one that will be tried again in RETRY, and a re-warm that
could not warm everything in FAILURE. The message is what a person needs in one line (the
reason the runtime gave, or what failed), because Flower lists it beside the task.

Each takes its message as its only argument: Celery's JSON result serialization stores an
exception as its type, module and arguments, and rebuilds it by calling the type with them.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_LISTED = 10  # failures named in a re-warm's message; the node's status has them all
# How the reason of a transient failure that ran out of retries begins: a registry that was
# down, not an image that is broken (a wave does not stop for it, watcher/waves.py).
GAVE_UP = "gave up after"


def gave_up(reason: str) -> bool:
    """Whether a failure's reason says it was transient until the retries ran out."""
    return reason.startswith(GAVE_UP)


def one_line(text: str) -> str:
    """Runtimes and registries answer with multi-line text; a task list shows one line."""
    return " ".join(text.split())


class NodeTaskError(Exception):
    """A node task that did not do what it was sent for; ``str()`` is the whole message."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))

    @property
    def message(self) -> str:
        return str(self.args[0])


class PullFailedError(NodeTaskError):
    """A permanent pull failure (missing tag, unauthorized, bad reference): never retried."""


class TransientPullError(NodeTaskError):
    """A pull that may work later (registry down, timeout); the task is retried with backoff."""


class RewarmIncompleteError(NodeTaskError):
    """A re-warm after which some of the node's images are not there, with what failed."""

    @classmethod
    def of(cls, failed: Mapping[str, str], expected: int) -> RewarmIncompleteError:
        listed = [f"{image} ({reason})" for image, reason in sorted(failed.items())[:MAX_LISTED]]
        more = len(failed) - len(listed)
        tail = f"; and {more} more (celery -A tasks warm-status)" if more > 0 else ""
        return cls(f"{len(failed)} of {expected} image(s) not warm: {'; '.join(listed)}{tail}")
