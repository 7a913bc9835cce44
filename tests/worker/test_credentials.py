"""Private registries: credentials from a pull secret in the API, or from the node's file.

A real registry with htpasswd auth refuses anonymous pulls; the worker reads the
``kubernetes.io/dockerconfigjson`` secret named in the catalog (the watcher's copy in the mirror
namespace) from the Kubernetes API double at pull time and pulls through containerd with it.
The password must never reach NATS, and no name outside the catalog's copies is ever read: not
one a task message carries, not one outside the mirror namespace (the release's included).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from worker_testing import MakeAgent, payloads_of

from localcluster import Containerd, FakeKubeAPI, Registry, push_image
from localcluster.harness import WARM_TIMEOUT, Events, start_worker, wait_for
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from tasks.images import parse_image
from tasks.models import NodeSlice, Outcome, SliceImage
from tasks.names import PULL_IMAGE, STATUS_BUCKET, mirrored_secret_name, pull_events_subject
from worker.credentials import match

USER, PASSWORD = "alice", f"s3cret-{uuid.uuid4().hex[:8]}"
MIRROR = "warm-pull-secrets"  # WARM_PULL_SECRET_NAMESPACE of the worker process below


@pytest.fixture(scope="module")
def private_registry(workdir: Path, node: Containerd) -> Iterator[Registry]:
    with Registry(workdir / "private", htpasswd={USER: PASSWORD}) as running:
        node.add_insecure_registry(running.host)
        yield running


@pytest.fixture(scope="module")
def kube(workdir: Path) -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def kubeconfig(kube: FakeKubeAPI, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = kube.write_kubeconfig(workdir / f"kubeconfig-{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


def docker_config(host: str, user: str = USER, password: str = PASSWORD) -> dict[str, object]:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"auths": {f"http://{host}": {"auth": auth}}}


def create_pull_secret(
    kube: FakeKubeAPI, name: str, config: dict[str, object], namespace: str = "default"
) -> str:
    """A registry Secret as the watcher mirrors it: its copy of source ``team/<name>``, in the
    mirror namespace (the settings' default, "default"); returns the name the catalog uses."""
    data: dict[str, bytes | str] = {
        ".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()
    }
    copy = mirrored_secret_name(f"team/{name}")
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name=copy, namespace=namespace),
        type="kubernetes.io/dockerconfigjson",
        data=data,
    )
    api = kube.api_client()
    api.user_agent = "the-test"
    client.CoreV1Api(api).create_namespaced_secret(namespace, secret)
    return f"{namespace}/{copy}"


def test_a_private_image_is_pulled_with_the_secret_named_in_the_catalog(
    make_agent: MakeAgent,
    private_registry: Registry,
    kube: FakeKubeAPI,
    kubeconfig: Path,
    bus: NatsBus,
    node_name: str,
    node: Containerd,
    events: Events,
) -> None:
    image = push_image(private_registry.host, "team/private", "v1", auth=(USER, PASSWORD))
    secret = create_pull_secret(
        kube, f"regcred-{uuid.uuid4().hex[:6]}", docker_config(private_registry.host)
    )
    agent, _ = make_agent()

    anonymous = agent.pull_entry(SliceImage(image.ref))
    CatalogStore(bus).put_slice(NodeSlice(node_name, (SliceImage(image.ref, (secret,)),)))
    with_secret = agent.pull(image.ref)  # as a pull task sends it: secrets come from the catalog

    assert anonymous.outcome is Outcome.FAILED
    assert "unauthorized" in anonymous.reason.lower() or "401" in anonymous.reason
    assert with_secret.outcome is Outcome.PULLED
    assert image.ref in node.image_refs()
    events.wait_for(lambda: len(events.received) >= 2, 10, "both pull events")
    status = bus.kv_get(STATUS_BUCKET, node_name)
    assert status is not None
    for published in (payloads_of(events), status[0].decode()):
        assert PASSWORD not in published


