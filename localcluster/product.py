"""The product's own processes, started exactly as users start them.

Tests and the demo run ``python -m watcher``, ``python -m worker`` and ``celery -A tasks ...``
as separate processes with the contract's environment variables, so they exercise the same
entry points, argument parsing and signal handling a user gets, not an in-process shortcut.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from localcluster._process import Daemon

REPO_ROOT = Path(__file__).resolve().parent.parent


def product_env(
    *, broker_url: str, nats_url: str, kubeconfig: Path | None = None, **extra: str
) -> dict[str, str]:
    """The environment of a product process: the contract's variables, nothing inherited
    that could point it at another cluster, broker or NATS."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("WARM_", "KUBECONFIG", "NODE_NAME", "KUBERNETES_SERVICE"))
    }
    env.update(WARM_BROKER_URL=broker_url, WARM_NATS_URL=nats_url, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    env.update(extra)
    return env


class ProductProcess:
    """One component: ``argv`` run with ``env``, logging to ``logdir/<name>.log``."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], logdir: Path) -> None:
        self.name = name
        self.env = dict(env)
        self._daemon = Daemon(name, argv, Path(logdir) / f"{name}.log")

    @property
    def log_path(self) -> Path:
        return self._daemon.log_path

    @property
    def pid(self) -> int | None:
        return self._daemon.pid

    def start(self) -> ProductProcess:
        self._daemon.start(self.env)
        return self

    def stop(self, grace: float = 10.0) -> None:
        self._daemon.stop(grace)

    def alive(self) -> bool:
        return self._daemon.alive()

    def log_tail(self, limit: int = 4000) -> str:
        return self._daemon.log_tail(limit)


def watcher(env: Mapping[str, str], logdir: Path) -> ProductProcess:
    return ProductProcess("watcher", [sys.executable, "-m", "watcher"], env, logdir)


def worker(node: str, endpoint: str, env: Mapping[str, str], logdir: Path) -> ProductProcess:
    node_env = {**env, "WARM_NODE_NAME": node, "WARM_RUNTIME_ENDPOINT": endpoint}
    return ProductProcess(f"worker-{node}", [sys.executable, "-m", "worker"], node_env, logdir)


def celery(name: str, args: list[str], env: Mapping[str, str], logdir: Path) -> ProductProcess:
    argv = [sys.executable, "-m", "celery", "-A", "tasks", *args]
    return ProductProcess(name, argv, env, logdir)


# Flower's task list as the chart configures it (chart/values.yaml, flower.tasksColumns).
FLOWER_TASKS_COLUMNS = "name,uuid,state,kwargs,exception,result,received,runtime,worker"


def flower(port: int, env: Mapping[str, str], logdir: Path) -> ProductProcess:
    """``celery -A tasks flower`` on loopback ``port``, with the chart's task columns."""
    args = ["flower", f"--port={port}", "--address=127.0.0.1"]
    return celery("flower", args, {"FLOWER_TASKS_COLUMNS": FLOWER_TASKS_COLUMNS, **env}, logdir)


def answers(url: str) -> bool:
    """Whether ``url`` answers 2xx now (a health check, e.g. Flower's /healthcheck)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(200 <= response.status < 300)
    except OSError:
        return False
