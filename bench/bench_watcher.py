"""The watcher's hot path at 10,000 and 100,000 pods: events per second and peak memory.

    python bench/bench_watcher.py [--sizes 10000 100000] [--baseline-sample 2000]

Why: a watcher sees every pod of the cluster, first as one big list, then as a stream of watch
events (most of them status updates). If it keeps whole objects (typed client models, as an
informer cache does) its memory grows with object sizes; if it is slow, a rollout in a large
cluster leaves it minutes behind. Targets: at least 5,000 events/s on one core and at most
300 MB peak RSS at 100,000 pods.

What runs: for each size, a fresh child process (so its peak RSS is its own) feeds pods as the
API sends them, raw JSON in list pages of 500 and watch lines in ~16 KiB chunks, through the
watcher's real code: :class:`watcher.reflector.Reflector` (paging, line splitting, JSON,
summaries), :class:`watcher.catalog.CatalogState` (batches of 2,000 events) and
:class:`watcher.slices.SliceIndex` (50 nodes in 3 classes). Every pod is a bare pod (no
owner), the worst case: owned pods are skipped right after their metadata is read. Pods are
~3 KiB of JSON like a real apiserver's (labels, annotations, managedFields, status), using
2,000 distinct images, a third of them with a node selector or a toleration. The watch phase
has as many events as pods: 80 % status updates, 10 % new pods, 10 % deletions. NATS and the
broker are left out: their writes depend on catalog changes, not on events.

Baseline, in the same run: the same pods deserialized into the official client's typed models
(``V1PodList``), as a watcher built on ``kubernetes.watch`` with typed objects would, on a
sample and extrapolated linearly (time with tracemalloc off, memory from tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAGE = 500
CHUNK = 16 * 1024
BATCH = 2000
IMAGES = 2000
NODES = 50
TARGET_EVENTS_PER_SECOND = 5000
TARGET_RSS_MB = 300
SERIALIZE_SAMPLE = 50


def pod(i: int, rv: int, phase: str = "Running") -> dict[str, Any]:
    """Pod ``i`` as the apiserver sends it."""
    name = f"app-{i % 977}-{i}"
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "image": f"registry.example.com/team-{i % 40}/service-{i % IMAGES}:v{i % 7}",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": f"VAR_{k}", "value": f"value-{k}"} for k in range(4)],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "imagePullPolicy": "IfNotPresent",
            },
            {"name": "proxy", "image": "docker.io/envoyproxy/envoy:v1.29.1"},
        ],
        "volumes": [{"name": "data", "emptyDir": {}}],
        "restartPolicy": "Always",
        "serviceAccountName": "default",
        "nodeName": f"node-{i % NODES}",
        "imagePullSecrets": [{"name": "regcred"}],
    }
    if i % 5 == 0:
        spec["initContainers"] = [{"name": "migrate", "image": f"registry.example.com/m:{i % 50}"}]
    if i % 3 == 1:
        spec["nodeSelector"] = {"kubernetes.io/arch": "arm64"}
    elif i % 3 == 2:
        spec["tolerations"] = [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": f"ns-{i % 20}",
            "uid": f"00000000-0000-0000-0000-{i:012d}",
            "resourceVersion": str(rv),
            "creationTimestamp": "2026-11-25T10:00:00Z",
            "labels": {"app": f"app-{i % 977}", "tier": "web", "pod-template-hash": "5d8f7c"},
            "annotations": {
                "prometheus.io/scrape": "true",
                "kubectl.kubernetes.io/restartedAt": "",
            },
            "managedFields": [
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-11-25T10:00:05Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}}},
                    "subresource": "status",
                }
            ],
        },
        "spec": spec,
        "status": {
            "phase": phase,
            "hostIP": f"10.0.{i % 250}.{i % 200}",
            "podIP": f"10.1.{i % 250}.{i % 200}",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-11-25T10:00:05Z"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": "main",
                    "ready": True,
                    "restartCount": 0,
                    "image": f"registry.example.com/team-{i % 40}/service-{i % IMAGES}:v{i % 7}",
                    "imageID": "registry.example.com/x@sha256:" + "ab" * 32,
                    "containerID": "containerd://" + "cd" * 32,
                    "state": {"running": {"startedAt": "2026-11-25T10:00:04Z"}},
                }
            ],
        },
    }


class Renderer:
    """Pod JSON from one pre-rendered template per shape, so that feeding costs a few
    microseconds per pod and the figures measure the watcher, not the generator."""

    FIELDS = (
        "name",
        "namespace",
        "uid",
        "rv",
        "phase",
        "app",
        "image",
        "init",
        "node",
        "ip",
        "pod_ip",
    )

    def __init__(self) -> None:
        self._templates = {shape: self._template(shape) for shape in range(15)}

    def _template(self, shape: int) -> str:
        text = json.dumps(pod(shape, 0)).replace("%", "%%")
        sample = self._values(shape, 0, "Running")
        for field in self.FIELDS:
            text = text.replace(json.dumps(str(sample[field])), f'"%({field})s"')
        return text

    @staticmethod
    def _values(i: int, rv: int, phase: str) -> dict[str, object]:
        return {
            "name": f"app-{i % 977}-{i}",
            "namespace": f"ns-{i % 20}",
            "uid": f"00000000-0000-0000-0000-{i:012d}",
            "rv": str(rv),
            "phase": phase,
            "app": f"app-{i % 977}",
            "image": f"registry.example.com/team-{i % 40}/service-{i % IMAGES}:v{i % 7}",
            "init": f"registry.example.com/m:{i % 50}",
            "node": f"node-{i % NODES}",
            "ip": f"10.0.{i % 250}.{i % 200}",
            "pod_ip": f"10.1.{i % 250}.{i % 200}",
        }

    def __call__(self, i: int, rv: int, phase: str = "Running") -> str:
        return self._templates[i % 15] % self._values(i, rv, phase)


def list_pages(size: int, render: Renderer) -> Iterator[bytes]:
    for start in range(0, size, PAGE):
        stop = min(size, start + PAGE)
        meta = {"resourceVersion": str(size), "continue": str(stop) if stop < size else ""}
        items = ",".join(render(i, i + 1) for i in range(start, stop))
        yield f'{{"kind":"PodList","metadata":{json.dumps(meta)},"items":[{items}]}}'.encode()


def watch_lines(size: int, render: Renderer) -> Iterator[bytes]:
    """``size`` events: 80 % status updates, 10 % new pods, 10 % deletions."""
    kinds = ("MODIFIED",) * 8 + ("ADDED", "DELETED")
    for n in range(size):
        event = kinds[n % 10]
        i = size + n if event == "ADDED" else (n * 7919) % size
        phase = "Succeeded" if event == "DELETED" else "Running"
        line = f'{{"type":"{event}","object":{render(i, size + n + 1, phase)}}}\n'
        yield line.encode()


class FakeResponse:
    """What the official client returns with _preload_content=False, fed from generators."""

    def __init__(self, pages: Iterator[bytes] | None = None, lines: Iterator[bytes] | None = None):
        self._pages, self._lines = pages, lines

    @property
    def data(self) -> bytes:
        assert self._pages is not None
        return next(self._pages)

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        chunk = bytearray()
        for line in self._lines or ():
            chunk += line
            if len(chunk) >= CHUNK:
                yield bytes(chunk)
                chunk.clear()
        if chunk:
            yield bytes(chunk)

    def release_conn(self) -> None:
        """Nothing to release: there is no connection."""


def child(size: int) -> dict[str, float]:
    """Run the watcher's path over ``size`` pods in this process; return the figures."""
    from tasks.settings import WatchSettings
    from watcher.catalog import CatalogState
    from watcher.reflector import Event, Listed, Reflector
    from watcher.slices import SliceIndex
    from watcher.targeting import node_facts
    from watcher.workloads import Summarizer

    settings = WatchSettings(catalog_grace_period=600)
    state = CatalogState(settings)
    index = SliceIndex(state)
    batch: list[Event] = []
    # Three classes: amd64, arm64, and amd64 tainted for batch.
    nodes = {f"node-{n}": node_facts(_node(n)) for n in range(NODES)}

    def flush() -> None:
        index.update(state.apply(batch))
        batch.clear()

    def sink(event: Event) -> None:
        batch.append(event)
        if len(batch) >= BATCH:
            flush()

    index.update(state.apply([Listed("Node", None, nodes)]), rebuild=True)
    render = Renderer()
    pages = list_pages(size, render)
    lines = watch_lines(size, render)

    def list_fn(**kwargs: Any) -> FakeResponse:
        return FakeResponse(lines=lines) if kwargs.get("watch") else FakeResponse(pages=pages)

    summarizer = Summarizer(settings)
    reflector = Reflector("Pod", list_fn, lambda obj: summarizer.workload("Pod", obj), sink)
    rss_before = _rss_mb()
    started = time.perf_counter()
    reflector.resource_version = reflector._list()
    flush()
    listed = time.perf_counter()
    reflector._watch()
    flush()
    watched = time.perf_counter()
    return {
        "size": size,
        "list_seconds": listed - started,
        "watch_seconds": watched - listed,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _rss_mb(),
        "workloads": len(state.workloads),
        "images": len(state.images),
        "classes": index.class_count,
    }