def test_each_matching_secret_is_tried_until_one_is_accepted(
    make_agent: MakeAgent, private_registry: Registry, kube: FakeKubeAPI, kubeconfig: Path
) -> None:
    image = push_image(private_registry.host, "team/rotated", "v1", auth=(USER, PASSWORD))
    host = private_registry.host
    stale = create_pull_secret(kube, f"old-{uuid.uuid4().hex[:6]}", docker_config(host, USER, "x"))
    fresh = create_pull_secret(kube, f"new-{uuid.uuid4().hex[:6]}", docker_config(host))
    agent, runtime = make_agent()

    result = agent.pull_entry(SliceImage(image.ref, (stale, fresh)))

    assert result.outcome is Outcome.PULLED
    assert runtime.pulls == [image.ref, image.ref]  # refused with the stale one, then accepted


def test_a_missing_secret_means_an_anonymous_pull_not_a_crash(
    make_agent: MakeAgent, private_registry: Registry, kubeconfig: Path
) -> None:
    image = push_image(private_registry.host, "team/other", "v1", auth=(USER, PASSWORD))
    agent, _ = make_agent()

    result = agent.pull_entry(SliceImage(image.ref, (f"default/{mirrored_secret_name('x/gone')}",)))

    assert result.outcome is Outcome.FAILED  # unauthorized: permanent, reported once


def test_a_refused_image_is_tried_again_once_its_pull_secret_is_fixed(
    make_agent: MakeAgent,
    private_registry: Registry,
    kube: FakeKubeAPI,
    kubeconfig: Path,
    bus: NatsBus,
    node_name: str,
) -> None:
    """A wrong password fails for good; re-warms leave the image alone until the watcher's
    copy holds another password, then the next re-warm pulls it."""
    image = push_image(private_registry.host, "team/fixed", "v1", auth=(USER, PASSWORD))
    host = private_registry.host
    copy = create_pull_secret(kube, f"w-{uuid.uuid4().hex[:6]}", docker_config(host, USER, "x"))
    CatalogStore(bus).put_slice(NodeSlice(node_name, (SliceImage(image.ref, (copy,)),)))
    agent, runtime = make_agent()

    refused = agent.rewarm(0, [])
    skipped = agent.rewarm(0, [])
    pulls_while_wrong = len(runtime.pulls)
    core = client.CoreV1Api(kube.api_client())
    namespace, _, name = copy.partition("/")
    fixed = core.read_namespaced_secret(name, namespace)
    auth = base64.b64encode(json.dumps(docker_config(host)).encode()).decode()
    fixed.data = {".dockerconfigjson": auth}
    core.replace_namespaced_secret(name, namespace, fixed)  # as the watcher follows its source
    retried = agent.rewarm(0, [])

    assert image.ref in refused.failed and "unauthorized" in refused.failed[image.ref].lower()
    assert "not retried" in skipped.failed[image.ref]
    assert pulls_while_wrong == 1
    assert retried.pulled == 1 and not retried.failed


def test_only_copies_in_the_mirror_namespace_are_read(
    make_agent: MakeAgent, private_registry: Registry, kube: FakeKubeAPI, kubeconfig: Path
) -> None:
    image = push_image(private_registry.host, "team/elsewhere", "v1", auth=(USER, PASSWORD))
    host = private_registry.host
    elsewhere = create_pull_secret(kube, f"a-{uuid.uuid4().hex[:6]}", docker_config(host), "apps")
    release_secret = f"default/release-secret-{uuid.uuid4().hex[:6]}"  # not a copy
    agent, _ = make_agent()
    before = len(kube.requests("secrets"))

    result = agent.pull_entry(SliceImage(image.ref, (elsewhere, release_secret)))

    assert result.outcome is Outcome.FAILED  # neither was read: an anonymous pull, refused
    assert kube.requests("secrets")[before:] == []


