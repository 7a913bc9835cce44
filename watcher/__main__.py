"""``python -m watcher``: watch workloads and nodes, keep the catalog, dispatch pulls."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from kubernetes import client, config

from tasks.app import app
from tasks.bus import NatsBus
from tasks.probes import serve_metrics
from tasks.settings import SettingsError, load_settings

from .exchange import serve_exchange
from .service import Watcher
from .targeting import InvalidSelector

log = logging.getLogger("watcher")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
        api = _api_client()
        watcher = Watcher(settings, api, app, NatsBus(settings.nats))
    except (SettingsError, InvalidSelector, config.ConfigException) as error:
        print(f"watcher: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    serve_metrics(settings.probes.metrics_port)
    try:
        serve_exchange(settings, api)
    except OSError as error:
        print(f"watcher: WARM_NATS_CREDENTIALS_PORT: {error}", file=sys.stderr)
        return 2
    watcher.run(stop)
    return 0


def _api_client() -> client.ApiClient:
    """In-cluster configuration when running in a pod, else ``KUBECONFIG``."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


if __name__ == "__main__":
    sys.exit(main())
