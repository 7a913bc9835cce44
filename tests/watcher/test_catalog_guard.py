"""The leader's check that NATS still holds the catalog, against a real nats-server."""

from __future__ import annotations

from localcluster.harness import wait_for
from localcluster.services import NatsServer
from tasks.bus import NatsBus
from tasks.names import CATALOG_BUCKET
from tasks.settings import NatsSettings
from watcher.catalog_guard import CatalogGuard


def test_writes_are_not_a_loss_and_a_catalog_nats_lost_is_one(private_nats: NatsServer) -> None:
    now = [0.0]
    with NatsBus(NatsSettings(url=private_nats.url)) as bus:
        guard = CatalogGuard(bus, interval=2, clock=lambda: now[0])
        written = bus.kv_put(CATALOG_BUCKET, "nodes.a", b"{}")
        assert not guard.lost(written)
        written = bus.kv_put(CATALOG_BUCKET, "nodes.b", b"{}")
        now[0] = 2
        assert not guard.lost(written)

        private_nats.restart_empty()
        now[0] = 3
        assert not guard.lost(written)  # within the interval: no request at all

        def noticed() -> bool:
            now[0] += 2
            return guard.lost(written)

        wait_for(noticed, 20, "the guard to notice the lost catalog")
        now[0] += 2
        assert not guard.lost(written)  # once: the stale revision does not count again