def test_a_task_message_naming_a_secret_does_not_make_the_worker_read_it(
    private_registry: Registry,
    kube: FakeKubeAPI,
    kubeconfig: Path,
    node: Containerd,
    redis_server: RedisServer,
    nats_server: NatsServer,
    bus: NatsBus,
    workdir: Path,
) -> None:
    """A real worker process and a real Celery message, as Flower or anyone on the broker
    could send it; the API double's request log shows which Secrets the worker asked for."""
    host = private_registry.host
    image = push_image(host, f"team/msg-{uuid.uuid4().hex[:6]}", "v1", auth=(USER, PASSWORD))
    config = docker_config(host)
    copy = create_pull_secret(kube, f"c-{uuid.uuid4().hex[:6]}", config, MIRROR)
    named = create_pull_secret(kube, f"n-{uuid.uuid4().hex[:6]}", config, "other")
    # Even a copy in the mirror namespace is not read because a message names it.
    other_copy = create_pull_secret(kube, f"o-{uuid.uuid4().hex[:6]}", config, MIRROR)
    # Nor, though the catalog names it, one in the release namespace, where the release's own
    # Secrets are (WARM_PULL_SECRET_NAMESPACE, not WARM_POD_NAMESPACE, is the boundary).
    in_release = create_pull_secret(kube, f"r-{uuid.uuid4().hex[:6]}", config, "warm")
    before = len(kube.requests("secrets"))  # the module's API double served earlier tests too
    worker = start_worker(
        node.endpoint,
        redis_server,
        nats_server,
        workdir / "logs",
        KUBECONFIG=str(kubeconfig),
        WARM_POD_NAMESPACE="warm",
        WARM_PULL_SECRET_NAMESPACE=MIRROR,
    )
    events = Events.follow(bus, pull_events_subject(worker.node))
    try:
        # The worker reconciles its (still empty) slice at start; only then does the image
        # enter it, so the task's own pull is what reads a Secret.
        wait_for(
            lambda: "reconcile on" in worker.process.log_tail(20_000),
            WARM_TIMEOUT,
            "the start's reconcile",
        )
        CatalogStore(bus).put_slice(
            NodeSlice(worker.node, (SliceImage(image.ref, (in_release, copy)),))
        )
        worker.send(PULL_IMAGE, image=image.ref, pull_secrets=[named, other_copy])
        events.wait_for(lambda: bool(events.of(image.ref)), WARM_TIMEOUT, "the pull's result")
    finally:
        worker.stop()

    assert [e.outcome for e in events.of(image.ref)] == [Outcome.PULLED]  # the catalog's copy
    read = kube.requests("secrets")[before:]
    assert [(r.verb, r.namespace, r.name) for r in read] == [("get", *copy.split("/"))]
    assert "secret names in the task message ignored" in worker.process.log_tail(20_000)


def test_the_kubelet_credentials_file_is_the_fallback(
    make_agent: MakeAgent, private_registry: Registry, workdir: Path, node: Containerd
) -> None:
    image = push_image(private_registry.host, "team/node-creds", "v1", auth=(USER, PASSWORD))
    config = workdir / f"config-{uuid.uuid4().hex[:6]}.json"
    config.write_text(json.dumps(docker_config(private_registry.host)))
    agent, _ = make_agent(pull_secrets=False, kubelet_credentials_file=str(config))

    assert agent.pull_entry(SliceImage(image.ref)).outcome is Outcome.PULLED
    assert image.ref in node.image_refs()


def test_the_most_specific_matching_key_wins() -> None:
    def auth(user: str) -> dict[str, str]:
        return {"auth": base64.b64encode(f"{user}:pw".encode()).decode()}

    auths = {
        "https://index.docker.io/v1/": auth("hub"),
        "*.example.com": auth("wildcard"),
        "registry.example.com": auth("host"),
        "registry.example.com/team": auth("team"),
        "registry.example.com:5000": auth("port"),
    }

    def user(reference: str) -> str | None:
        found = match(auths, parse_image(reference))
        return found.username if found else None

    assert user("nginx") == "hub"
    assert user("registry.example.com/team/app:v1") == "team"
    assert user("registry.example.com/other/app:v1") == "host"
    assert user("eu.example.com/app") == "wildcard"
    assert user("registry.example.com:5000/app") == "port"
    assert user("quay.io/app") is None
    assert "pw" not in repr(match(auths, parse_image("nginx")))
