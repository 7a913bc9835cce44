"""The chart's per-part users, enforced by the real servers with the configuration it renders.

The NATS configuration and the Redis ACL users are taken from `helm template` output, the
passwords from the rendered Secrets, and loaded into a real nats-server and redis-server: what
a worker's credentials can and cannot do is observed on the servers, and a real node worker
(``python -m worker`` with a real containerd) does its whole job with nothing but them.
"""

from __future__ import annotations

import re
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery
from chart_helpers import Rendered, secret_data, template
from kombu.connection import Connection

from beat.lease import LEADER_KEY, Lease
from localcluster import Containerd, Registry, free_port, product, push_image
from localcluster._process import Daemon, wait_until
from localcluster.harness import WARM_TIMEOUT, Events, start_worker, wait_for
from localcluster.services import NatsServer, RedisServer
from tasks.bus import BusUnavailable, NatsBus
from tasks.catalog import CatalogStore
from tasks.models import CatalogEntry, NodeSlice, Outcome, SliceImage
from tasks.names import (
    BEAT_BUCKET,
    CATALOG_BUCKET,
    CATALOG_EVENTS,
    PULL_IMAGE,
    REWARM_NODE,
    pull_events_subject,
    rewarm_events_subject,
)
from tasks.routing import queue_for_node
from tasks.settings import NatsSettings
from tasks.status import StatusStore

# Real nats-server and redis-server processes with the chart's rendered config: the slow tier.
pytestmark = pytest.mark.slow

ROLES = ("watcher", "worker", "beat", "client")


def passwords(rendered: Rendered, component: str) -> dict[str, str]:
    data = secret_data(rendered.get("Secret", component))
    return {role: data[f"{role}-password"] for role in ROLES}


@pytest.fixture(scope="module")
def chart(rendered: dict[str, Rendered]) -> Rendered:
    return rendered["default"]


@pytest.fixture(scope="module")
def nats(chart: Rendered, workdir: Path) -> Iterator[NatsServer]:
    """nats-server with the chart's nats.conf; the flags give it a port and a store here."""
    config = secret_data(chart.get("Secret", "nats-config"))["nats.conf"]
    for role, password in passwords(chart, "nats").items():  # the pod has them in its env
        config = config.replace(f"$NATS_{role.upper()}_PASSWORD", f'"{password}"')
    path = workdir / f"nats-{uuid.uuid4().hex[:6]}.conf"
    path.write_text(re.sub(r"(?m)^(\s*)(port|http_port|store_dir):.*$", "", config))
    with NatsServer(path.with_suffix(""), config=path) as server:
        yield server


@pytest.fixture(scope="module")
def redis_acl(chart: Rendered, workdir: Path) -> Iterator[RedisServer]:
    """redis-server with the configuration the chart's Redis pod feeds it on stdin."""
    script = chart.container("redis")["command"][-1]
    config = script.split("<<EOF\n", 1)[1].split("\nEOF", 1)[0]
    secret = secret_data(chart.get("Secret", "redis"))
    values = {"REDIS_PASSWORD": secret["redis-password"]}
    values |= {f"REDIS_{role.upper()}_PASSWORD": secret[f"{role}-password"] for role in ROLES}
    config = re.sub(r"\$\{(\w+)\}", lambda match: values[match.group(1)], config)
    config = re.sub(r"(?m)^(bind|port|dir) .*$", "", config)  # the pod's; the flags give ours
    path = workdir / f"redis-{uuid.uuid4().hex[:6]}.conf"
    path.write_text(config)
    with RedisServer(path.with_suffix(""), config=path) as server:
        yield server


@pytest.fixture(scope="module")
def bus_of(chart: Rendered, nats: NatsServer) -> Iterator[Callable[[str], NatsBus]]:
    opened: dict[str, NatsBus] = {}
    secrets = passwords(chart, "nats")

    def connect(role: str) -> NatsBus:
        if role not in opened:
            settings = NatsSettings(
                url=nats.url, user=f"warm-{role}", password=secrets[role], connect_timeout=2
            )
            opened[role] = NatsBus(settings)
        return opened[role]

    yield connect
    for bus in opened.values():
        bus.close()


def broker_url(chart: Rendered, server: RedisServer, role: str) -> str:
    url = secret_data(chart.get("Secret", "redis"))[f"{role}-broker-url"]
    return re.sub(r"@[^/]+/", f"@127.0.0.1:{server.port}/", url)


