"""The chart's image, built as scripts/build-image builds it and run as the chart runs it.

Docker Hub is out of reach here (only the Debian and Python package mirrors are), so the base is
made from Debian packages by scripts/build-base (mmdebstrap, ``docker import``; the tarball is
cached in ~/.cache) and passed as the Dockerfile's BASE. Then watcher, worker, beat and Flower
start from the image with the chart's security context: uid 10001 (the worker uid 0, for the
runtime socket), read-only root filesystem with an emptyDir-like /tmp, every capability
dropped, no privilege escalation; on the host network, against this machine's Redis, NATS, API
double and containerd. Each must become healthy, and a Deployment's image must get warm on the
node through the containerized worker (read back through CRI).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from beat.lease import LEADER_KEY
from localcluster import Containerd, FakeKubeAPI, Registry, push_image
from localcluster.docker import DockerDaemon
from localcluster.harness import unavailable, wait_for
from localcluster.manifests import create_nodes, deployment
from localcluster.ports import free_port
from localcluster.product import REPO_ROOT
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.names import BEAT_BUCKET
from tasks.settings import NatsSettings

from .conftest import CriProbe

pytestmark = pytest.mark.e2e

BUILD_TIMEOUT = 1200.0
READY_TIMEOUT = 90.0
SOCKET = "/run/containerd/containerd.sock"  # where the chart mounts the runtime's socket
VALUES = yaml.safe_load((REPO_ROOT / "chart" / "values.yaml").read_text())


@dataclass
class Built:
    docker: DockerDaemon
    image: str
    base: str
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", *args],
            env={**os.environ, "DOCKER_HOST": self.docker.endpoint},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _script(name: str, *args: str, env: dict[str, str]) -> tuple[str, float]:
    """Run scripts/<name>; what it printed and the seconds it took."""
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"scripts/{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout, time.monotonic() - started


@pytest.fixture(scope="module")
def built(workdir: Path) -> Iterator[Built]:
    if os.geteuid() != 0 or shutil.which("dockerd") is None or shutil.which("docker") is None:
        unavailable("building the image needs root, dockerd and the docker client (docker.io)")
    docker = DockerDaemon(workdir, "img")
    docker.start()
    # The legacy builder: BuildKit would fetch the Dockerfile's syntax frontend from Docker Hub.
    env = {**os.environ, "DOCKER_HOST": docker.endpoint, "DOCKER_BUILDKIT": "0"}
    try:
        printed, base_seconds = _script("build-base", "--host-trust", env=env)
        base = printed.split()[-1]  # the image's name, on the last line
        tag = f"test-{uuid.uuid4().hex[:6]}"
        # dockerd runs without a bridge here: the build's RUN steps use the host's network.
        _, image_seconds = _script(
            "build-image", "--tag", tag, "--base", base, "--", "--network", "host", env=env
        )
        print(f"\nbuild: base {base_seconds:.0f}s (cached once made), image {image_seconds:.0f}s")
        yield Built(docker, f"warm-images:{tag}", base, env)
    finally:
        docker.stop()
        docker.remove_data()


@dataclass
class Container:
    name: str
    built: Built

    def logs(self) -> str:
        result = self.built.cli("logs", "--tail", "60", self.name)
        return f"--- {self.name}\n{result.stdout}{result.stderr}"

    def state(self) -> dict[str, Any]:
        result = self.built.cli("inspect", "--format", "{{json .State}}", self.name)
        return dict(json.loads(result.stdout)) if result.returncode == 0 else {}


def run(
    built: Built,
    component: str,
    command: list[str],
    env: dict[str, str],
    *,
    user: str,
    mounts: tuple[str, ...] = (),
) -> Container:
    """docker run with the chart's container securityContext and an emptyDir-like /tmp."""
    name = f"warm-{component}-{uuid.uuid4().hex[:6]}"
    flags = ["--detach", "--name", name, "--network", "host", "--user", user]
    flags += ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    flags += ["--security-opt", "no-new-privileges"]
    for key, value in env.items():
        flags += ["--env", f"{key}={value}"]
    for mount in mounts:
        flags += ["--volume", mount]
    result = built.cli("run", *flags, built.image, *command)
    assert result.returncode == 0, f"docker run {component}: {result.stderr}"
    return Container(name, built)


def http_ok(url: str, expect: bytes) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bool(answer.status == 200 and expect in answer.read())
    except (OSError, http.client.HTTPException):  # not up yet, or something else on the port
        return False


def chart_uid(values: dict[str, Any]) -> str:
    context = values["podSecurityContext"]
    return f"{context['runAsUser']}:{context['runAsGroup']}"


