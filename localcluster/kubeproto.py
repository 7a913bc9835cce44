"""Kubernetes protobuf request bodies read as the JSON the API double stores.

kubectl's typed commands (``kubectl create deployment``, ``create job``, ``create cronjob``) send
``Content-Type: application/vnd.kubernetes.protobuf``, and client-go does not fall back to JSON
when a server answers 415 to protobuf (it does so only for CBOR). So the double reads protobuf
bodies itself: the envelope is the 4 magic bytes ``k8s\\0`` and a ``runtime.Unknown`` holding the
apiVersion, kind and the object's own message. The messages come from Kubernetes' generated.proto
files (``k8sproto/``, see its SOURCE), compiled at first use with grpcio-tools into a descriptor
pool; no generated Python is kept. Responses stay JSON, which clients accept whatever they asked.

The JSON names are the proto field names (Kubernetes generates one from the other); a few
apimachinery types have their own JSON forms (Time, IntOrString, Quantity, raw JSON), below.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

PROTOBUF = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
PROTO_ROOT = Path(__file__).resolve().parent / "k8sproto"
_META = "k8s.io.apimachinery.pkg.apis.meta.v1"


class UnsupportedBody(ValueError):
    """A protobuf body this double cannot read; the message says what to send instead."""


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
    from grpc_tools import protoc  # a dev dependency, as is the rest of the double

    files = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "k8s.binpb"
        argv = ["protoc", f"-I{PROTO_ROOT}", "--include_imports", f"--descriptor_set_out={out}"]
        if protoc.main([*argv, *files]) != 0:
            raise RuntimeError(f"protoc could not compile {PROTO_ROOT}")
        descriptors = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in descriptors.file:
        pool.Add(file)
    return pool


def _message(full_name: str) -> Message | None:
    try:
        descriptor = _pool().FindMessageTypeByName(full_name)
    except KeyError:
        return None
    return message_factory.GetMessageClass(descriptor)()


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object of a Kubernetes protobuf body (``k8s\\0`` + runtime.Unknown)."""
    if not body.startswith(MAGIC):
        raise UnsupportedBody("a protobuf body must start with the k8s\\0 magic bytes")
    unknown = _message("k8s.io.apimachinery.pkg.runtime.Unknown")
    assert unknown is not None
    unknown.ParseFromString(body[len(MAGIC) :])
    type_meta = getattr(unknown, "typeMeta")  # noqa: B009 - a field of a runtime-built class
    api_version, kind = str(type_meta.apiVersion), str(type_meta.kind)
    group, _, version = api_version.rpartition("/")
    package = f"k8s.io.api.{group.split('.')[0] or 'core'}.{version}"
    # Option kinds (DeleteOptions, ...) travel under the resource's group but are meta/v1 types.
    message = _message(f"{package}.{kind}") or _message(f"{_META}.{kind}")
    if message is None:
        raise UnsupportedBody(
            f"this API double reads protobuf only for core/v1, apps/v1 and batch/v1, not "
            f"{api_version} {kind}: send it as JSON (e.g. kubectl create -f or apply)"
        )
    try:
        message.ParseFromString(getattr(unknown, "raw"))  # noqa: B009
    except DecodeError as exc:
        raise UnsupportedBody(f"the protobuf {kind} does not parse: {exc}") from exc
    return {"apiVersion": api_version, "kind": kind, **to_json(message)}


def to_json(message: Message) -> Any:
    """A message in Kubernetes' JSON form: set fields only, apimachinery types as JSON has them."""
    descriptor: Descriptor = message.DESCRIPTOR
    special = _SPECIAL.get(descriptor.full_name)
    if special is not None:
        return special(message)
    result: dict[str, Any] = {}
    for field, value in message.ListFields():
        converted = _field(field, value)
        # Go writes every non-pointer string, even empty, where JSON omits it: an apiserver's
        # decoding makes "" the zero value again. Zero numbers and false stay, since a pointer
        # field (replicas: 0) cannot be told from a plain one here.
        if converted is not None and converted != "":
            result[field.name] = converted
    return result


def _field(field: FieldDescriptor, value: Any) -> Any:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        return {key: _single(value_field, item) for key, item in value.items()}
    if field.is_repeated:
        return [_single(field, item) for item in value]
    return _single(field, value)


def _single(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_json(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def _time(message: Any, fraction: bool = False) -> str | None:
    if not message.seconds and not message.nanos:
        return None  # Go's zero time, which JSON writes as null
    moment = datetime.datetime.fromtimestamp(message.seconds, datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{message.nanos // 1000:06d}Z" if fraction else f"{text}Z"


def _raw_json(message: Any) -> Any:
    raw = bytes(getattr(message, "raw", b"") or getattr(message, "Raw", b""))
    return json.loads(raw) if raw else None


def _int_or_string(message: Any) -> int | str:
    return str(message.strVal) if message.type == 1 else int(message.intVal)


_SPECIAL: dict[str, Callable[[Any], Any]] = {
    f"{_META}.Time": _time,
    f"{_META}.MicroTime": functools.partial(_time, fraction=True),
    f"{_META}.Duration": lambda m: f"{m.duration / 1e9:g}s",
    f"{_META}.FieldsV1": _raw_json,
    "k8s.io.apimachinery.pkg.runtime.RawExtension": _raw_json,
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": _int_or_string,
    "k8s.io.apimachinery.pkg.api.resource.Quantity": lambda m: str(m.string),
}
