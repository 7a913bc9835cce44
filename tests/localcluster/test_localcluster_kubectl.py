"""The official kubectl against the API double: what a user of the demo types first.

kubectl discovers the API, sends protobuf for its typed commands (create deployment, job,
cronjob), asks for Tables to print, validates files through OpenAPI v3, patches with
strategic merge (client-side apply) or apply-patch (server-side apply), and waits for deletes.
Every check reads back through kubectl or the official Python client, over real HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster import FakeKubeAPI, strategicmerge
from localcluster.manifests import create_nodes

REGISTRY = "127.0.0.1:5000"


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path, home: Path) -> None:
        self.binary = binary
        # Its own HOME: kubectl caches discovery per server under ~/.kube/cache.
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home)}

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stderr}"
        assert "Warning" not in result.stderr, result.stderr
        return result.stdout

    def rows(self, *args: str) -> list[list[str]]:
        """The printed table, header first, split into columns."""
        return [line.split() for line in self(*args).splitlines() if line.strip()]


@pytest.fixture
def kube() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def ctl(kubectl: Path, kube: FakeKubeAPI, tmp_path: Path) -> Kubectl:
    return Kubectl(kubectl, kube.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path)


def deployment_yaml(name: str, containers: dict[str, str]) -> str:
    labels = {"app": name}
    return str(
        yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [{"name": n, "image": i} for n, i in containers.items()]
                        },
                    },
                },
            }
        )
    )


def images(kube: FakeKubeAPI, name: str) -> list[str]:
    found: Any = client.AppsV1Api(kube.api_client()).read_namespaced_deployment(name, "default")
    return [container.image for container in found.spec.template.spec.containers]


def test_get_nodes_prints_a_table_of_the_core_nodes(ctl: Kubectl, kube: FakeKubeAPI) -> None:
    create_nodes(kube.api_client(), ["node-1", "node-2"])
    rows = ctl.rows("get", "nodes")
    assert rows[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert [row[:2] for row in rows[1:]] == [["node-1", "Ready"], ["node-2", "Ready"]]
    assert ctl.rows("get", "node", "node-2")[1][0] == "node-2"
    # The core kinds resolve by name, short name and singular, with no ambiguity warnings.
    for name in ("no", "node", "pods", "po", "deploy", "jobs", "cronjobs"):
        ctl("get", name)


def test_create_deployment_sends_protobuf_and_the_double_stores_its_json(
    ctl: Kubectl, kube: FakeKubeAPI
) -> None:
    image = f"{REGISTRY}/samples/web:v1"
    assert "created" in ctl("create", "deployment", "web", f"--image={image}", "--replicas=3")
    stored: Any = client.AppsV1Api(kube.api_client()).read_namespaced_deployment("web", "default")
    assert stored.metadata.namespace == "default" and stored.metadata.uid
    assert stored.spec.replicas == 3
    assert [c.image for c in stored.spec.template.spec.containers] == [image]
    rows = ctl.rows("get", "deployments", "-o", "wide")
    assert rows[0][:5] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert rows[1][0] == "web" and rows[1][1] == "0/3" and image in rows[1]
    # Zero replicas is a value of its own, not an absent field.
    ctl("create", "deployment", "idle", f"--image={image}", "--replicas=0")
    assert ctl.rows("get", "deployment", "idle")[1][1] == "0/0"


def test_create_pod_job_and_cronjob_then_delete_them(ctl: Kubectl, kube: FakeKubeAPI) -> None:
    image = f"{REGISTRY}/samples/batch:v1"
    ctl("run", "once", f"--image={image}", "--restart=Never")
    ctl("create", "job", "migrate", f"--image={image}")
    ctl("create", "cronjob", "nightly", f"--image={image}", "--schedule=0 3 * * *")
    cron: Any = client.BatchV1Api(kube.api_client()).read_namespaced_cron_job("nightly", "default")
    assert cron.spec.schedule == "0 3 * * *"
    assert cron.spec.job_template.spec.template.spec.containers[0].image == image
    assert ctl.rows("get", "pods")[1][:3] == ["once", "0/1", "Pending"]
    for kind, name in (("pod", "once"), ("job", "migrate"), ("cronjob", "nightly")):
        assert "deleted" in ctl("delete", kind, name)
        assert ctl.run("get", kind, name).returncode == 1
    assert ctl("get", "pods,jobs,cronjobs").strip() == ""


def test_client_side_apply_merges_containers_by_name(ctl: Kubectl, kube: FakeKubeAPI) -> None:
    two = {"main": f"{REGISTRY}/api:v1", "side": f"{REGISTRY}/side:v1"}
    assert "created" in ctl("apply", "-f", "-", stdin=deployment_yaml("api", two))
    assert images(kube, "api") == list(two.values())
    # The strategic merge patch kubectl computes deletes "side" by its merge key and keeps
    # the last-applied annotation that the next apply diffs against.
    one = {"main": f"{REGISTRY}/api:v2"}
    assert "configured" in ctl("apply", "-f", "-", stdin=deployment_yaml("api", one))
    assert images(kube, "api") == [f"{REGISTRY}/api:v2"]
    annotations = ctl("get", "deployment", "api", "-o", "jsonpath={.metadata.annotations}")
    applied = json.loads(annotations)["kubectl.kubernetes.io/last-applied-configuration"]
    assert "api:v2" in applied and "side" not in applied
    assert "unchanged" in ctl("apply", "-f", "-", stdin=deployment_yaml("api", one))
    ctl("delete", "-f", "-", stdin=deployment_yaml("api", one))
    assert ctl("get", "deployments").strip() == ""


def test_server_side_apply_creates_then_updates(ctl: Kubectl, kube: FakeKubeAPI) -> None:
    first = {"main": f"{REGISTRY}/ssa:v1"}
    ctl("apply", "--server-side", "-f", "-", stdin=deployment_yaml("ssa", first))
    assert images(kube, "ssa") == [f"{REGISTRY}/ssa:v1"]
    second = {"main": f"{REGISTRY}/ssa:v2"}
    assert "serverside-applied" in ctl(
        "apply", "--server-side", "-f", "-", stdin=deployment_yaml("ssa", second)
    )
    assert images(kube, "ssa") == [f"{REGISTRY}/ssa:v2"]


def test_a_protobuf_kind_the_double_cannot_read_is_refused_in_one_line(ctl: Kubectl) -> None:
    result = ctl.run("create", "configmap", "settings", "--from-literal=a=b")
    assert result.returncode == 0  # core/v1: read
    result = ctl.run("create", "priorityclass", "high", "--value=1000")
    assert result.returncode == 1
    assert "reads protobuf only for core/v1, apps/v1 and batch/v1" in result.stderr
    assert "send it as JSON" in result.stderr


def test_strategic_merge_directives() -> None:
    original = {
        "containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}],
        "finalizers": ["x", "y"],
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
    }
    patch = {
        "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
        "containers": [{"name": "c", "image": "c:1"}, {"name": "b", "$patch": "delete"}],
        "$deleteFromPrimitiveList/finalizers": ["x"],
        "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
    }
    assert strategicmerge.apply(original, patch) == {
        "containers": [{"name": "c", "image": "c:1"}, {"name": "a", "image": "a:1"}],
        "finalizers": ["y"],
        "strategy": {"type": "Recreate"},
    }
    assert original["finalizers"] == ["x", "y"]  # the original is not changed


def test_scale_writes_only_the_replicas(ctl: Kubectl, kube: FakeKubeAPI) -> None:
    image = f"{REGISTRY}/samples/web:v1"
    ctl("create", "deployment", "web", f"--image={image}")
    ctl("scale", "deployment", "web", "--replicas=5")  # a PATCH of the scale subresource
    ctl("scale", "deployment", "web", "--replicas=0", "--current-replicas=5")  # a PUT of a Scale
    stored: Any = client.AppsV1Api(kube.api_client()).read_namespaced_deployment("web", "default")
    assert stored.spec.replicas == 0 and images(kube, "web") == [image]
    refused = ctl.run("scale", "deployment", "web", "--replicas=2", "--current-replicas=7")
    assert refused.returncode == 1 and "Expected replicas to be 7, was 0" in refused.stderr