def targeting(nodes: int, pinned: int) -> dict[str, float]:
    """Node classes at ``nodes`` nodes x IMAGES images, with ``pinned`` workloads pinned to a
    node by hostname (which makes every node its own class: the worst case)."""
    from tasks.catalog import slice_hash
    from tasks.models import ClassSlice, SlicePointer
    from tasks.settings import WatchSettings
    from watcher.catalog import CatalogState
    from watcher.reflector import Changed, Listed
    from watcher.slices import SliceIndex
    from watcher.targeting import node_facts
    from watcher.workloads import Summarizer

    state = CatalogState(WatchSettings())
    index = SliceIndex(state)
    summarize = Summarizer(WatchSettings())
    facts = {f"node-{n}": node_facts(_pool_node(n)) for n in range(nodes)}
    workloads = {
        f"ns/w{i}": summarize.workload("Deployment", _placed(i, f"registry.example.com/s{i}:1"))
        for i in range(IMAGES)
    }
    for i in range(pinned):
        pin = {"kubernetes.io/hostname": f"node-{i}"}
        obj = _placed(0, f"registry.example.com/pinned{i}:1", pin)
        workloads[f"ns/pinned{i}"] = summarize.workload("Deployment", obj)
    started = time.perf_counter()
    index.update(
        state.apply([Listed("Node", None, facts), Listed("Deployment", None, workloads)]),
        rebuild=True,
    )
    built = time.perf_counter()
    hashes: dict[int, str] = {}  # as the dispatcher writes a full rewrite: a slice per class
    payload = 0
    for name in facts:
        members = index.members(name)
        if members not in hashes:
            class_slice = index.slice_json(members)
            hashes[members] = slice_hash(class_slice)
            payload += len(class_slice)
        payload += len(SlicePointer(name, hashes[members], members.bit_count()).to_json())
    serialized = time.perf_counter()
    sample = list(facts)[:SERIALIZE_SAMPLE]  # baseline: ClassSlice.to_json() per node
    for name in sample:
        ClassSlice(index.slice_images(index.members(name))).to_json()
    per_node = (time.perf_counter() - serialized) / len(sample)
    serialized = time.perf_counter()
    new = summarize.workload("Deployment", _placed(2, "registry.example.com/new:1"))
    affected = index.update(state.apply([Changed("Deployment", "ns/new", new)]))
    one_image = time.perf_counter()
    joining = node_facts(_pool_node(nodes))
    index.update(state.apply([Changed("Node", joining.name, joining)]))
    joined = time.perf_counter()
    return {
        "classes": index.class_count,
        "build_seconds": built - started,
        "serialize_seconds": serialized - built - per_node * len(sample),
        "per_node_seconds": per_node * nodes,
        "slice_mb": payload / 2**20,
        "new_image_ms": (one_image - serialized) * 1000,
        "affected": len(affected),
        "join_ms": (joined - one_image) * 1000,
        "peak_rss_mb": _rss_mb(),
    }


