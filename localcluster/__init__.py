"""The simulated cluster that tests, benchmarks and the README's local demo run against.

A Kubernetes cluster cannot be installed on the machines this project is built on, but its
parts that the warmer touches can be run for real, on one machine, as root:

* Registry: a real OCI registry (docker-registry) on a loopback port, optionally with htpasswd
  auth, that can be paused and resumed to simulate an outage;
* push_image / build_oci_layout: test images written with the standard library, each with its
  own content, pushed over the registry's HTTP API;
* Containerd: one real containerd per simulated node, each with its own root and CRI socket;
* CountingProxy (localcluster.proxy): in front of a registry, counts what reaches its door
  (manifests by method, blob downloads in flight) and can pace it like a distant registry;
* HttpNodeRuntime (localcluster.httpnode): a node's runtime that pulls over HTTP as containerd
  does, for fleets of hundreds of simulated nodes that cannot each run a containerd;
* FakeKubeAPI: a Kubernetes API double over real HTTP (kmock plus resourceVersions, watches,
  bookmarks, 410s) that the official `kubernetes` client lists and watches, and that kubectl
  gets, creates, applies and deletes workloads on;
* ensure_system_packages: installs the Debian packages the above need on a fresh machine.

Every process is started in its own process group and stopped with it, and an atexit hook stops
what is left, so a failed test does not leave daemons behind. FakeKubeAPI is imported lazily:
it needs kmock (the `dev` extra), the rest needs only the standard library and grpcio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from localcluster.containerd import Containerd
from localcluster.images import PushedImage, build_oci_layout, push_image
from localcluster.packages import ensure_system_packages
from localcluster.ports import free_port
from localcluster.registry import Registry

if TYPE_CHECKING:
    from localcluster.kubeapi import FakeKubeAPI

__all__ = [
    "Containerd",
    "FakeKubeAPI",
    "PushedImage",
    "Registry",
    "build_oci_layout",
    "ensure_system_packages",
    "free_port",
    "push_image",
]


def __getattr__(name: str) -> Any:
    if name == "FakeKubeAPI":
        from localcluster.kubeapi import FakeKubeAPI

        return FakeKubeAPI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
