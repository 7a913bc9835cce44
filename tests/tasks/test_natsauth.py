"""Per-part and per-node NATS users in operator mode, enforced by a real nats-server.

The server runs with the operator-mode block that tasks/natsauth.py derives from one account
secret (what the chart's NATS pod does) and JetStream on; every part connects through the
product's bus with a user JWT signed with that account's key, and uses the product's stores
on the product's buckets and subjects. What a node's user cannot do is observed on the server:
its writes are refused, no forged event reaches a subscriber.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from beat.lease import LEADER_KEY, Lease
from localcluster.harness import wait_for
from localcluster.services import OperatorNats
from tasks import natsauth
from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import CatalogStore
from tasks.kubelet import KubeletCounts, KubeletStore
from tasks.models import CatalogEntry, NodeSlice, SliceImage
from tasks.names import BEAT_BUCKET, CATALOG_BUCKET, CATALOG_EVENTS, pull_events_subject
from tasks.natscreds import MintedCredentials, credentials_for
from tasks.settings import NatsSettings
from tasks.status import StatusStore
from worker.permits import RegistryLimits, RegistryPermits

IMAGE = "docker.io/library/app:1"
# Real nats-server, and refusals that wait out a JetStream timeout: the slow tier.
pytestmark = pytest.mark.slow

Connect = Callable[..., NatsBus]


@pytest.fixture
def connect(operator_nats: OperatorNats) -> Iterator[Connect]:
    """A bus as ``role`` (a worker's for ``node``), with a JWT the account key signed."""
    opened: list[NatsBus] = []

    def open_bus(role: str, node: str | None = None, ttl: float = 600) -> NatsBus:
        settings = NatsSettings(url=operator_nats.url, connect_timeout=2)
        keys = operator_nats.keys
        bus = NatsBus(settings, credentials=lambda: MintedCredentials(keys, role, node, ttl))
        opened.append(bus)
        return bus

    yield open_bus
    for bus in opened:
        bus.close()


def errors_counted(kind: str) -> float:
    return REGISTRY.get_sample_value("warm_nats_errors_total", {"kind": kind}) or 0.0


def node_name() -> str:
    return f"node-{uuid.uuid4().hex[:6]}"


def test_a_node_writes_its_own_status_and_no_other_nodes(connect: Connect) -> None:
    node_a, node_b = node_name(), node_name()
    StatusStore(connect("worker", node_b)).record_rewarm(node_b, [IMAGE], 1)
    worker_a = connect("worker", node_a)

    StatusStore(worker_a).record_rewarm(node_a, [IMAGE], 1, present=[IMAGE])
    with pytest.raises(BusUnavailable):  # refused by the server: no JetStream ack comes
        StatusStore(worker_a).record_rewarm(node_b, [IMAGE], 1, present=[IMAGE])

    reader = StatusStore(connect("client"))
    assert reader.get(node_a).warm_count == 1
    assert reader.get(node_b).warm_count == 0  # node-b's own record, untouched


def test_a_node_cannot_write_the_catalog(connect: Connect) -> None:
    node = node_name()
    CatalogStore(connect("watcher")).put_slice(NodeSlice(node, (SliceImage(IMAGE),)))
    worker = connect("worker", node)
    with pytest.raises(BusUnavailable):
        CatalogStore(worker).put_slice(NodeSlice(node, (SliceImage("evil.example/x:1"),)))
    with pytest.raises(BusUnavailable):
        CatalogStore(worker).put_entry(CatalogEntry(image="evil.example/x:1"))
    with pytest.raises(BusUnavailable):
        worker.kv_delete(CATALOG_BUCKET, f"nodes.{node}")
    # It still reads its slice, which is still the watcher's.
    node_slice, _ = CatalogStore(worker).get_slice(node)
    assert [image.image for image in node_slice.images] == [IMAGE]


def test_a_node_publishes_only_its_own_events(connect: Connect) -> None:
    node_a, node_b = node_name(), node_name()
    heard: list[str] = []
    client = connect("client")
    client.subscribe("warm.events.>", lambda subject, _data: heard.append(subject))
    client.flush()
    worker_a = connect("worker", node_a)
    for subject in (pull_events_subject(node_b), CATALOG_EVENTS, pull_events_subject(node_a)):
        worker_a.publish(subject, b"{}")
    worker_a.flush()
    wait_for(lambda: pull_events_subject(node_a) in heard, 5, "node-a's own event")
    time.sleep(0.2)  # the refused ones, were they delivered, would have arrived before
    assert heard == [pull_events_subject(node_a)]


def test_the_other_parts_keep_their_rights(connect: Connect) -> None:
    lease = Lease(connect("beat"), ttl=30)
    assert lease.hold()
    with pytest.raises(BusUnavailable):
        connect("worker", node_name()).kv_delete(BEAT_BUCKET, LEADER_KEY)
    client = connect("client")
    found = client.kv_get(BEAT_BUCKET, LEADER_KEY)
    assert found is not None and lease.holder.encode() in found[0]
    lease.release()
    with pytest.raises(BusUnavailable):
        StatusStore(client).record_rewarm(node_name(), [IMAGE], 1)
    with pytest.raises(BusUnavailable):
        CatalogStore(connect("beat")).put_entry(CatalogEntry(image="evil.example/x:1"))


def test_only_the_watcher_writes_the_kubelet_counts_and_a_client_reads_them(
    connect: Connect,
) -> None:
    node = node_name()
    KubeletStore(connect("watcher")).put_node(node, KubeletCounts(hits=3).to_json())
    with pytest.raises(BusUnavailable):
        KubeletStore(connect("worker", node)).put_node(node, KubeletCounts(hits=99).to_json())
    assert KubeletStore(connect("client")).get_node(node).hits == 3


def test_a_node_gives_back_a_registry_permit_at_once(connect: Connect) -> None:
    """The permits are the one bucket nodes share: a node's user takes and releases
    (purges) its permit, so the next pull gets it at once, not after the lease."""
    permits = RegistryPermits(
        connect("worker", node_name()), RegistryLimits(1), "holder", max_wait=3
    )
    registry = f"registry-{uuid.uuid4().hex[:6]}.example"
    first = permits.acquire(registry, threading.Semaphore(1))
    assert first.key is not None
    started = time.monotonic()
    first.release()
    second = permits.acquire(registry, threading.Semaphore(1))
    assert second.key == first.key and time.monotonic() - started < 1.5
    second.release()


def test_a_node_waiting_for_a_permit_hears_another_node_give_it_back(connect: Connect) -> None:
    """Node b waits for the one permit node a holds: a's notice that it gave it back reaches b
    (a's user may publish it, b's may listen), so b takes it at once, and the server refuses
    nothing on the way."""
    registry = f"registry-{uuid.uuid4().hex[:6]}.example"
    holder = RegistryPermits(connect("worker", node_name()), RegistryLimits(1), "a", max_wait=3)
    held = holder.acquire(registry, threading.Semaphore(1))
    waiting = RegistryPermits(connect("worker", node_name()), RegistryLimits(1), "b", max_wait=30)
    refused = errors_counted("permission")
    taken: list[tuple[str | None, float]] = []

    def wait() -> None:
        taken.append((waiting.acquire(registry, threading.Semaphore(1)).key, time.monotonic()))

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(4)  # its pauses between tries are 2 s or more by now
    released = time.monotonic()
    held.release()
    waiter.join(timeout=30)
    assert errors_counted("permission") == refused
    ((key, when),) = taken
    assert key == held.key
    assert when - released < 1.0


def test_the_watcher_mints_its_own_from_the_account_key(operator_nats: OperatorNats) -> None:
    """WARM_NATS_ACCOUNT_KEY alone makes a bus connect as the watcher."""
    settings = NatsSettings(
        url=operator_nats.url, account_key=operator_nats.account_key, connect_timeout=2
    )
    assert isinstance(credentials_for(settings), MintedCredentials)
    with NatsBus(settings) as bus:
        CatalogStore(bus).put_entry(CatalogEntry(image=IMAGE))
        assert CatalogStore(bus).get_entry(IMAGE) is not None


def test_a_jwt_signed_by_another_account_key_is_refused(
    operator_nats: OperatorNats, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = natsauth.AccountKeys.from_secret(secrets.token_urlsafe(32))
    settings = NatsSettings(url=operator_nats.url, connect_timeout=2)
    with (
        NatsBus(settings, credentials=lambda: MintedCredentials(stranger, "watcher")) as bus,
        pytest.raises(BusUnavailable),
    ):
        bus.kv_get(CATALOG_BUCKET, "nodes.x")
    assert "Authorization Violation" in caplog.text


def test_an_expiring_jwt_is_renewed_and_the_connection_comes_back(connect: Connect) -> None:
    """The server ends a connection whose JWT expires; the bus renews it before and
    reconnects with the new one: across several lifetimes a node keeps writing and
    publishing, and a subscription keeps hearing."""
    node = node_name()
    worker, watcher = connect("worker", node, ttl=6), connect("watcher", ttl=6)
    heard: list[bytes] = []
    watcher.subscribe(pull_events_subject(node), lambda _subject, data: heard.append(data))
    watcher.flush()
    store = StatusStore(worker)
    deadline = time.monotonic() + 13  # more than two lifetimes
    revision = refused = 0
    while time.monotonic() < deadline:
        revision += 1
        try:  # a call in the instant of a renewal's reconnect waits for it
            store.record_rewarm(node, [IMAGE], revision, present=[IMAGE] * (revision % 2))
        except BusUnavailable:
            refused += 1
        worker.publish(pull_events_subject(node), str(revision).encode())
        time.sleep(0.25)
    assert refused == 0
    # Had the server ended the subscriber's connection at expiry, it would hear nothing more.
    wait_for(lambda: str(revision).encode() in heard, 5, "the last event")
    assert len(heard) >= revision - 4  # a reconnect may lose what was in flight, no more
    assert StatusStore(connect("client")).get(node).last_rewarm_revision == revision


def test_the_server_config_is_the_same_for_the_same_secret() -> None:
    """The NATS pod derives it at every start: a restart must not change the account."""
    secret = secrets.token_urlsafe(32)
    keys = natsauth.AccountKeys.from_secret(secret)
    again = natsauth.server_config(natsauth.AccountKeys.from_secret(secret))
    assert natsauth.server_config(keys) == again
    other = natsauth.AccountKeys.from_secret(secrets.token_urlsafe(32))
    assert other.account_public != keys.account_public
    assert keys.account_public in again


def test_a_worker_user_needs_its_node() -> None:
    with pytest.raises(natsauth.NatsAuthError, match="node"):
        natsauth.permissions("worker")
    with pytest.raises(natsauth.NatsAuthError, match="unknown NATS role"):
        natsauth.permissions("admin")


def test_the_command_the_nats_pod_runs(tmp_path: Path) -> None:
    """``python -m tasks.natsauth``: the server config into a file, the account's public key,
    and one line naming the setting when the key is unusable."""
    secret = secrets.token_urlsafe(32)
    keys = natsauth.AccountKeys.from_secret(secret)

    def run(*args: str, key: str = secret) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, natsauth.ACCOUNT_KEY_ENV: key}
        command = [sys.executable, "-m", "tasks.natsauth", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert run("server-config", str(tmp_path / "auth.conf")).returncode == 0
    assert (tmp_path / "auth.conf").read_text() == natsauth.server_config(keys)
    assert run("account").stdout.strip() == keys.account_public
    short = run("server-config", key="short")
    assert short.returncode == 1
    assert short.stderr.strip().splitlines() == [
        f"warm-images: {natsauth.ACCOUNT_KEY_ENV} must hold at least 16 characters"
    ]