def _pool_node(n: int) -> dict[str, Any]:
    """A node of a 4-pool cluster, with the per-node labels real nodes carry."""
    pool = ("general", "memory", "gpu", "edge")[n % 4]
    labels = {
        "kubernetes.io/arch": "arm64" if pool == "edge" else "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": f"node-{n}",
        "topology.kubernetes.io/zone": f"zone-{n % 3}",
        "node.kubernetes.io/instance-type": f"type-{n % 4}",
        "pool": pool,
    }
    taints = [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}] if pool == "gpu" else []
    return {"metadata": {"name": f"node-{n}", "labels": labels}, "spec": {"taints": taints}}


def _placed(i: int, image: str, selector: dict[str, str] | None = None) -> dict[str, Any]:
    """A Deployment whose placement is one of six shapes, by ``i``."""
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": image}]}
    shape = i % 6
    if selector:
        spec["nodeSelector"] = selector
    elif shape == 1:
        spec["nodeSelector"] = {"kubernetes.io/arch": "arm64"}
    elif shape == 2:
        spec["nodeSelector"] = {"pool": "memory"}
    elif shape == 3:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    elif shape == 4:
        zones = {"key": "topology.kubernetes.io/zone", "operator": "NotIn", "values": ["zone-0"]}
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [zones]}]
                }
            }
        }
    meta = {"name": f"w{i}", "namespace": "ns"}
    return {"metadata": meta, "spec": {"template": {"spec": spec}}}


def _node(n: int) -> dict[str, Any]:
    arch = "arm64" if n % 3 == 1 else "amd64"
    taints = [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}] if n % 3 == 2 else []
    labels = {"kubernetes.io/arch": arch, "kubernetes.io/hostname": f"node-{n}"}
    return {"metadata": {"name": f"node-{n}", "labels": labels}, "spec": {"taints": taints}}


