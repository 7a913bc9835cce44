"""The Docker Engine driver against a real dockerd (Debian's docker.io) with its own data root.

The same agent logic as on containerd (skip-if-present, failure classes, credentials, the pull
deadline), through the Engine API instead of CRI, and ``WARM_RUNTIME=auto`` telling the two
apart by their endpoints; and ``python -m worker`` on a Docker node.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_testing import worker_settings

from localcluster import Containerd, Registry, push_image
from localcluster.docker import DockerDaemon
from localcluster.harness import WARM_TIMEOUT, Events, start_worker, unavailable
from localcluster.packages import which
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.models import Outcome, SliceImage
from tasks.names import PULL_IMAGE, pull_events_subject
from tasks.settings import RuntimeSettings
from worker.agent import NodeAgent
from worker.runtime import open_runtime
from worker.runtime.docker import DockerRuntime

USER, PASSWORD = "bob", f"pw-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def private_registry(workdir: Path) -> Iterator[Registry]:
    with Registry(workdir / "docker-private", htpasswd={USER: PASSWORD}) as running:
        yield running


@pytest.fixture(scope="module")
def dockerd(
    workdir: Path, registry: Registry, private_registry: Registry
) -> Iterator[DockerDaemon]:
    if which("dockerd") is None:
        unavailable("dockerd is not installed (apt-get install docker.io)")
    daemon = DockerDaemon(workdir, "dk", insecure_registries=[registry.host, private_registry.host])
    try:
        daemon.start()
    except (RuntimeError, TimeoutError) as error:
        unavailable(f"dockerd cannot run on this machine: {error}")
    yield daemon
    daemon.stop()
    daemon.remove_data()


@pytest.fixture
def docker_agent(
    dockerd: DockerDaemon, nats_server: NatsServer, bus: NatsBus
) -> Iterator[NodeAgent]:
    runtime = DockerRuntime(dockerd.endpoint)
    settings = worker_settings(nats_server.url, dockerd.endpoint, pull_timeout=60.0)
    yield NodeAgent(settings, f"docker-{uuid.uuid4().hex[:6]}", runtime, bus)
    runtime.close()


def test_docker_pulls_once_then_finds_the_image_present(
    docker_agent: NodeAgent, registry: Registry
) -> None:
    image = push_image(registry.host, f"wt/dk-{uuid.uuid4().hex[:6]}", "v1", size_mib=5)

    first = docker_agent.pull(image.ref)
    second = docker_agent.pull(image.ref)
    by_digest = docker_agent.pull(image.digest_ref)

    assert [first.outcome, second.outcome, by_digest.outcome] == [
        Outcome.PULLED,
        Outcome.PRESENT,
        Outcome.PRESENT,
    ]
    held = {tag for item in docker_agent.runtime.list_images() for tag in item.repo_tags}
    assert image.ref in held
    docker_agent.runtime.remove(image.ref)
    assert docker_agent.runtime.image_status(image.ref) is None


def test_docker_failures_are_classified(docker_agent: NodeAgent, workdir: Path) -> None:
    with Registry(workdir / f"dk-down-{uuid.uuid4().hex[:4]}") as flaky:
        image = push_image(flaky.host, "wt/flaky", "v1")
        missing = docker_agent.pull(f"{flaky.host}/wt/flaky:nope")
        flaky.pause()
        down = docker_agent.pull(image.ref)

    assert missing.outcome is Outcome.FAILED and "manifest unknown" in missing.reason
    assert down.outcome is Outcome.RETRYING and "connection refused" in down.reason


def test_docker_pulls_a_private_image_with_the_node_credentials_file(
    dockerd: DockerDaemon,
    private_registry: Registry,
    nats_server: NatsServer,
    bus: NatsBus,
    tmp_path: Path,
) -> None:
    image = push_image(private_registry.host, "team/dk", "v1", auth=(USER, PASSWORD))
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"auths": {private_registry.host: {"username": USER, "password": PASSWORD}}})
    )
    runtime = DockerRuntime(dockerd.endpoint)
    settings = worker_settings(nats_server.url, dockerd.endpoint)
    anonymous = NodeAgent(settings, "dk-anon", runtime, bus)
    settings = worker_settings(
        nats_server.url, dockerd.endpoint, kubelet_credentials_file=str(config)
    )
    with_file = NodeAgent(settings, "dk-creds", runtime, bus)

    refused = anonymous.pull_entry(SliceImage(image.ref))
    pulled = with_file.pull_entry(SliceImage(image.ref))

    assert refused.outcome is Outcome.FAILED
    assert pulled.outcome is Outcome.PULLED
    assert PASSWORD not in refused.reason + pulled.reason
    runtime.close()


def test_a_pull_past_its_deadline_is_cancelled_and_retried_later(
    dockerd: DockerDaemon, registry: Registry, nats_server: NatsServer, bus: NatsBus
) -> None:
    image = push_image(registry.host, f"wt/dk-big-{uuid.uuid4().hex[:6]}", "v1", size_mib=100)
    runtime = DockerRuntime(dockerd.endpoint)
    settings = worker_settings(nats_server.url, dockerd.endpoint, pull_timeout=0.2)
    agent = NodeAgent(settings, "dk-deadline", runtime, bus)

    result = agent.pull(image.ref)

    assert result.outcome is Outcome.RETRYING
    assert result.reason.startswith("deadline")
    assert result.seconds < 5
    assert runtime.image_status(image.ref) is None
    runtime.close()


def test_auto_tells_docker_from_cri_by_the_endpoint(
    dockerd: DockerDaemon, node: Containerd
) -> None:
    docker = open_runtime(RuntimeSettings(kind="auto", endpoint=dockerd.endpoint))
    cri = open_runtime(RuntimeSettings(kind="auto", endpoint=node.endpoint))

    assert (docker.name, cri.name) == ("docker", "cri")
    assert docker.version().startswith("docker ")
    docker.close()
    cri.close()


def test_python_m_worker_warms_a_docker_node(
    dockerd: DockerDaemon,
    registry: Registry,
    redis_server: RedisServer,
    nats_server: NatsServer,
    workdir: Path,
    bus: NatsBus,
) -> None:
    image = push_image(registry.host, f"wt/dk-proc-{uuid.uuid4().hex[:6]}", "v1", size_mib=5)
    worker = start_worker(dockerd.endpoint, redis_server, nats_server, workdir / "logs")
    events = Events.follow(bus, pull_events_subject(worker.node))
    try:
        worker.send(PULL_IMAGE, image=image.ref)
        events.wait_for(lambda: bool(events.of(image.ref)), WARM_TIMEOUT, "the pull's result")
    finally:
        worker.stop()

    assert events.of(image.ref)[0].outcome is Outcome.PULLED
    assert "through docker" in worker.process.log_tail(20_000)
    runtime = DockerRuntime(dockerd.endpoint)
    assert runtime.image_status(image.ref) is not None
    runtime.close()
