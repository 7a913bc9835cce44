"""Private Redis and NATS (with JetStream) servers for one test run or one demo.

The machine's own Redis and NATS serve everyone; a run that starts its own on free loopback
ports gets a clean broker and clean buckets, can stop and restart them for fault tests, and
leaves nothing behind in the shared ones.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from localcluster._lifecycle import Service
from localcluster._process import Daemon, wait_until
from localcluster.packages import require_binary
from localcluster.ports import free_port
from tasks import natsauth


class _TcpServer(Service):
    """A daemon on 127.0.0.1:<port> that is up when its port accepts connections."""

    name = "server"
    scheme = "tcp"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self._daemon = Daemon(self.name, self._argv(), self.workdir / f"{self.name}.log")

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> _TcpServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._daemon.start()
        wait_until(self._daemon, self._accepts, timeout, f"{self.name} on port {self.port}")
        return self

    def stop(self) -> None:
        self._daemon.stop()

    def running(self) -> bool:
        return self._daemon.alive()

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False


class RedisServer(_TcpServer):
    """Redis; ``durable`` fsyncs every write to an append-only file, as a broker that must
    survive its own restart is configured."""

    name = "redis"
    scheme = "redis"

    def __init__(self, workdir: Path, *, durable: bool = False, config: Path | None = None) -> None:
        self.durable = durable
        # A configuration file read first (e.g. the chart's ACL users); the flags below win.
        self.config = config
        super().__init__(workdir)

    def _argv(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        return [
            require_binary("redis-server"),
            *([str(self.config)] if self.config else []),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            *persistence,
            "--dir", str(self.workdir),
        ]  # fmt: skip


class NatsServer(_TcpServer):
    """NATS with JetStream storing under ``store``. ``monitor`` serves the server's own
    statistics (``/connz``, ``/varz``) at ``monitor_url``."""

    name = "nats"
    scheme = "nats"

    def __init__(self, workdir: Path, *, config: Path | None = None, monitor: bool = False) -> None:
        # A configuration file (e.g. users and permissions); the flags below win.
        self.config = config
        self.monitor_port = free_port() if monitor else 0
        self.store = Path(workdir) / "jetstream"
        super().__init__(workdir)

    @property
    def monitor_url(self) -> str:
        if not self.monitor_port:
            raise RuntimeError("this NATS server runs without monitoring: NatsServer(monitor=True)")
        return f"http://127.0.0.1:{self.monitor_port}"

    def restart_empty(self) -> None:
        """Stop, drop every stream, start on the same port: a NATS pod without a persistent
        volume coming back."""
        self.stop()
        shutil.rmtree(self.store, ignore_errors=True)
        self.start()

    def _argv(self) -> list[str]:
        return [
            require_binary("nats-server"),
            *(["--config", str(self.config)] if self.config else []),
            *(["-m", str(self.monitor_port)] if self.monitor_port else []),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-js",
            "-sd", str(self.store),
        ]  # fmt: skip


class OperatorNats(NatsServer):
    """NATS in operator mode with the accounts derived from ``account_key``, as the chart's
    NATS pod runs it (tasks/natsauth.py): only user JWTs signed with that key get in."""

    def __init__(self, workdir: Path, account_key: str) -> None:
        self.account_key = account_key
        config = Path(workdir) / "operator.conf"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(natsauth.server_config(self.keys))
        super().__init__(workdir, config=config)

    @property
    def keys(self) -> natsauth.AccountKeys:
        return natsauth.AccountKeys.from_secret(self.account_key)


RABBITMQ = ("127.0.0.1", 5672)


def rabbitmq_answers() -> bool:
    """Whether the machine's RabbitMQ (guest/guest, as Debian installs it) takes connections."""
    try:
        socket.create_connection(RABBITMQ, timeout=2).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of the machine's RabbitMQ for one run, deleted after it (the default vhost when
    rabbitmqctl is not at hand). RabbitMQ is too heavy to start per run, unlike Redis."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        yield "amqp://guest:guest@127.0.0.1:5672//"
        return
    vhost = f"warm-{uuid.uuid4().hex[:6]}"
    subprocess.run([ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    try:
        grant = [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]
        subprocess.run(grant, check=True, capture_output=True, timeout=60)
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60, check=False)
