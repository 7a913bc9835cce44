"""Image references: parsing, validation and normalization.

The catalog, the task messages and the runtimes must agree on one spelling of an image, or a
node would pull ``nginx`` again because it holds ``docker.io/library/nginx:latest``. So every
reference is normalized the way containerd and kubelet do it (Docker's reference grammar:
default registry ``docker.io``, ``library/`` for official images, ``latest`` when there is
neither tag nor digest) before it enters the system, and a reference that breaks the grammar is
rejected here with the rule it breaks, rather than later by a registry with a vaguer message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_REGISTRY = "docker.io"
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?")
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}


class InvalidImageReference(ValueError):
    """An image reference that breaks Docker's reference grammar.

    ``reference`` is the text as given and ``rule`` says which part of the grammar it breaks,
    so that a log line, a NATS event or a CLI error can tell the user what to fix.
    """

    def __init__(self, reference: str, rule: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {rule}")
        self.reference = reference
        self.rule = rule


@dataclass(frozen=True, order=True)
class ImageRef:
    """A normalized image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository with its registry, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def pull_ref(self) -> str:
        """What to ask a runtime for: the digest when pinned, since it is immutable."""
        return f"{self.name}@{self.digest}" if self.digest else str(self)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_image(reference: str) -> ImageRef:
    """Parse and normalize ``reference``; raise :class:`InvalidImageReference` if it is bad."""
    if not isinstance(reference, str) or not reference:
        raise InvalidImageReference(str(reference), "the reference is empty")
    if reference != reference.strip() or any(c.isspace() for c in reference):
        raise InvalidImageReference(reference, "a reference may not contain white space")
    remainder, digest = _split_digest(reference)
    remainder, tag = _split_tag(reference, remainder)
    registry, repository = _split_registry(reference, remainder)
    _check_repository(reference, repository)
    if len(f"{registry}/{repository}") > MAX_NAME_LENGTH:
        raise InvalidImageReference(reference, f"the name is longer than {MAX_NAME_LENGTH} chars")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageRef(registry, repository, tag, digest)


def normalize_image(reference: str) -> str:
    """The canonical spelling of ``reference`` (raises :class:`InvalidImageReference`)."""
    return str(parse_image(reference))


def _split_digest(reference: str) -> tuple[str, str | None]:
    remainder, sep, digest = reference.partition("@")
    if not sep:
        return reference, None
    if not _DIGEST.fullmatch(digest):
        raise InvalidImageReference(reference, "the digest must be 'algorithm:hex' (sha256:...)")
    algorithm, _, hex_part = digest.partition(":")
    expected = _DIGEST_HEX_LENGTH.get(algorithm)
    if expected is not None and len(hex_part) != expected:
        raise InvalidImageReference(reference, f"a {algorithm} digest has {expected} hex digits")
    return remainder, f"{algorithm}:{hex_part.lower()}"


def _split_tag(reference: str, remainder: str) -> tuple[str, str | None]:
    # A colon after the last slash separates a tag; one before it belongs to a registry port.
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon <= slash:
        return remainder, None
    tag = remainder[colon + 1 :]
    if not _TAG.fullmatch(tag):
        raise InvalidImageReference(
            reference, "a tag is 1-128 of [A-Za-z0-9_.-] and may not start with '.' or '-'"
        )
    return remainder[:colon], tag


def _split_registry(reference: str, remainder: str) -> tuple[str, str]:
    first, sep, rest = remainder.partition("/")
    is_host = sep and (
        "." in first or ":" in first or first == "localhost" or first != first.lower()
    )
    if not is_host:
        repository = remainder
        if "/" not in repository:
            repository = f"{OFFICIAL_NAMESPACE}/{repository}"
        return DEFAULT_REGISTRY, repository
    if not _HOST.fullmatch(first):
        raise InvalidImageReference(reference, f"{first!r} is not a valid registry host[:port]")
    registry = "docker.io" if first in ("index.docker.io", "registry-1.docker.io") else first
    if registry == DEFAULT_REGISTRY and "/" not in rest:
        rest = f"{OFFICIAL_NAMESPACE}/{rest}"
    return registry, rest


def _check_repository(reference: str, repository: str) -> None:
    if not repository:
        raise InvalidImageReference(reference, "the repository name is empty")
    for component in repository.split("/"):
        if component != component.lower():
            raise InvalidImageReference(reference, "the repository name must be lowercase")
        if not _COMPONENT.fullmatch(component):
            raise InvalidImageReference(
                reference,
                f"path component {component!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'",
            )
