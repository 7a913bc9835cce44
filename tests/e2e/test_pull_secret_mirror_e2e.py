"""A private image warm through a mirrored pull secret, end to end.

A real registry with htpasswd auth refuses anonymous pulls; a Deployment in namespace A names
its pull secret there. The product's own processes (watcher, one worker per node, real
containerd) run with their defaults but for the release namespace and the mirror namespace, as
the chart sets them: the image must become warm on every node (read through CRI), the watcher's
copy must appear in the mirror namespace and be the only Secret the workers read (the API
double's request log), no part may touch a Secret of the release namespace (where the chart's
own passwords are), and the copy must go when the Deployment does.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client

from localcluster import Registry, push_image
from localcluster.manifests import deployment
from localcluster.services import NatsServer, RedisServer
from tasks.names import mirrored_secret_name
from worker.runtime._cri import api_pb2 as pb
from worker.runtime._cri import api_pb2_grpc as rpc

from .conftest import SimCluster, run_cluster, wait_for

RELEASE = "warm-system"
MIRROR = f"{RELEASE}-pull-secrets"  # the chart's default mirror namespace for this release
TEAM = "team-a"
USER, PASSWORD = "puller", f"pw-{uuid.uuid4().hex[:10]}"
WARM_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def private_registry(workdir: Path) -> Iterator[Registry]:
    with Registry(workdir / f"private-{uuid.uuid4().hex[:4]}", htpasswd={USER: PASSWORD}) as reg:
        yield reg


@pytest.fixture(scope="module")
def private_cluster(
    workdir: Path, redis_server: RedisServer, private_registry: Registry
) -> Iterator[SimCluster]:
    """Its own NATS: the watcher deletes catalog keys of nodes it does not know."""
    with (
        NatsServer(workdir / f"nats-{uuid.uuid4().hex[:6]}") as nats,
        run_cluster(
            workdir,
            private_registry,
            f"{redis_server.url}/3",
            nats.url,
            WARM_POD_NAMESPACE=RELEASE,
            WARM_PULL_SECRET_NAMESPACE=MIRROR,
        ) as cluster,
    ):
        yield cluster


def registry_secret(host: str) -> client.V1Secret:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": auth}}}).encode()
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name="regcred", namespace=TEAM),
        type="kubernetes.io/dockerconfigjson",
        data={".dockerconfigjson": base64.b64encode(config).decode()},
    )


def raw_private_pull(cluster: SimCluster, host: str) -> float:
    """The baseline: one CRI PullImage with the credentials, of an image of the same size
    (htpasswd's bcrypt check on every registry request dominates), no product involved."""
    other = push_image(host, f"team/raw-{uuid.uuid4().hex[:6]}", "v1", auth=(USER, PASSWORD))
    channel = grpc.insecure_channel(next(iter(cluster.nodes.values())).endpoint)
    request = pb.PullImageRequest(
        image=pb.ImageSpec(image=other.ref), auth=pb.AuthConfig(username=USER, password=PASSWORD)
    )
    started = time.monotonic()
    rpc.ImageServiceStub(channel).PullImage(request, timeout=120)
    channel.close()
    return time.monotonic() - started


def test_a_private_image_is_warmed_through_the_mirrored_secret_which_goes_with_the_workload(
    private_cluster: SimCluster, private_registry: Registry
) -> None:
    cluster, host = private_cluster, private_registry.host
    image = push_image(host, f"team/app-{uuid.uuid4().hex[:6]}", "v1", auth=(USER, PASSWORD))
    probe = next(iter(cluster.probes.values()))
    with pytest.raises(grpc.RpcError, match=r"401|nauthorized"):
        probe.pull(image.ref)  # anonymous: refused, so a warm image proves the secret was used
    core, apps = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api)
    cluster.api.user_agent = "the-test"
    core.create_namespaced_secret(TEAM, registry_secret(host))
    app = deployment("app", image.ref, replicas=0, namespace=TEAM)
    app["spec"]["template"]["spec"]["imagePullSecrets"] = [{"name": "regcred"}]
    copy = mirrored_secret_name(f"{TEAM}/regcred")

    apps.create_namespaced_deployment(TEAM, app)

    warm_seconds = wait_for(
        lambda: all(image.ref in p.tags() for p in cluster.probes.values()),
        WARM_TIMEOUT,
        "the private image on every node",
        cluster,
    )
    mirrored: Any = core.read_namespaced_secret(copy, MIRROR)
    assert mirrored.data == core.read_namespaced_secret("regcred", TEAM).data
    assert mirrored.metadata.annotations["warm-images.io/source-namespace"] == TEAM
    assert core.list_namespaced_secret(RELEASE).items == []
    product = [r for r in cluster.kube.requests("secrets") if r.user_agent != "the-test"]
    assert not [r for r in product if r.namespace == RELEASE]
    worker_reads = [r for r in product if r.verb == "get" and r.namespace == MIRROR]
    assert worker_reads and {r.name for r in worker_reads} == {copy}
    assert {(r.verb, r.namespace) for r in product if r.namespace != MIRROR} == {("get", TEAM)}

    apps.delete_namespaced_deployment("app", TEAM)

    def copy_gone() -> bool:
        found: list[Any] = core.list_namespaced_secret(MIRROR).items
        return copy not in {s.metadata.name for s in found}

    gone_seconds = wait_for(copy_gone, WARM_TIMEOUT, "the copy deleted with the workload", cluster)
    print(f"\nprivate image warm on {len(cluster.nodes)} nodes {warm_seconds:.2f}s after create")
    print(f"raw authenticated CRI pull of another one: {raw_private_pull(cluster, host):.2f}s")
    print(f"mirrored pull secret deleted {gone_seconds:.2f}s after the Deployment")
    assert core.read_namespaced_secret("regcred", TEAM)  # the source is not the product's
