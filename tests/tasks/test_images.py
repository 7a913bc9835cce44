from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.images import InvalidImageReference, normalize_image, parse_image

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("given_ref", "normalized"),
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx:1.25"),
        ("library/nginx", "docker.io/library/nginx:latest"),
        ("docker.io/nginx", "docker.io/library/nginx:latest"),
        ("index.docker.io/bitnami/redis:7", "docker.io/bitnami/redis:7"),
        ("quay.io/prometheus/node-exporter:v1.8", "quay.io/prometheus/node-exporter:v1.8"),
        ("127.0.0.1:5000/test/small:v1", "127.0.0.1:5000/test/small:v1"),
        ("localhost/app", "localhost/app:latest"),
        ("registry.local:5443/team/app", "registry.local:5443/team/app:latest"),
        (f"ghcr.io/org/app@{DIGEST}", f"ghcr.io/org/app@{DIGEST}"),
        (f"ubuntu:22.04@{DIGEST}", f"docker.io/library/ubuntu:22.04@{DIGEST}"),
        ("[::1]:5000/x:y", "[::1]:5000/x:y"),
        ("registry.local:123456/app", "registry.local:123456/app:latest"),  # any digits
        ("registry-1.docker.io/app", "registry-1.docker.io/app:latest"),  # not Docker Hub's alias
        ("example.com/" + "a" * 255, "example.com/" + "a" * 255 + ":latest"),  # path <= 255
        ("a.b/c__d/e-f.g_h:T_1.0-x", "a.b/c__d/e-f.g_h:T_1.0-x"),
    ],
)
def test_references_are_normalized_like_containerd(given_ref: str, normalized: str) -> None:
    assert normalize_image(given_ref) == normalized


def test_digest_reference_pulls_by_digest_and_keeps_the_tag() -> None:
    image = parse_image(f"nginx:1.25@{DIGEST}")
    assert image.tag == "1.25"
    assert image.digest == DIGEST
    assert image.pull_ref == f"docker.io/library/nginx@{DIGEST}"


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ("", "empty"),
        ("Nginx", "lowercase"),
        ("nginx:", "tag"),
        ("nginx:-x", "tag"),
        ("nginx@sha256:abc", "digest"),
        ("nginx@sha256:" + "a" * 63, "64 hex"),
        ("a//b", "path component"),
        ("foo bar", "white space"),
        ("x:5000/:v", "empty"),
        ("exa_mple.com:5000/app", "registry host"),
        ("a/" * 130 + "b", "longer than"),
        ("nginx@sha256:" + "A" * 64, "lowercase"),
        ("nginx@md5:" + "a" * 32, "algorithm"),
        ("nginx:t\u00e9", "tag"),  # tags are ASCII, as Go reads \\w
        ("[::ffff:1.2.3.4]:5000/x", "registry host"),
        ("a" * 64, "image ID"),
        ("sha256:" + "a" * 64, "image ID"),
    ],
)
def test_invalid_references_name_the_reference_and_the_rule(bad: str, rule: str) -> None:
    with pytest.raises(InvalidImageReference) as caught:
        parse_image(bad)
    assert caught.value.reference == bad
    assert rule in caught.value.rule
    assert repr(bad) in str(caught.value)


@given(st.text(max_size=80))
def test_any_text_parses_or_raises_the_one_error_type(text: str) -> None:
    try:
        image = parse_image(text)
    except InvalidImageReference:
        return
    assert normalize_image(str(image)) == str(image)  # normalizing is idempotent
