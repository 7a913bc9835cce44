"""Two containerds side by side: an image pulled through CRI on one is not on the other."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from localcluster import Containerd, Registry, push_image

FieldType = descriptor_pb2.FieldDescriptorProto


def cri_messages() -> dict[str, Any]:
    """The few CRI v1 messages the test sends, with upstream names and field numbers.

    They live in a private descriptor pool: the worker's own generated runtime.v1 stubs may be
    loaded in the same pytest process, and the default pool refuses a second runtime.v1.
    """
    proto = descriptor_pb2.FileDescriptorProto(
        name="localcluster_test_cri.proto", package="runtime.v1", syntax="proto3"
    )
    string, uint64 = FieldType.TYPE_STRING, FieldType.TYPE_UINT64
    spec = proto.message_type.add(name="ImageSpec")
    spec.field.add(name="image", number=1, type=string, label=FieldType.LABEL_OPTIONAL)
    image = proto.message_type.add(name="Image")
    image.field.add(name="id", number=1, type=string, label=FieldType.LABEL_OPTIONAL)
    image.field.add(name="repo_tags", number=2, type=string, label=FieldType.LABEL_REPEATED)
    image.field.add(name="size", number=4, type=uint64, label=FieldType.LABEL_OPTIONAL)
    for name, field, type_name in [
        ("PullImageRequest", "image", ".runtime.v1.ImageSpec"),
        ("ImageStatusRequest", "image", ".runtime.v1.ImageSpec"),
        ("ImageStatusResponse", "image", ".runtime.v1.Image"),
    ]:
        message = proto.message_type.add(name=name)
        message.field.add(
            name=field,
            number=1,
            type=FieldType.TYPE_MESSAGE,
            type_name=type_name,
            label=FieldType.LABEL_OPTIONAL,
        )
    response = proto.message_type.add(name="PullImageResponse")
    response.field.add(name="image_ref", number=1, type=string, label=FieldType.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        message.name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"runtime.v1.{message.name}")
        )
        for message in proto.message_type
    }


class CRIImages:
    """PullImage and ImageStatus over a containerd socket, as kubelet calls them."""

    messages = cri_messages()

    def __init__(self, node: Containerd) -> None:
        self.channel = grpc.insecure_channel(node.endpoint)

    def _call(self, method: str, request: Any, response: str) -> Any:
        rpc = self.channel.unary_unary(
            f"/runtime.v1.ImageService/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self.messages[response].FromString,
        )
        return rpc(request, timeout=60)

    def pull(self, ref: str) -> str:
        spec = self.messages["ImageSpec"](image=ref)
        request = self.messages["PullImageRequest"](image=spec)
        return str(self._call("PullImage", request, "PullImageResponse").image_ref)

    def status(self, ref: str) -> Any | None:
        """The image, or None: CRI answers an empty response, not NOT_FOUND, when absent."""
        spec = self.messages["ImageSpec"](image=ref)
        request = self.messages["ImageStatusRequest"](image=spec)
        reply = self._call("ImageStatus", request, "ImageStatusResponse")
        return reply.image if reply.HasField("image") else None


def containerd_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "containerd"], capture_output=True, text=True).stdout
    return {int(pid) for pid in out.split()}


def mounts_under(path: Path) -> list[str]:
    prefix = f"{os.path.realpath(path)}/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def test_two_nodes_have_separate_sockets_and_images(
    two_nodes: tuple[Containerd, Containerd], registry: Registry
) -> None:
    node_a, node_b = two_nodes
    assert node_a.socket != node_b.socket
    assert node_a.socket.is_socket() and node_b.socket.is_socket()
    image = push_image(registry.host, "test/app", "v1", size_mib=2, layers=2)

    cri_a, cri_b = CRIImages(node_a), CRIImages(node_b)
    image_id = cri_a.pull(image.ref)

    status = cri_a.status(image.ref)
    assert status is not None and status.id == image_id
    assert image.ref in status.repo_tags
    assert cri_b.status(image.ref) is None
    assert image.ref in node_a.image_refs()
    assert image.ref not in node_b.image_refs()


def test_ctr_pulls_over_plain_http(
    two_nodes: tuple[Containerd, Containerd], registry: Registry
) -> None:
    _, node_b = two_nodes
    image = push_image(registry.host, "test/other", "v1", size_mib=0.5)
    proc = node_b.ctr("images", "pull", "--plain-http", image.ref)
    assert proc.returncode == 0, proc.stderr
    assert image.ref in node_b.image_refs()
    assert CRIImages(node_b).status(image.ref) is not None


def test_stop_leaves_no_process_and_no_mount(
    system_packages: None, short_dir: Path, registry: Registry
) -> None:
    before = containerd_pids()
    node = Containerd(short_dir, "n", insecure_registries=[registry.host]).start()
    assert node.pid in containerd_pids()
    CRIImages(node).pull(push_image(registry.host, "test/app", "v1", size_mib=0.5).ref)
    # Stands for an overlay a killed unpack would leave behind.
    leftover = node.root / "leftover"
    leftover.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(leftover)], check=True)
    assert mounts_under(short_dir) == [str(leftover)]

    node.stop()
    node.stop()

    assert not node.running()
    assert containerd_pids() - before == set()
    assert mounts_under(short_dir) == []


def test_too_long_socket_path_is_refused() -> None:
    with pytest.raises(ValueError, match="107-byte limit"):
        Containerd(Path("/tmp") / ("x" * 100), "node")
