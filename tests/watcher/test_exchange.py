"""The NATS credentials exchange against the API double's TokenReview and a real nats-server.

Pods, ServiceAccount tokens bound to them (what the kubelet projects) and TokenReview come from
the API double over real HTTP, through the official client; the JWTs the exchange answers are
used through the product's bus, with the settings a pod of the chart has, against NATS in
operator mode. What a refused identity gets is an HTTP status and a reason, and no JWT.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import REGISTRY

from beat.lease import Lease
from localcluster import FakeKubeAPI
from localcluster.harness import wait_for
from localcluster.services import OperatorNats
from tasks import natsauth
from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import CatalogStore
from tasks.models import CatalogEntry
from tasks.natscreds import ExchangedCredentials, credentials_for
from tasks.settings import NatsSettings, SettingsError, load_settings
from tasks.status import StatusStore
from watcher.exchange import PATH, Exchange, ExchangeServer

NAMESPACE = "warm-images"
WORKER_SA, BEAT_SA, FLOWER_SA = "warm-worker", "warm-beat", "warm-flower"
ROLES = {WORKER_SA: "worker", BEAT_SA: "beat", FLOWER_SA: "client"}
AUDIENCES = (natsauth.IDENTITY_AUDIENCE,)
IMAGE = "docker.io/library/app:1"

# A real nats-server whose refusals wait out a JetStream timeout: the slow tier.
pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    kube: FakeKubeAPI
    core: client.CoreV1Api
    url: str  # the exchange's
    nats: OperatorNats
    workdir: Path

    def pod(self, name: str, node: str, service_account: str = WORKER_SA) -> str:
        """A pod running on ``node`` as ``service_account``; returns its name."""
        body = {
            "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "worker"}},
            "spec": {
                "nodeName": node,
                "serviceAccountName": service_account,
                "containers": [{"name": "worker", "image": "warm-images:test"}],
            },
        }
        self.core.create_namespaced_pod(NAMESPACE, body)
        return name

    def token(self, pod: str | None, service_account: str = WORKER_SA, **options: Any) -> str:
        options.setdefault("audiences", AUDIENCES)
        return self.kube.issue_token(
            options.pop("namespace", NAMESPACE), service_account, pod=pod, **options
        )

    def token_file(self, token: str) -> Path:
        path = self.workdir / f"token-{uuid.uuid4().hex[:6]}"
        path.write_text(token)
        return path

    def bus(self, token_file: Path) -> NatsBus:
        """A bus with a chart pod's settings: the exchange's URL and the projected token."""
        settings = load_settings(
            {
                "WARM_NATS_URL": self.nats.url,
                "WARM_NATS_CREDENTIALS_URL": self.url,
                "WARM_NATS_IDENTITY_TOKEN_FILE": str(token_file),
                "WARM_NATS_CONNECT_TIMEOUT": "2",
            }
        ).nats
        assert isinstance(credentials_for(settings), ExchangedCredentials)
        return NatsBus(settings)


@pytest.fixture
def cluster(operator_nats: OperatorNats, workdir: Path) -> Iterator[Cluster]:
    kube = FakeKubeAPI().start()
    exchange = Exchange(kube.api_client(), operator_nats.keys, NAMESPACE, ROLES)
    server = ExchangeServer(exchange, 0, host="127.0.0.1").start()
    url = f"http://127.0.0.1:{server.port}{PATH}"
    folder = workdir / f"exchange-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    try:
        yield Cluster(kube, client.CoreV1Api(kube.api_client()), url, operator_nats, folder)
    finally:
        server.stop()
        kube.stop()


@pytest.fixture
def buses() -> Iterator[Callable[[NatsBus], NatsBus]]:
    opened: list[NatsBus] = []

    def keep(bus: NatsBus) -> NatsBus:
        opened.append(bus)
        return bus

    yield keep
    for bus in opened:
        bus.close()


def ask(url: str, token: str, public_key: str | None = None) -> tuple[int, dict[str, str]]:
    key = public_key or natsauth.public(natsauth.new_user_key())
    body = json.dumps({"token": token, "publicKey": key}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def node_name() -> str:
    return f"node-{uuid.uuid4().hex[:6]}"


def test_a_worker_pod_gets_a_user_that_writes_only_its_own_nodes_status(
    cluster: Cluster, buses: Callable[[NatsBus], NatsBus]
) -> None:
    node_a, node_b = node_name(), node_name()
    pod_a = cluster.pod(f"worker-{node_a}", node_a)
    worker_a = buses(cluster.bus(cluster.token_file(cluster.token(pod_a))))

    StatusStore(worker_a).record_rewarm(node_a, [IMAGE], 1, present=[IMAGE])
    with pytest.raises(BusUnavailable):
        StatusStore(worker_a).record_rewarm(node_b, [IMAGE], 1)
    with pytest.raises(BusUnavailable):
        CatalogStore(worker_a).put_entry(CatalogEntry(image="evil.example/x:1"))

    assert _granted("worker") >= 1
    reviews = cluster.kube.requests("tokenreviews")
    assert [(r.verb, r.namespace) for r in reviews] == [("create", None)]
    flower = cluster.pod("flower-0", node_b, FLOWER_SA)
    reader = buses(cluster.bus(cluster.token_file(cluster.token(flower, FLOWER_SA))))
    assert StatusStore(reader).get(node_a).warm_count == 1
    assert StatusStore(reader).get(node_b).reported is False


def test_beat_and_flower_get_their_own_roles(
    cluster: Cluster, buses: Callable[[NatsBus], NatsBus]
) -> None:
    node = node_name()
    beat_pod = cluster.pod("beat-0", node, BEAT_SA)
    beat = buses(cluster.bus(cluster.token_file(cluster.token(beat_pod, BEAT_SA))))
    lease = Lease(beat, ttl=30)
    assert lease.hold()
    lease.release()  # NATS is shared by the session's tests
    flower_pod = cluster.pod("flower-1", node, FLOWER_SA)
    flower = buses(cluster.bus(cluster.token_file(cluster.token(flower_pod, FLOWER_SA))))
    with pytest.raises(BusUnavailable):
        StatusStore(flower).record_rewarm(node, [IMAGE], 1)


@pytest.mark.parametrize(
    "case",
    [
        "the API's audience",
        "an expired token",
        "a pod deleted since",
        "another namespace",
        "a ServiceAccount without a role",
        "a token bound to no pod",
        "a pod of another ServiceAccount",
    ],
)
def test_identities_that_get_no_credentials(cluster: Cluster, case: str) -> None:
    node = node_name()
    pod = cluster.pod(f"pod-{node}", node)
    token = {
        "the API's audience": lambda: cluster.token(pod, audiences=("https://kubernetes",)),
        "an expired token": lambda: cluster.token(pod, expires_in=-1),
        "a pod deleted since": lambda: _deleted(cluster, pod),
        "another namespace": lambda: _elsewhere(cluster, node),
        "a ServiceAccount without a role": lambda: cluster.token(pod, "default"),
        "a token bound to no pod": lambda: cluster.token(None),
        # The worker's ServiceAccount name on a token bound to a pod that runs as another:
        # the apiserver never issues that, the exchange does not trust it either.
        "a pod of another ServiceAccount": lambda: cluster.token(
            cluster.pod(f"other-{node}", node, "default")
        ),
    }[case]()
    refusals = _granted("refused")
    status, answer = ask(cluster.url, token)
    assert status in (401, 403), answer
    assert "jwt" not in answer and answer["error"]
    assert _granted("refused") == refusals + 1


def _granted(role: str) -> float:
    return REGISTRY.get_sample_value("warm_nats_credentials_total", {"role": role}) or 0.0


def _deleted(cluster: Cluster, pod: str) -> str:
    token = cluster.token(pod)
    cluster.core.delete_namespaced_pod(pod, NAMESPACE)
    return token


def _elsewhere(cluster: Cluster, node: str) -> str:
    cluster.core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": f"w-{node}"},
            "spec": {"nodeName": node, "serviceAccountName": WORKER_SA, "containers": []},
        },
    )
    return cluster.token(f"w-{node}", namespace="default")


def test_a_token_without_its_node_gets_the_node_of_its_pod(cluster: Cluster) -> None:
    """Before Kubernetes 1.30 a token names its pod only: the pod (same uid) names the node;
    a pod not scheduled yet gets nothing."""
    node = node_name()
    token = cluster.token(cluster.pod(f"old-{node}", node), node_info=False)
    status, answer = ask(cluster.url, token)
    assert status == 200, answer
    assert natsauth.decode_jwt(answer["jwt"])["name"] == f"worker:{node}"
    pending = {"serviceAccountName": WORKER_SA, "containers": []}
    cluster.core.create_namespaced_pod(
        NAMESPACE, {"metadata": {"name": "pending"}, "spec": pending}
    )
    status, answer = ask(cluster.url, cluster.token("pending", node_info=False))
    assert status == 403 and "no node" in answer["error"]


def test_malformed_requests_are_told_what_is_expected(cluster: Cluster) -> None:
    node = node_name()
    token = cluster.token(cluster.pod(f"pod-{node}", node))
    status, answer = ask(cluster.url, token, public_key="not-a-key")
    assert status == 400 and "nkey" in answer["error"]
    request = urllib.request.Request(cluster.url, b"[]", {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert cluster.kube.requests("tokenreviews") == []  # nothing reached the API


def test_the_worker_renews_through_the_exchange_and_rereads_its_token(
    operator_nats: OperatorNats, workdir: Path, buses: Callable[[NatsBus], NatsBus]
) -> None:
    """With short-lived JWTs the bus asks again before expiry, with the token the kubelet
    rotated into the file meanwhile, and keeps writing across the reconnects."""
    kube = FakeKubeAPI().start()
    exchange = Exchange(kube.api_client(), operator_nats.keys, NAMESPACE, ROLES, ttl=6)
    server = ExchangeServer(exchange, 0, host="127.0.0.1").start()
    url = f"http://127.0.0.1:{server.port}{PATH}"
    cluster = Cluster(kube, client.CoreV1Api(kube.api_client()), url, operator_nats, workdir)
    try:
        node = node_name()
        pod = cluster.pod(f"worker-{node}", node)
        token_file = cluster.token_file(cluster.token(pod, expires_in=5))
        bus = buses(cluster.bus(token_file))
        store = StatusStore(bus)
        store.record_rewarm(node, [IMAGE], 1)
        token_file.write_text(cluster.token(pod))  # the kubelet's rotation
        wait_for(lambda: len(kube.requests("tokenreviews")) >= 3, 20, "two renewals")
        store.record_rewarm(node, [IMAGE], 2, present=[IMAGE])
        assert StatusStore(bus).get(node).warm_count == 1
    finally:
        server.stop()
        kube.stop()


def test_a_watcher_down_costs_nothing_until_the_jwt_expires_and_then_until_it_is_back(
    operator_nats: OperatorNats, workdir: Path, buses: Callable[[NatsBus], NatsBus]
) -> None:
    """A renewal that fails is logged and retried while the JWT still works; past its expiry
    the node is out (one line naming the exchange), and back with the watcher's return."""
    kube = FakeKubeAPI().start()
    exchange = Exchange(kube.api_client(), operator_nats.keys, NAMESPACE, ROLES, ttl=4)
    server = ExchangeServer(exchange, 0, host="127.0.0.1").start()
    port = server.port
    url = f"http://127.0.0.1:{port}{PATH}"
    cluster = Cluster(kube, client.CoreV1Api(kube.api_client()), url, operator_nats, workdir)
    try:
        node = node_name()
        bus = buses(cluster.bus(cluster.token_file(cluster.token(cluster.pod(f"w-{node}", node)))))
        store = StatusStore(bus)
        store.record_rewarm(node, [IMAGE], 1)
        failed_renewals = _nats_errors("credentials")
        server.stop()  # the watcher goes away
        wait_for(lambda: _nats_errors("credentials") > failed_renewals, 5, "a failed renewal")
        store.record_rewarm(node, [IMAGE], 2)  # the JWT still works
        wait_for(
            lambda: "did not answer" in _refused(store, node, 3),
            10,
            "the JWT's expiry, and an error naming the exchange",
        )
        server = ExchangeServer(exchange, port, host="127.0.0.1").start()  # it is back
        wait_for(lambda: _written(store, node, 4), 15, "a write once the watcher is back")
        assert StatusStore(bus).get(node).last_rewarm_revision == 4
    finally:
        server.stop()
        kube.stop()


