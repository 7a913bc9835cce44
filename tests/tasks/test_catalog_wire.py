"""The catalog's wire format, owned by tasks/: shared class slices, pointers, the fast path."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from tasks.bus import NatsBus
from tasks.catalog import SLICE_PREFIX, CatalogStore, UnknownNode, slice_hash
from tasks.models import ClassSlice, NodeSlice, SliceImage, SlicePointer
from tasks.names import CATALOG_BUCKET

# A value unlike the default for each type a SliceImage field may have. A field of a new type
# fails here by name, so whoever adds it teaches this test a value instead of skipping it.
SAMPLES: dict[object, object] = {
    str: "registry.example.com/team/app:1.2",
    str | None: "sha256:" + "ab" * 32,
    tuple[str, ...]: ("ns-a/pull-secret", "ns-b/other"),
    int: 7,
    int | None: 7,
    bool: True,
}


def every_field_set() -> SliceImage:
    values = {}
    for name, kind in typing.get_type_hints(SliceImage).items():
        assert kind in SAMPLES, f"tests/tasks/test_catalog_wire.py: add a sample for {kind}"
        values[name] = SAMPLES[kind]
    return SliceImage(**values)  # type: ignore[arg-type]


def test_every_field_of_the_model_survives_the_fast_path() -> None:
    image = every_field_set()
    defaults = SliceImage(image.image)
    changed = [f.name for f in dataclasses.fields(SliceImage) if f.name != "image"]
    assert all(getattr(image, name) != getattr(defaults, name) for name in changed)

    fast = ClassSlice.join([image.to_json(), defaults.to_json()])  # as the watcher writes

    assert fast == ClassSlice((image, defaults)).to_json()
    assert ClassSlice.from_json(fast).images == (image, defaults)


def test_nodes_of_one_class_share_one_stored_slice_read_once_per_reader(
    private_bus: NatsBus,
) -> None:
    catalog = CatalogStore(private_bus)
    images = (SliceImage("docker.io/library/a:1"), SliceImage("docker.io/library/b:1"))
    payload = ClassSlice(images).to_json()
    digest, _ = catalog.put_class_slice(payload)
    for node in ("n1", "n2", "n3"):
        catalog.put_pointer(SlicePointer(node, digest, len(images)))

    assert digest == slice_hash(payload)
    assert catalog.class_slices() == [digest]
    reader = CatalogStore(private_bus)
    assert reader.get_slice("n1")[0] == NodeSlice("n1", images, digest)
    # The slice is read once; later reads are the pointer's: deleting the stored slice
    # under a reader that holds it changes nothing for it, and a new reader finds it gone.
    private_bus.kv_delete(CATALOG_BUCKET, SLICE_PREFIX + digest)
    assert reader.get_slice("n2")[0] == NodeSlice("n2", images, digest)
    assert CatalogStore(private_bus).get_pointer("n3")[0].slice == digest


def test_a_whole_slice_left_by_an_older_watcher_reads_as_not_yet_in_the_catalog(
    private_bus: NatsBus,
) -> None:
    older = b'{"images":[{"digest":null,"image":"docker.io/library/a:1","pull_secrets":[]}],'
    older += b'"node":"n1"}'
    private_bus.kv_put(CATALOG_BUCKET, "nodes.n1", older)

    with pytest.raises(UnknownNode, match="older watcher"):
        CatalogStore(private_bus).get_slice("n1")