def baseline(sample: int) -> dict[str, float]:
    """Typed deserialization (V1PodList) of ``sample`` pods: seconds and bytes per pod."""
    from kubernetes import client

    api = client.ApiClient()
    body = json.dumps(
        {"kind": "PodList", "metadata": {}, "items": [pod(i, i) for i in range(sample)]}
    )

    started = time.perf_counter()
    api.deserialize(body, "V1PodList", "application/json")
    seconds = time.perf_counter() - started
    tracemalloc.start()
    kept = api.deserialize(body, "V1PodList", "application/json")
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return {"seconds_per_pod": seconds / sample, "bytes_per_pod": size / sample}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--baseline-sample", type=int, default=2000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, default=5000, help="nodes for the targeting run")
    parser.add_argument("--targeting-child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.targeting_child:
        print(json.dumps(targeting(*args.targeting_child)))
        return 0
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    if args.baseline_child:
        print(json.dumps(baseline(args.baseline_child)))
        return 0
    base = _in_child("--baseline-child", args.baseline_sample)
    print(f"watcher path: Reflector + summaries + CatalogState + SliceIndex, {NODES} nodes")
    print(
        f"baseline: official client typed models (V1PodList), {args.baseline_sample} pods "
        "sampled, extrapolated"
    )
    print()
    header = f"{'pods':>8} {'events':>8} {'list/s':>9} {'watch/s':>9} {'all/s':>9} "
    header += f"{'peak RSS':>9} {'start RSS':>9} | {'typed/s':>8} {'typed mem':>10}"
    print(header)
    ok = True
    for size in args.sizes:
        got = _in_child("--child", size)
        events = 2 * size
        rate = events / (got["list_seconds"] + got["watch_seconds"])
        typed_rate = 1 / base["seconds_per_pod"]
        typed_mb = base["bytes_per_pod"] * size / 2**20
        print(
            f"{size:>8} {events:>8} {size / got['list_seconds']:>9.0f} "
            f"{size / got['watch_seconds']:>9.0f} {rate:>9.0f} {got['peak_rss_mb']:>7.0f}MB "
            f"{got['rss_before_mb']:>7.0f}MB | {typed_rate:>8.0f} {typed_mb:>8.0f}MB"
        )
        ok &= rate >= TARGET_EVENTS_PER_SECOND and got["peak_rss_mb"] <= TARGET_RSS_MB
    print()
    print(
        f"targets: >= {TARGET_EVENTS_PER_SECOND} events/s on one core, <= {TARGET_RSS_MB} MB "
        f"peak RSS at 100,000 pods: {'met' if ok else 'NOT met'}"
    )
    print("typed mem: the typed objects alone (tracemalloc), on top of the process's own RSS")
    print()
    print_targeting(args.nodes)
    return 0 if ok else 1


def print_targeting(nodes: int) -> None:
    print(f"targeting: {nodes} nodes (4 pools, 3 zones, unique hostnames) x {IMAGES} images")
    print(
        f"{'pinned':>7} {'classes':>8} {'build':>8} {'slices':>8} {'per node':>9} "
        f"{'slice KV':>9} {'+1 image':>9} {'nodes hit':>9} {'+1 node':>8} {'peak RSS':>9}"
    )
    for pinned in (0, 1):
        got = _in_child("--targeting-child", nodes, pinned)
        print(
            f"{pinned:>7} {got['classes']:>8.0f} {got['build_seconds']:>7.2f}s "
            f"{got['serialize_seconds']:>7.2f}s {got['per_node_seconds']:>8.1f}s "
            f"{got['slice_mb']:>7.0f}MB {got['new_image_ms']:>7.1f}ms {got['affected']:>9.0f} "
            f"{got['join_ms']:>6.1f}ms {got['peak_rss_mb']:>7.0f}MB"
        )
    print("pinned: workloads pinned to one node by hostname (each node becomes its own class)")
    print("slices: serializing every node's slice for a full KV rewrite, once per distinct slice")
    print(f"per node: baseline, ClassSlice.to_json() for each node ({SERIALIZE_SAMPLE} sampled)")
    print("slice KV: bytes a full rewrite sends to NATS, a slice per class and a pointer per node")


def _in_child(flag: str, *values: int) -> dict[str, float]:
    """Run one measurement in a fresh interpreter, so its peak RSS is its own."""
    argv = [sys.executable, __file__, flag, *map(str, values)]
    answer = subprocess.run(argv, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(answer.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    sys.exit(main())
