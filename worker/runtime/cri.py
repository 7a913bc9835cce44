"""The CRI ImageService driver: containerd and CRI-O over gRPC on their Unix socket.

Talking CRI (not containerd's own API) means images land exactly where kubelet looks for them
(containerd namespace ``k8s.io``) and the same driver serves CRI-O. Facts about containerd 1.6
this driver relies on: ListImages ignores its filter, ImageStatus of a missing image returns an
empty response instead of NOT_FOUND, and a client deadline cancels the pull in the runtime.
"""

from __future__ import annotations

import os

import grpc

from ._cri import api_pb2 as pb
from ._cri import api_pb2_grpc as rpc
from .base import (
    Credentials,
    FailureKind,
    FilesystemUsage,
    PullFailed,
    RuntimeImage,
    RuntimeUnavailable,
    classify_text,
)

_PERMANENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
_QUERY_TIMEOUT = 30.0


class CriRuntime:
    """An :class:`~worker.runtime.base.ImageRuntime` over the CRI v1 ImageService."""

    name = "cri"

    def __init__(
        self, endpoint: str, *, connect_timeout: float = 10.0, image_fs_path: str | None = None
    ) -> None:
        self.endpoint = endpoint if "://" in endpoint else f"unix://{endpoint}"
        # A directory on the image filesystem (WARM_IMAGE_FS_PATH), measured instead of the
        # mountpoint ImageFsInfo names, which would need the runtime's root mounted here.
        self._image_fs_path = image_fs_path
        self._channel = grpc.insecure_channel(self.endpoint)
        self._images = rpc.ImageServiceStub(self._channel)
        self._runtime = rpc.RuntimeServiceStub(self._channel)
        self._connect_timeout = connect_timeout

    def version(self, timeout: float | None = None) -> str:
        """``name version`` of the runtime; raises :class:`RuntimeUnavailable` if it is down."""
        try:
            answer = self._runtime.Version(
                pb.VersionRequest(), timeout=timeout or self._connect_timeout
            )
        except grpc.RpcError as error:
            raise RuntimeUnavailable(f"CRI at {self.endpoint}: {_details(error)}") from error
        return f"{answer.runtime_name} {answer.runtime_version}"

    def list_images(self) -> list[RuntimeImage]:
        answer = self._query(self._images.ListImages, pb.ListImagesRequest())
        return [_runtime_image(image) for image in answer.images]

    def image_status(self, reference: str) -> RuntimeImage | None:
        request = pb.ImageStatusRequest(image=pb.ImageSpec(image=reference))
        answer = self._query(self._images.ImageStatus, request)
        return _runtime_image(answer.image) if answer.HasField("image") else None

    def pull(
        self, reference: str, *, credentials: Credentials | None = None, timeout: float
    ) -> str:
        request = pb.PullImageRequest(image=pb.ImageSpec(image=reference))
        if credentials is not None:
            request.auth.CopyFrom(
                pb.AuthConfig(
                    username=credentials.username,
                    password=credentials.password,
                    identity_token=credentials.identity_token,
                )
            )
        try:
            return str(self._images.PullImage(request, timeout=timeout).image_ref)
        except grpc.RpcError as error:
            raise PullFailed(reference, _classify(error), _details(error)) from None

    def remove(self, reference: str) -> None:
        request = pb.RemoveImageRequest(image=pb.ImageSpec(image=reference))
        self._query(self._images.RemoveImage, request)

    def filesystem_usage(self) -> FilesystemUsage:
        answer = self._query(self._images.ImageFsInfo, pb.ImageFsInfoRequest())
        used = sum(fs.used_bytes.value for fs in answer.image_filesystems)
        mounts = [fs.fs_id.mountpoint for fs in answer.image_filesystems if fs.fs_id.mountpoint]
        if self._image_fs_path:
            mounts = [self._image_fs_path]
        capacity, available = _disk(mounts)
        return FilesystemUsage(used, capacity, available)

    def close(self) -> None:
        self._channel.close()

    def _query(self, method, request):  # type: ignore[no-untyped-def]
        try:
            return method(request, timeout=_QUERY_TIMEOUT)
        except grpc.RpcError as error:
            raise RuntimeUnavailable(f"CRI at {self.endpoint}: {_details(error)}") from None


def _runtime_image(image: pb.Image) -> RuntimeImage:
    return RuntimeImage(
        id=image.id,
        repo_tags=tuple(image.repo_tags),
        repo_digests=tuple(image.repo_digests),
        size=int(image.size),
    )


def _classify(error: grpc.RpcError) -> FailureKind:
    code = error.code() if hasattr(error, "code") else None
    if code in _PERMANENT_CODES:
        return FailureKind.PERMANENT
    if code == grpc.StatusCode.UNKNOWN:
        # containerd reports registry answers such as 404 and 401 as UNKNOWN with their text.
        return classify_text(_details(error))
    return FailureKind.TRANSIENT


def _details(error: grpc.RpcError) -> str:
    details = error.details() if hasattr(error, "details") else None
    code = error.code().name if hasattr(error, "code") and error.code() else "UNKNOWN"
    return f"{code}: {details or error}"


def _disk(mountpoints: list[str]) -> tuple[int | None, int | None]:
    """Size and free space of the image filesystem, when this process can see it mounted.

    Read now with statvfs rather than from ImageFsInfo's byte count, which lags about 10 s.
    """
    for mountpoint in mountpoints:
        try:
            stats = os.statvfs(mountpoint)
        except OSError:
            continue
        return stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize
    return None, None