def test_image_runs_every_component_as_the_chart_does_and_warms_a_deployment(
    built: Built,
    workdir: Path,
    redis_server: RedisServer,
    private_nats: NatsServer,
    registry: Registry,
) -> None:
    image_user = built.cli("image", "inspect", "--format", "{{.Config.User}}", built.image)
    assert image_user.stdout.strip() == chart_uid(VALUES) == "10001:10001"
    base = workdir / f"img-{uuid.uuid4().hex[:6]}"
    node = "node-img"
    containers: list[Container] = []
    with contextlib.ExitStack() as stack:
        kube = stack.enter_context(FakeKubeAPI())
        ctr = stack.enter_context(Containerd(base, "n1", insecure_registries=[registry.host]))
        create_nodes(kube.api_client(), [node])
        kubeconfig = kube.write_kubeconfig(base / "kubeconfig")
        kubeconfig.chmod(0o644)  # read by uid 10001
        common = {
            "WARM_BROKER_URL": f"{redis_server.url}/5",
            "WARM_NATS_URL": private_nats.url,
            "KUBECONFIG": "/etc/warm/kubeconfig",
        }
        kube_mount = f"{kubeconfig}:/etc/warm/kubeconfig:ro"
        health = {"watcher": free_port(), "worker": free_port()}
        flower_port = free_port()
        try:
            containers.append(run(
                built, "watcher", ["python", "-m", "watcher"],
                {**common, "WARM_HEALTH_PORT": str(health["watcher"]),
                 "WARM_METRICS_PORT": str(free_port())},
                user=chart_uid(VALUES), mounts=(kube_mount,),
            ))  # fmt: skip
            worker_uid = VALUES["worker"]["podSecurityContext"]
            containers.append(run(
                built, "worker", ["python", "-m", "worker"],
                {**common, "WARM_NODE_NAME": node, "WARM_RUNTIME_ENDPOINT": f"unix://{SOCKET}",
                 "WARM_HEALTH_PORT": str(health["worker"]), "WARM_METRICS_PORT": str(free_port()),
                 "WARM_DISK_BUDGET_PERCENT": "99"},
                user=f"{worker_uid['runAsUser']}:{worker_uid['runAsGroup']}",
                mounts=(kube_mount, f"{ctr.socket}:{SOCKET}", f"{ctr.root}:{ctr.root}:ro"),
            ))  # fmt: skip
            containers.append(run(
                built, "beat",
                ["celery", "-A", "tasks", "beat", "--schedule", "/tmp/celerybeat-schedule"],
                common, user=chart_uid(VALUES),
            ))  # fmt: skip
            containers.append(run(
                built, "flower", ["celery", "-A", "tasks", "flower"],
                {**common, "FLOWER_PORT": str(flower_port), "FLOWER_BASIC_AUTH": "admin:secret"},
                user=chart_uid(VALUES),
            ))  # fmt: skip

            bus = stack.enter_context(NatsBus(NatsSettings(url=private_nats.url)))

            def logs() -> str:
                return "\n".join(c.logs() for c in containers)

            checks = {
                "watcher /healthz": lambda: http_ok(
                    f"http://127.0.0.1:{health['watcher']}/healthz", b'"healthy": true'
                ),
                "worker /healthz": lambda: http_ok(
                    f"http://127.0.0.1:{health['worker']}/healthz", b'"healthy": true'
                ),
                "flower /healthcheck": lambda: http_ok(
                    f"http://127.0.0.1:{flower_port}/healthcheck", b"OK"
                ),
                # beat serves no probe: it is up once it holds the dispatch lease, which only
                # it can have taken in this private NATS.
                "beat holding the lease": lambda: bus.kv_get(BEAT_BUCKET, LEADER_KEY) is not None,
            }
            for what, check in checks.items():
                seconds = wait_for(check, READY_TIMEOUT, what, logs)
                print(f"{what}: {seconds:.1f}s")
            for container in containers:
                assert container.state().get("Running"), container.logs()

            image = push_image(registry.host, f"img/{uuid.uuid4().hex[:6]}", "v1", size_mib=4)
            apps = client.AppsV1Api(kube.api_client())
            apps.create_namespaced_deployment("default", deployment("warm-me", image.ref))
            probe = CriProbe(ctr.endpoint)
            try:
                seconds = wait_for(lambda: image.ref in probe.tags(), 90, "the image warm", logs)
            finally:
                probe.close()
            print(f"Deployment -> warm through the containerized worker: {seconds:.1f}s")
        finally:
            for container in containers:
                built.cli("rm", "--force", container.name)


def test_build_image_pushes_to_the_given_registry(built: Built, registry: Registry) -> None:
    tag = f"pushed-{uuid.uuid4().hex[:6]}"
    args = ["--registry", f"{registry.host}/team", "--tag", tag, "--push", "--base", built.base]
    printed, seconds = _script("build-image", *args, "--", "--network", "host", env=built.env)
    assert f"build-image: {registry.host}/team/warm-images:{tag} (pushed)" in printed
    print(f"rebuild (layers cached) and push: {seconds:.0f}s")
    request = urllib.request.Request(
        f"http://{registry.host}/v2/team/warm-images/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        method="HEAD",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
