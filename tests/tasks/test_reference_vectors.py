"""tasks/images.py against distribution/reference's own test vectors.

containerd, the kubelet and Docker all read image references through distribution/reference,
so its test tables (reference_test.go, normalize_test.go; Apache-2.0, commit recorded in the
JSON) are the closest thing to a specification. Every vector must agree with the product, or be
listed in DIFFERENCES with the reason; a listed difference that stops being real fails too, so
the list cannot rot.

The product's spelling is upstream's ``TagNameOnly(ParseNormalizedNamed(ref))``: Docker Hub's
defaults filled in, ``latest`` added when there is neither tag nor digest. Upstream's ``Parse``
and ``WithName`` do not fill in the defaults, so their names are compared with the product's
modulo a leading ``docker.io/`` or ``docker.io/library/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks.images import DEFAULT_TAG, ImageRef, InvalidImageReference, parse_image

Vector = dict[str, Any]

_DATA = json.loads(Path(__file__).with_name("distribution_reference_vectors.json").read_text())
VECTORS: list[Vector] = _DATA["vectors"]
REFUSED = "refused"

_SHA512 = "sha512:" + "f" * 128
_IMAGE_ID = "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
_BUSYBOX_DIGEST = "sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582"
_IMAGE_ID_REASON = (
    "ParseAnyReference reads an image ID as local content; a node has nothing to pull for "
    "it, so the product refuses it and says to give a name"
)

# (test, input) -> (why the product differs, what the product makes of the input)
DIFFERENCES: dict[tuple[str, str], tuple[str, str]] = {
    ("TestReferenceParse", f"validname@{_SHA512}"): (
        "containerd and the kubelet register sha512 (go-digest with crypto/sha512); "
        "upstream's test binary does not import it",
        f"docker.io/library/validname@{_SHA512}",
    ),
    ("TestParseDockerRef", f"gcr.io/library/busybox:latest@{_BUSYBOX_DIGEST}"): (
        "the tag stays beside the digest, as the kubelet reports a pod's image; the pull is "
        "still by digest (ImageRef.pull_ref), so the content is the same",
        f"gcr.io/library/busybox:latest@{_BUSYBOX_DIGEST}",
    ),
    ("TestParseAnyReference", _IMAGE_ID): (_IMAGE_ID_REASON, REFUSED),
    ("TestParseAnyReference", f"sha256:{_IMAGE_ID}"): (_IMAGE_ID_REASON, REFUSED),
}


def _parse(text: str) -> ImageRef | None:
    try:
        return parse_image(text)
    except InvalidImageReference:
        return None


def _product(text: str) -> str:
    image = _parse(text)
    return REFUSED if image is None else str(image)


def _tag_name_only(text: str) -> str:
    """Upstream's TagNameOnly on a canonical string: ``latest`` when there is no tag or digest."""
    if "@" in text or ":" in text.rpartition("/")[2]:
        return text
    return f"{text}:{DEFAULT_TAG}"


def _accepts(vector: Vector) -> bool:
    function, text = vector["function"], vector["input"]
    if function == "WithTag":
        return _parse(f"{text}:{vector['tag']}") is not None
    if function == "WithDigest":
        return _parse(f"{text}@{vector['digest']}") is not None
    if function == "WithName":  # a bare name: one that a tag can still be added to
        return _parse(text) is not None and _parse(f"{text}:{DEFAULT_TAG}") is not None
    image = _parse(text)
    if function == "ParseNamed":  # only names already in canonical form
        return image is not None and image.name == text
    return image is not None


def _same_name(upstream: str, ours: str, normalizing: bool) -> bool:
    if normalizing:
        return upstream == ours
    return ours in (upstream, f"docker.io/{upstream}", f"docker.io/library/{upstream}")


def disagreement(vector: Vector) -> str | None:
    """How the product differs from upstream on this vector, or None when they agree."""
    accepted = _accepts(vector)
    if "error" in vector:
        return f"upstream refuses it ({vector['error']}), the product not" if accepted else None
    if vector.get("digest_reference"):
        return f"upstream reads an image ID; the product: {_product(vector['input'])}"
    if not accepted:
        return "upstream accepts it, the product refuses it"
    image = parse_image(vector["input"])
    function = vector["function"]
    normalizing = function not in ("Parse", "WithName")
    problems: list[str] = []
    if "domain" in vector and "path" in vector:
        name = f"{vector['domain']}/{vector['path']}" if vector["domain"] else vector["path"]
        if not _same_name(name, image.name, normalizing):
            problems.append(f"name {image.name!r}, upstream {name!r}")
    if "name" in vector and not _same_name(vector["name"], image.name, normalizing):
        problems.append(f"name {image.name!r}, upstream {vector['name']!r}")
    if "digest" in vector and image.digest != (vector["digest"] or None):
        problems.append(f"digest {image.digest!r}, upstream {vector['digest']!r}")
    if "tag" in vector:
        expected_tag = vector["tag"] or (None if vector.get("digest") else DEFAULT_TAG)
        if image.tag != expected_tag:
            problems.append(f"tag {image.tag!r}, upstream {vector['tag']!r}")
    if "string" in vector and str(image) != _tag_name_only(vector["string"]):
        problems.append(f"spelled {str(image)!r}, upstream {vector['string']!r}")
    return "; ".join(problems) or None


def _key(vector: Vector) -> tuple[str, str]:
    return vector["test"], vector["input"]


def _id(vector: Vector) -> str:
    text = vector["input"]
    return f"{vector['test']}:{text if len(text) <= 48 else text[:45] + '...'}"


AGREED = [v for v in VECTORS if _key(v) not in DIFFERENCES]


def test_the_vectors_name_their_source_and_licence() -> None:
    source = _DATA["source"]
    assert source["license"] == "Apache-2.0"
    assert len(source["commit"]) == 40
    assert len(VECTORS) == len(AGREED) + len(DIFFERENCES)


@pytest.mark.parametrize("vector", AGREED, ids=[_id(v) for v in AGREED])
def test_the_product_agrees_with_upstream(vector: Vector) -> None:
    assert disagreement(vector) is None


@pytest.mark.parametrize("key", list(DIFFERENCES), ids=[f"{t}:{i[:40]}" for t, i in DIFFERENCES])
def test_each_listed_difference_is_still_real(key: tuple[str, str]) -> None:
    vector = next(v for v in VECTORS if _key(v) == key)
    reason, product = DIFFERENCES[key]
    assert reason
    assert disagreement(vector) is not None
    assert _product(vector["input"]) == product