def _nats_errors(kind: str) -> float:
    return REGISTRY.get_sample_value("warm_nats_errors_total", {"kind": kind}) or 0.0


def _refused(store: StatusStore, node: str, revision: int) -> str:
    """Why a write failed ("" when it went through)."""
    try:
        store.record_rewarm(node, [IMAGE], revision)
    except BusUnavailable as error:
        return str(error)
    return ""


def _written(store: StatusStore, node: str, revision: int) -> bool:
    return not _refused(store, node, revision)


def test_only_parts_roles_can_be_handed_out() -> None:
    with pytest.raises(SettingsError, match="WARM_NATS_ROLES"):
        load_settings({"WARM_NATS_ROLES": json.dumps({"warm-watcher": "watcher"})})
    settings = load_settings({"WARM_NATS_ROLES": json.dumps(ROLES)})
    assert dict(settings.nats.roles) == ROLES
    assert NatsSettings().credentials_port == 8090


def test_a_refused_part_is_told_what_to_fix(cluster: Cluster, workdir: Path) -> None:
    """The bus's error names the setting and the exchange's reason, in one line."""
    node = node_name()
    refused = cluster.token_file(cluster.token(cluster.pod(f"pod-{node}", node), "default"))
    missing = workdir / "no-such-token"
    for token_file, expected in (
        (refused, r"WARM_NATS_CREDENTIALS_URL=.* refused this pod's identity \(403\): .*no NATS"),
        (missing, "WARM_NATS_IDENTITY_TOKEN_FILE=.*no-such-token"),
    ):
        with cluster.bus(token_file) as bus, pytest.raises(BusUnavailable) as error:
            bus.kv_get("warm-status", node)
        assert re.search(expected, str(error.value)), error.value
        assert "\n" not in str(error.value)
