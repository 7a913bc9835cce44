"""The Docker Engine driver: nodes whose kubelet runs containers through dockerd (cri-dockerd).

There kubelet sees the images dockerd holds, so warming must pull into dockerd, through its
Engine API (the ``docker`` package). Two things differ from CRI and are handled here:

* Docker names official images short (``nginx:latest``); names are normalized on the way out,
  so presence checks compare the same spellings as with CRI.
* The SDK's pull has no deadline (it streams with no timeout). The pull is made with the SDK's
  own HTTP session instead, and a timer closes the stream at the deadline; dockerd cancels a
  pull whose client has gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any

import docker
import docker.auth
import docker.errors
import requests

from tasks.images import ImageRef, InvalidImageReference, normalize_image, parse_image

from .base import (
    Credentials,
    FailureKind,
    FilesystemUsage,
    PullFailed,
    RuntimeImage,
    RuntimeUnavailable,
    classify_text,
)

_QUERY_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 10.0
_PERMANENT_STATUS = {400, 401, 403, 404}


class DockerRuntime:
    """An :class:`~worker.runtime.base.ImageRuntime` over the Docker Engine API."""

    name = "docker"

    def __init__(self, endpoint: str, *, image_fs_path: str | None = None) -> None:
        self.endpoint = endpoint if "://" in endpoint else f"unix://{endpoint}"
        try:
            # "auto" asks dockerd its API version: an older engine refuses a newer client's.
            self._api = docker.APIClient(
                base_url=self.endpoint, version="auto", timeout=_QUERY_TIMEOUT
            )
        except docker.errors.DockerException as error:
            raise RuntimeUnavailable(f"Docker at {self.endpoint}: {error}") from None
        # Measured for the disk budget: a directory on dockerd's filesystem (WARM_IMAGE_FS_PATH),
        # else DockerRootDir, asked once.
        self._root: str | None = image_fs_path

    def version(self, timeout: float | None = None) -> str:
        def ask() -> Any:
            url = self._api._url("/version")
            response = self._api.get(url, timeout=timeout or _QUERY_TIMEOUT)
            response.raise_for_status()
            return response.json()

        return f"docker {self._query(ask).get('Version', '?')}"

    def list_images(self) -> list[RuntimeImage]:
        return [_runtime_image(item) for item in self._query(lambda: self._api.images())]

    def image_status(self, reference: str) -> RuntimeImage | None:
        try:
            found = self._query(lambda: self._api.inspect_image(reference))
        except _NotFound:
            return None
        return _runtime_image(found)

    def pull(
        self, reference: str, *, credentials: Credentials | None = None, timeout: float
    ) -> str:
        try:
            image = parse_image(reference)
        except InvalidImageReference as error:
            raise PullFailed(reference, FailureKind.PERMANENT, error.rule) from None
        _PullStream(self._api, image, credentials, timeout).run()
        held = self.image_status(reference)
        if held is None:
            raise PullFailed(reference, FailureKind.TRANSIENT, "pulled but not listed by Docker")
        return held.id

    def remove(self, reference: str) -> None:
        with contextlib.suppress(_NotFound):
            self._query(lambda: self._api.remove_image(reference))

    def filesystem_usage(self) -> FilesystemUsage:
        used = sum(int(item.get("Size") or 0) for item in self._query(lambda: self._api.images()))
        if self._root is None:
            self._root = str(self._query(lambda: self._api.info()).get("DockerRootDir", ""))
        try:
            stats = os.statvfs(self._root)
        except OSError:  # dockerd's root is not mounted into this container
            return FilesystemUsage(used)
        return FilesystemUsage(
            used, stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize
        )

    def close(self) -> None:
        self._api.close()

    def _query(self, call: Any) -> Any:
        try:
            return call()
        except docker.errors.NotFound:
            raise _NotFound() from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise RuntimeUnavailable(f"Docker at {self.endpoint}: {error}") from None


class _NotFound(Exception):
    """dockerd does not hold the image (a 404 from a query, not from a pull)."""


class _PullStream:
    """One ``POST /images/create``: read its progress stream until done, error or deadline."""

    def __init__(
        self,
        api: docker.APIClient,
        image: ImageRef,
        credentials: Credentials | None,
        timeout: float,
    ) -> None:
        self._api = api
        self._image = image
        self._credentials = credentials
        self._timeout = timeout
        self._expired = threading.Event()

    def run(self) -> None:
        response = self._open()
        timer = threading.Timer(self._timeout, self._expire, args=(response,))
        timer.daemon = True
        timer.start()
        try:
            self._check_status(response)
            for line in response.iter_lines():
                self._check_event(json.loads(line) if line else {})
        except PullFailed:
            raise
        except Exception as error:
            if self._expired.is_set():
                raise self._deadline() from None
            raise self._failed(FailureKind.TRANSIENT, f"pull stream broke: {error!r}") from None
        finally:
            timer.cancel()
            response.close()
        if self._expired.is_set():
            raise self._deadline()

    def _open(self) -> requests.Response:
        image = self._image
        params = {"fromImage": image.name, "tag": image.digest or image.tag}
        headers = {}
        if self._credentials is not None:
            headers["X-Registry-Auth"] = docker.auth.encode_header(
                {
                    "username": self._credentials.username,
                    "password": self._credentials.password,
                    "identitytoken": self._credentials.identity_token,
                    "serveraddress": image.registry,
                }
            )
        url = self._api._url("/images/create")  # the SDK's own URL builder (API version prefix)
        try:
            response: requests.Response = self._api.post(
                url,
                params=params,
                headers=headers,
                stream=True,
                timeout=(_CONNECT_TIMEOUT, self._timeout),
            )
        except requests.exceptions.RequestException as error:
            raise self._failed(FailureKind.TRANSIENT, f"Docker unavailable: {error}") from None
        return response

    def _check_status(self, response: requests.Response) -> None:
        if response.status_code < 400:
            return
        try:
            message = str(response.json().get("message", ""))
        except ValueError:
            message = response.text[:500]
        kind = classify_text(message)
        if response.status_code in _PERMANENT_STATUS:
            kind = FailureKind.PERMANENT
        raise self._failed(kind, f"HTTP {response.status_code}: {message}")

    def _check_event(self, event: dict[str, Any]) -> None:
        if "error" in event:
            message = str(event.get("errorDetail", {}).get("message") or event["error"])
            raise self._failed(classify_text(message), message)

    def _expire(self, response: requests.Response) -> None:
        self._expired.set()
        response.close()  # unblocks the reading thread; dockerd cancels the pull

    def _deadline(self) -> PullFailed:
        return self._failed(FailureKind.TRANSIENT, f"deadline: not done in {self._timeout:g}s")

    def _failed(self, kind: FailureKind, reason: str) -> PullFailed:
        return PullFailed(str(self._image), kind, reason)


def _runtime_image(item: dict[str, Any]) -> RuntimeImage:
    return RuntimeImage(
        id=str(item.get("Id", "")),
        repo_tags=_normalized(item.get("RepoTags")),
        repo_digests=_normalized(item.get("RepoDigests")),
        size=int(item.get("Size") or 0),
    )


def _normalized(names: list[str] | None) -> tuple[str, ...]:
    """Docker's short names in the canonical spelling; ``<none>`` placeholders dropped."""
    result = []
    for name in names or ():
        try:
            result.append(normalize_image(name))
        except InvalidImageReference:
            continue
    return tuple(result)
