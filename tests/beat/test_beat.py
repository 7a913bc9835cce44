"""The periodic re-warm: one leader among beats, one small message per node, paced sends.

Messages are counted in the per-node queues of a private Redis with no worker consuming, so
the counts are what the broker really holds.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from celery import Celery

from beat.lease import Lease
from localcluster import free_port, product
from localcluster.harness import wait_for
from localcluster.product import ProductProcess
from localcluster.services import NatsServer, RedisServer
from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import CatalogStore
from tasks.models import CatalogEntry
from tasks.names import REWARM_NODE
from tasks.rewarm import dispatch_rewarm
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings, RewarmSettings, SettingsError, load_settings

SeedNodes = Callable[[int, int], list[str]]  # the seed_nodes fixture (tests/beat/conftest.py)
SENT = re.compile(r"re-warm sent to (\d+) node\(s\)")


def broker_app(redis_server: RedisServer, db: int) -> Celery:
    return Celery("beat-test", broker=f"{redis_server.url}/{db}", set_as_current=False)


def queued(client: redis.Redis, nodes: list[str]) -> dict[str, int]:
    return {node: int(client.llen(queue_for_node(node))) for node in nodes}


def test_a_rewarm_of_n_nodes_sends_n_small_messages(
    private_redis: RedisServer, private_bus: NatsBus, seed_nodes: SeedNodes
) -> None:
    nodes = seed_nodes(50, 500)
    client = redis.Redis.from_url(f"{private_redis.url}/3")

    sent = dispatch_rewarm(broker_app(private_redis, 3), private_bus)

    assert sorted(item.node for item in sent) == sorted(nodes)
    assert queued(client, nodes) == dict.fromkeys(nodes, 1)
    raw = client.lindex(queue_for_node(nodes[0]), 0)
    assert raw is not None and len(raw) < 2048  # 500 images in the slice, none in the message
    message = json.loads(raw)
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert message["headers"]["task"] == REWARM_NODE
    assert args == [] and set(kwargs) == {"node", "revision"}
    assert kwargs["node"] == nodes[0] and kwargs["revision"] >= len(nodes)
    assert message["headers"]["expires"] is None  # a manual re-warm does not expire


def test_a_periodic_rewarm_expires_when_the_next_one_is_due(
    private_redis: RedisServer, private_bus: NatsBus, seed_nodes: SeedNodes
) -> None:
    nodes = seed_nodes(1, 1)
    client = redis.Redis.from_url(f"{private_redis.url}/8")

    dispatch_rewarm(broker_app(private_redis, 8), private_bus, expires=1800)

    message = json.loads(client.lindex(queue_for_node(nodes[0]), 0) or b"{}")
    expires = datetime.fromisoformat(message["headers"]["expires"])
    assert 1790 < (expires - datetime.now(UTC)).total_seconds() <= 1800


def test_a_rewarm_narrowed_to_nodes_and_images_sends_only_to_those(
    private_redis: RedisServer, private_bus: NatsBus, seed_nodes: SeedNodes
) -> None:
    nodes = seed_nodes(5, 3)
    CatalogStore(private_bus).put_entry(CatalogEntry("docker.io/library/nginx:latest"))
    client = redis.Redis.from_url(f"{private_redis.url}/4")

    dispatch_rewarm(broker_app(private_redis, 4), private_bus, nodes[:2], ["nginx"])

    assert queued(client, nodes) == {n: int(n in nodes[:2]) for n in nodes}
    message = json.loads(client.lindex(queue_for_node(nodes[0]), 0) or b"{}")
    _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert kwargs["images"] == ["docker.io/library/nginx:latest"]


def test_a_paced_rewarm_spreads_its_sends_over_the_window(
    private_redis: RedisServer, private_bus: NatsBus, seed_nodes: SeedNodes
) -> None:
    nodes = seed_nodes(20, 1)
    client = redis.Redis.from_url(f"{private_redis.url}/5")
    app = broker_app(private_redis, 5)
    started = time.monotonic()
    sender = threading.Thread(target=dispatch_rewarm, args=(app, private_bus), kwargs={"window": 2})
    sender.start()

    time.sleep(1.0)
    halfway = sum(queued(client, nodes).values())
    sender.join()

    assert 3 <= halfway <= 17  # about half of them after half the window
    assert sum(queued(client, nodes).values()) == 20
    assert 1.8 <= time.monotonic() - started < 6


def test_the_lease_has_one_holder_and_passes_on_release_and_on_expiry(
    private_nats: NatsServer,
) -> None:
    settings = NatsSettings(url=private_nats.url)
    with NatsBus(settings) as bus_a, NatsBus(settings) as bus_b:
        first, second = Lease(bus_a, ttl=2, holder="a"), Lease(bus_b, ttl=2, holder="b")
        assert first.hold() and not second.hold()
        assert first.hold()  # renewing is not taking twice

        first.release()
        taken = time.monotonic()
        assert second.hold() and not first.hold()

        # "b" stops renewing (a hung beat): the server expires its lease, "a" takes over.
        wait_for(first.hold, 15, "the lease to expire")
        assert time.monotonic() - taken >= 1.9  # not before the TTL (2 s) since b's write
        assert not second.hold()


def test_the_lease_survives_nats_losing_its_storage_and_still_expires(
    private_nats: NatsServer,
) -> None:
    settings = NatsSettings(url=private_nats.url)
    with NatsBus(settings) as bus_a, NatsBus(settings) as bus_b:
        first, second = Lease(bus_a, ttl=2, holder="a"), Lease(bus_b, ttl=2, holder="b")
        assert first.hold()
        private_nats.restart_empty()

        def holds_again() -> bool:
            try:
                return first.hold()
            except BusUnavailable:
                return False

        time.sleep(2 / 3)  # until then "a" renews nothing: it cannot see the loss before
        wait_for(holds_again, 20, "the holder to take the lease in the new bucket")
        taken = time.monotonic()
        assert not second.hold()
        # The new bucket has the lease's TTL too: "a" stops renewing and "b" takes over.
        wait_for(second.hold, 15, "the lease to expire in the new bucket")
        assert time.monotonic() - taken >= 1.5


def start_beat(name: str, env: dict[str, str], logdir: Path) -> ProductProcess:
    return product.celery(name, ["beat", "--loglevel=INFO"], env, logdir).start()


def dispatches(beat: ProductProcess) -> int:
    return sum(1 for _ in SENT.finditer(beat.log_path.read_text(errors="replace")))


@pytest.mark.timeout(120)
def test_two_beats_running_one_dispatches_and_the_other_takes_over_when_it_dies(
    private_redis: RedisServer,
    private_nats: NatsServer,
    seed_nodes: SeedNodes,
    tmp_path: Path,
) -> None:
    nodes = seed_nodes(3, 10)
    env = product.product_env(
        broker_url=f"{private_redis.url}/6",
        nats_url=private_nats.url,
        WARM_REWARM_INTERVAL="2",
        WARM_REWARM_WINDOW="0",
        WARM_BEAT_LOCK_TTL="3",
    )
    client = redis.Redis.from_url(f"{private_redis.url}/6")
    beats = [start_beat(f"beat-{i}", env, tmp_path) for i in (1, 2)]
    logs = lambda: "\n".join(f"--- {b.name}\n{b.log_tail()}" for b in beats)  # noqa: E731
    try:
        wait_for(lambda: sum(map(dispatches, beats)) >= 3, 30, "three re-warms", logs)
        counts = [dispatches(beat) for beat in beats]
        assert min(counts) == 0, logs()  # exactly one of them dispatches
        leader, standby = beats if counts[0] else beats[::-1]
        rounds = dispatches(leader)
        assert all(count in (rounds, rounds + 1) for count in queued(client, nodes).values())

        os.killpg(leader.pid or 0, signal.SIGKILL)  # no clean release: the lease must expire
        took = wait_for(lambda: dispatches(standby) > 0, 15, "the standby to take over", logs)
        assert took < 3 + 1 + 5  # TTL, a standby's tick, slack for a loaded machine
        assert set(queued(client, nodes).values()) <= {rounds + 1, rounds + 2}
    finally:
        for beat in beats:
            beat.stop()


@pytest.mark.slow  # sits through beat's broker reconnect rounds
def test_beat_outlives_a_broker_outage(
    private_nats: NatsServer, seed_nodes: SeedNodes, tmp_path: Path
) -> None:
    seed_nodes(2, 1)
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = product.product_env(
        broker_url=closed,
        nats_url=private_nats.url,
        WARM_REWARM_INTERVAL="2",
        WARM_REWARM_WINDOW="0",
    )
    beat = start_beat("beat-outage", env, tmp_path)
    try:
        wait_for(lambda: "re-warm interrupted" in beat.log_tail(), 30, "the failed send")
        # Still running after it: at its next tick beat retries the broker, logging each round.
        log = beat.log_path.read_text
        wait_for(lambda: log().count("Trying again") >= 2, 30, "two reconnects", beat.log_tail)
        assert beat.alive(), beat.log_tail()
    finally:
        beat.stop()


def test_rewarm_settings_come_from_the_environment() -> None:
    assert load_settings({}).rewarm == RewarmSettings(interval=1800, window=60, lock_ttl=30)
    custom = {"WARM_REWARM_INTERVAL": "600", "WARM_REWARM_WINDOW": "0", "WARM_BEAT_LOCK_TTL": "9"}
    assert load_settings(custom).rewarm == RewarmSettings(interval=600, window=0, lock_ttl=9)
    with pytest.raises(SettingsError, match="WARM_BEAT_LOCK_TTL"):
        load_settings({"WARM_BEAT_LOCK_TTL": "1"})  # shorter than a renewal round trip allows