def test_every_part_runs_as_its_own_user(chart: Rendered) -> None:
    for component, role in (("watcher", "watcher"), ("worker", "worker"), ("beat", "beat")):
        env = {e["name"]: e for e in chart.container(component)["env"]}
        assert env["WARM_NATS_USER"]["value"] == f"warm-{role}"
        assert env["WARM_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == f"{role}-password"
        broker = env["WARM_BROKER_URL"]["valueFrom"]["secretKeyRef"]["key"]
        assert broker == f"{role}-broker-url"
    for component in ("flower", "test"):
        env = {e["name"]: e for e in chart.container(component)["env"]}
        assert env["WARM_NATS_USER"]["value"] == "warm-client"


def test_a_worker_cannot_write_the_catalog_nor_announce_changes(
    bus_of: Callable[[str], NatsBus],
) -> None:
    watcher, worker, client = bus_of("watcher"), bus_of("worker"), bus_of("client")
    node = f"node-{uuid.uuid4().hex[:6]}"
    CatalogStore(watcher).put_slice(NodeSlice(node, (SliceImage("docker.io/library/a:1"),)))
    announced: list[bytes] = []
    client.subscribe(CATALOG_EVENTS, lambda _subject, data: announced.append(data))
    client.flush()

    with pytest.raises(BusUnavailable):  # the server refuses the publish; no JetStream ack comes
        CatalogStore(worker).put_slice(NodeSlice(node, (SliceImage("evil.example/x:1"),)))
    with pytest.raises(BusUnavailable):
        CatalogStore(worker).put_entry(CatalogEntry(image="evil.example/x:1"))
    worker.publish(CATALOG_EVENTS, b'{"forged": true}')
    worker.flush()
    watcher.publish(CATALOG_EVENTS, b'{"real": true}')
    wait_for(lambda: bool(announced), 5, "the watcher's catalog event")

    # What the node reads is still the watcher's slice, and only the watcher's event went out.
    node_slice, _ = CatalogStore(client).get_slice(node)
    assert [image.image for image in node_slice.images] == ["docker.io/library/a:1"]
    assert announced == [b'{"real": true}']
    # The worker still reads its slice: the catalog is readable, only not writable.
    assert CatalogStore(worker).get_slice(node)[0] == node_slice


def test_the_client_user_only_reads(bus_of: Callable[[str], NatsBus]) -> None:
    client = bus_of("client")
    with pytest.raises(BusUnavailable):
        StatusStore(client).record_rewarm("node-x", ["docker.io/library/a:1"], 1)
    with pytest.raises(BusUnavailable):
        client.kv_delete(CATALOG_BUCKET, "nodes.anything")


def test_only_beat_holds_the_beat_lease(bus_of: Callable[[str], NatsBus]) -> None:
    """The lease that lets one beat dispatch re-warms for every node: beat's user takes it, a
    worker's cannot break it."""
    lease = Lease(bus_of("beat"), ttl=30)
    assert lease.hold()
    with pytest.raises(BusUnavailable):
        bus_of("worker").kv_delete(BEAT_BUCKET, LEADER_KEY)
    found = bus_of("client").kv_get(BEAT_BUCKET, LEADER_KEY)
    assert found is not None and lease.holder.encode() in found[0]
    lease.release()


def test_a_worker_user_cannot_flush_reconfigure_or_scan_redis(
    chart: Rendered, redis_acl: RedisServer
) -> None:
    worker = redis.Redis.from_url(broker_url(chart, redis_acl, "worker"))
    assert worker.ping()
    for command in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("KEYS", "*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.execute_command(*command)
    # The default user (the Redis pod's probes) keeps every right, with its own password.
    password = secret_data(chart.get("Secret", "redis"))["redis-password"]
    admin = redis.Redis(port=redis_acl.port, password=password, decode_responses=True)
    assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    worker.close()
    admin.close()


def test_a_worker_with_its_own_credentials_only_does_its_whole_job(
    chart: Rendered,
    redis_acl: RedisServer,
    nats: NatsServer,
    bus_of: Callable[[str], NatsBus],
    registry: Registry,
    workdir: Path,
) -> None:
    """Consume its queue, read its slice, pull, publish results, write its status."""
    image = push_image(registry.host, f"lp/app-{uuid.uuid4().hex[:4]}", "v1", size_mib=1)
    nats_password = passwords(chart, "nats")["worker"]
    with Containerd(
        workdir / f"lp{uuid.uuid4().hex[:4]}", "node", insecure_registries=[registry.host]
    ) as node:
        running = start_worker(
            node.endpoint,
            redis_acl,
            nats,
            workdir / "logs",
            WARM_BROKER_URL=broker_url(chart, redis_acl, "worker"),
            WARM_NATS_USER="warm-worker",
            WARM_NATS_PASSWORD=nats_password,
        )
        try:
            CatalogStore(bus_of("watcher")).put_slice(
                NodeSlice(running.node, (SliceImage(image.ref),))
            )
            events = Events.follow(bus_of("client"), pull_events_subject(running.node))
            sender = Celery("watcher", broker=broker_url(chart, redis_acl, "watcher"))
            sender.conf.update(task_serializer="json", accept_content=["json"])

            def send(task: str, **kwargs: object) -> None:
                kwargs["node"] = running.node
                sender.send_task(task, kwargs=kwargs, queue=queue_for_node(running.node))

            send(PULL_IMAGE, image=image.ref)
            events.wait_for(
                lambda: any(e.outcome is Outcome.PULLED for e in events.of(image.ref)),
                WARM_TIMEOUT,
                "the pull through the worker's own credentials",
            )
            # A re-warm reports after writing the node's status: then the status is there. The
            # watcher's user follows the report, as `rewarm --wait` run in its pod does.
            reports: list[bytes] = []
            bus_of("watcher").subscribe(
                rewarm_events_subject(running.node), lambda _s, data: reports.append(data)
            )
            bus_of("watcher").flush()
            send(REWARM_NODE, revision=0)
            wait_for(lambda: bool(reports), WARM_TIMEOUT, "the re-warm's report")
            status = StatusStore(bus_of("client")).get(running.node)
            # The compact record: one image answered, warm, nothing failing.
            assert (status.expected_count, status.warm_count) == (1, 1)
            assert image.ref not in status.images
            assert image.ref in node.image_refs()
            assert "Permissions Violation" not in running.process.log_tail(50_000)
            sender.close()
        finally:
            running.stop()


def test_flower_as_rendered_watches_but_sends_nothing(
    chart: Rendered, redis_acl: RedisServer, nats: NatsServer, workdir: Path
) -> None:
    """Flower with the chart's environment and the client's broker user: a viewer logs in and
    reads; sending a task (what could make a worker act) is refused and nothing is queued."""
    env = {e["name"]: e.get("value") for e in chart.container("flower")["env"]}
    basic_auth = secret_data(chart.get("Secret", "flower"))["basic-auth"]
    user, password = basic_auth.split(":", 1)
    port = free_port()
    settings = {
        "FLOWER_READ_ONLY": str(env["FLOWER_READ_ONLY"]),
        "FLOWER_BASIC_AUTH": basic_auth,
        "FLOWER_PORT": str(port),
        "FLOWER_ADDRESS": "127.0.0.1",
    }
    environment = product.product_env(
        broker_url=broker_url(chart, redis_acl, "client"),
        nats_url=nats.url,
        kubeconfig=None,
        **settings,
    )
    flower = product.celery("flower-ro", ["flower"], environment, workdir / "logs").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/healthcheck"), 30, "Flower", flower.log_tail)
        assert requests.get(f"{url}/api/workers", timeout=10).status_code == 401
        assert requests.get(f"{url}/api/workers", auth=(user, password), timeout=30).ok
        node = f"node-{uuid.uuid4().hex[:6]}"
        sent = requests.post(
            f"{url}/api/task/send-task/{PULL_IMAGE}",
            json={"kwargs": {"node": node, "image": "evil.example/x:1"}},
            auth=(user, password),
            timeout=10,
        )
        assert sent.status_code == 403, sent.text
        admin_password = secret_data(chart.get("Secret", "redis"))["redis-password"]
        admin = redis.Redis(port=redis_acl.port, password=admin_password)
        assert admin.llen(queue_for_node(node)) == 0
        admin.close()
    finally:
        flower.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


# -------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificates(workdir: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1, laid out as cert-manager writes a
    kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt)."""
    folder = workdir / f"tls-{uuid.uuid4().hex[:6]}"
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=warm-ca",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "tls.key", "-out", "tls.csr")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "tls.crt")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def tls_chart(helm: Path) -> Rendered:
    args = ["--set", "nats.tls.enabled=true", "--set", "nats.tls.secretName=nats-tls"]
    args += ["--set", "redis.tls.enabled=true", "--set", "redis.tls.secretName=redis-tls"]
    result = template(helm, *args)
    assert result.returncode == 0, result.stderr
    return Rendered.parse("tls", result.stdout)


def test_bundled_nats_over_tls_with_a_certificate_secret(
    tls_chart: Rendered, certificates: Path, workdir: Path
) -> None:
    config = secret_data(tls_chart.get("Secret", "nats-config"))["nats.conf"]
    config = config.replace("/etc/nats-tls/", f"{certificates}/")
    for role, password in passwords(tls_chart, "nats").items():
        config = config.replace(f"$NATS_{role.upper()}_PASSWORD", f'"{password}"')
    path = workdir / f"nats-tls-{uuid.uuid4().hex[:6]}.conf"
    path.write_text(re.sub(r"(?m)^(\s*)(port|http_port|store_dir):.*$", "", config))
    settings = {e["name"]: e.get("value") for e in tls_chart.container("watcher")["env"]}
    config_map = tls_chart.get("ConfigMap", "config")["data"]
    assert config_map["WARM_NATS_URL"].startswith("tls://")
    ca_file = config_map["WARM_NATS_TLS_CA_FILE"]
    mounts = {m["mountPath"]: m["name"] for m in tls_chart.container("watcher")["volumeMounts"]}
    assert mounts[str(Path(ca_file).parent)] == "nats-ca"
    with NatsServer(path.with_suffix(""), config=path) as server:
        url = server.url.replace("nats://", "tls://")
        secure = NatsSettings(
            url=url,
            user=str(settings["WARM_NATS_USER"]),
            password=passwords(tls_chart, "nats")["watcher"],
            tls_ca_file=str(certificates / "ca.crt"),
            connect_timeout=2,
        )
        with NatsBus(secure) as bus:
            CatalogStore(bus).put_slice(NodeSlice("n1", (SliceImage("docker.io/library/a:1"),)))
        plain = NatsSettings(url=server.url, user="warm-watcher", password="x", connect_timeout=1)
        with pytest.raises(BusUnavailable), NatsBus(plain) as bus:
            bus.kv_get(CATALOG_BUCKET, "nodes.n1")


def test_bundled_redis_over_tls_with_a_certificate_secret(
    tls_chart: Rendered, certificates: Path, workdir: Path
) -> None:
    script = tls_chart.container("redis")["command"][-1]
    config = script.split("<<EOF\n", 1)[1].split("\nEOF", 1)[0]
    secret = secret_data(tls_chart.get("Secret", "redis"))
    values = {"REDIS_PASSWORD": secret["redis-password"]}
    values |= {f"REDIS_{role.upper()}_PASSWORD": secret[f"{role}-password"] for role in ROLES}
    config = re.sub(r"\$\{(\w+)\}", lambda match: values[match.group(1)], config)
    config = config.replace("/etc/redis-tls/", f"{certificates}/")
    config = re.sub(r"(?m)^(bind|port|tls-port|dir) .*$", "", config)
    folder = workdir / f"redis-tls-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "redis.conf").write_text(config)
    port = free_port()
    argv = ["redis-server", str(folder / "redis.conf"), "--bind", "127.0.0.1", "--port", "0",
            "--tls-port", str(port), "--dir", str(folder)]  # fmt: skip
    daemon = Daemon("redis-tls", argv, folder / "redis.log")
    daemon.start()
    try:
        wait_until(daemon, lambda: _accepts(port), 15, f"redis over TLS on {port}")
        url = secret["worker-broker-url"]
        assert url.startswith("rediss://warm-worker:") and "ssl_cert_reqs=required" in url
        url = re.sub(r"@[^/]+/", f"@127.0.0.1:{port}/", url)
        url = url.replace("/etc/warm-images/redis-ca/", f"{certificates}/")
        # The product's path: kombu reads the ssl_* parameters of the rediss:// URL.
        with Connection(url) as connection, connection.SimpleQueue("warm.node.tls") as queue:
            queue.put({"hello": "tls"})
            assert queue.get(timeout=5).payload == {"hello": "tls"}
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis(port=port, socket_timeout=2).ping()  # no plain text spoken
    finally:
        daemon.stop()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True
