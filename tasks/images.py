"""Image references: parsing, validation and normalization.

The catalog, the task messages and the runtimes must agree on one spelling of an image, or a
node would pull ``nginx`` again because it holds ``docker.io/library/nginx:latest``. So every
reference is normalized the way containerd and kubelet do it (Docker's reference grammar:
default registry ``docker.io``, ``library/`` for official images, ``latest`` when there is
neither tag nor digest) before it enters the system, and a reference that breaks the grammar is
rejected here with the rule it breaks, rather than later by a registry with a vaguer message.
tests/tasks/test_reference_vectors.py holds this module to distribution/reference's own test
vectors, with the few deliberate differences listed there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_REGISTRY = "docker.io"
# Docker Hub's legacy name, the only host upstream rewrites to docker.io (registry-1.docker.io is
# a different spelling to containerd and kubelet, so it stays as written).
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_PATH_LENGTH = 255  # upstream limits the repository path, not the host in front of it

# The grammar of github.com/distribution/reference (regexp.go), in ASCII as Go's RE2 reads it.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_LOWER_HEX = re.compile(r"[0-9a-f]+")
# The algorithms containerd and the kubelet register (go-digest with crypto/sha256 and sha512).
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
# What `docker images -q` prints: local content, never something a registry can serve.
_IMAGE_ID = re.compile(r"(?:sha256:)?[a-f0-9]{64}")


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
    if _IMAGE_ID.fullmatch(reference):
        raise InvalidImageReference(reference, "an image ID names local content: give a name")
    remainder, digest = _split_digest(reference)
    remainder, tag = _split_tag(reference, remainder)
    registry, repository = _split_registry(reference, remainder)
    _check_repository(reference, repository)
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
    algorithm, colon, hex_part = digest.partition(":")
    if not colon:
        raise InvalidImageReference(reference, "the digest must be 'algorithm:hex' (sha256:...)")
    expected = _DIGEST_HEX_LENGTH.get(algorithm)
    if expected is None:
        raise InvalidImageReference(reference, "the digest algorithm must be sha256/384/512")
    if len(hex_part) != expected or not _LOWER_HEX.fullmatch(hex_part):
        raise InvalidImageReference(
            reference, f"a {algorithm} digest has {expected} hex digits, in lowercase"
        )
    return remainder, digest


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
    registry = DEFAULT_REGISTRY if first == LEGACY_DEFAULT_REGISTRY else first
    if registry == DEFAULT_REGISTRY and "/" not in rest:
        rest = f"{OFFICIAL_NAMESPACE}/{rest}"
    return registry, rest


def _check_repository(reference: str, repository: str) -> None:
    if not repository:
        raise InvalidImageReference(reference, "the repository name is empty")
    if len(repository) > MAX_PATH_LENGTH:
        raise InvalidImageReference(
            reference, f"the repository path is longer than {MAX_PATH_LENGTH} characters"
        )
    for component in repository.split("/"):
        if component != component.lower():
            raise InvalidImageReference(reference, "the repository name must be lowercase")
        if not _COMPONENT.fullmatch(component):
            raise InvalidImageReference(
                reference,
                f"path component {component!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'",
            )
