"""The watcher against the Kubernetes API double over real HTTP, with real NATS and Redis.

The watcher runs in-process, in a thread, through its real interface (:class:`Watcher` with the
official client); what it publishes is read back the way other components read it: the catalog
from NATS key-value through :class:`CatalogStore`, tasks from the node queues in Redis.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kubernetes import client
from watcher_testing import WatchedCluster, create, uid, watcher_settings

from localcluster import FakeKubeAPI
from localcluster.services import NatsServer, RedisServer
from tasks.bus import NatsBus
from tasks.catalog import CatalogStore
from watcher.service import Watcher


@pytest.fixture
def start_watcher(
    nats_server: NatsServer, redis_server: RedisServer
) -> Iterator[Callable[..., WatchedCluster]]:
    """``start_watcher(nodes=[...], health_port=0, release_namespace="default",
    pull_secret_namespace=None, objects=[...], **watch_settings)``: a fresh API double with
    those nodes (and those objects, there before the watcher starts), and a watcher on it."""
    started: list[WatchedCluster] = []
    buses: list[NatsBus] = []

    def start(
        nodes: list[Any] | None = None,
        health_port: int = 0,
        release_namespace: str = "default",
        pull_secret_namespace: str | None = None,
        objects: list[Any] | None = None,
        **watch: Any,
    ) -> WatchedCluster:
        kube = FakeKubeAPI(bookmark_interval=0.5).start()
        api = kube.api_client()
        for node in nodes or ():
            client.CoreV1Api(api).create_node(node)
        for obj in objects or ():
            create(api, obj)
        settings = watcher_settings(
            nats_server,
            redis_server,
            health_port,
            release_namespace,
            pull_secret_namespace,
            **watch,
        )
        bus = NatsBus(settings.nats)
        buses.append(bus)
        app = Celery("watcher-tests")
        app.config_from_object("celeryconfig")
        app.conf.broker_url = settings.broker.url
        broker = redis.Redis.from_url(settings.broker.url)
        broker.flushdb()
        watcher = Watcher(settings, kube.api_client(), app, bus, identity=f"test-{uid()}")
        stop = threading.Event()
        thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
        thread.start()
        cluster = WatchedCluster(kube, api, CatalogStore(bus), broker, watcher, stop, thread)
        bus.subscribe(
            "warm.events.catalog.>",
            lambda subject, data: cluster.events.append((subject, json.loads(data))),
        )
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop.set()
        cluster.thread.join(timeout=15)
        cluster.kube.stop()
    for bus in buses:
        bus.close()
