"""The chart's per-part users, enforced by the real servers with the configuration it renders.

The NATS configuration and the Redis ACL users are taken from `helm template` output, the
keys and passwords from the rendered Secrets, and loaded into a real nats-server (operator mode,
its accounts written by the NATS pod's init container command) and redis-server. Every part but
the watcher gets its NATS user from the watcher's credentials exchange, with a token of its
pod's ServiceAccount (as rendered) from the API double, and the role the rendered
WARM_NATS_ROLES gives that account: what a worker's credentials can and cannot do is observed on
the servers, and a real node worker (``python -m worker`` with a real containerd) does its whole
job with nothing but them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery
from chart_helpers import NAMESPACE, REPO, Rendered, env_of, secret_data, template
from kombu.connection import Connection
from kubernetes import client

from beat.lease import LEADER_KEY, Lease
from localcluster import Containerd, FakeKubeAPI, Registry, free_port, product, push_image
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
from tasks.settings import NatsSettings, load_settings
from tasks.status import StatusStore
from watcher.exchange import PATH

# Real nats-server and redis-server processes with the chart's rendered config: the slow tier.
pytestmark = pytest.mark.slow

ROLES = ("watcher", "worker", "beat", "client")


# The parts with credentials of their own, and the component whose pod runs as each.
PARTS = {"worker": "worker", "beat": "beat", "client": "flower"}


@pytest.fixture(scope="module")
def chart(rendered: dict[str, Rendered]) -> Rendered:
    return rendered["default"]


def account_key(chart: Rendered) -> str:
    return secret_data(chart.get("Secret", "nats"))["account-key"]


def nats_server(
    chart: Rendered, workdir: Path, substitute: dict[str, str] | None = None
) -> NatsServer:
    """nats-server as the chart's NATS pod runs it: nats.conf in one folder, and the accounts
    its init container writes (its own command, with the key of the rendered Secret) in the
    folder that nats.conf includes; the flags give it a port and a store here."""
    folder = workdir / f"nats-{uuid.uuid4().hex[:6]}"
    (folder / "nats-config").mkdir(parents=True)
    (folder / "nats-auth").mkdir()
    [init] = chart.pod_spec("nats")["initContainers"]
    command = [part.replace("/etc/nats-auth/", f"{folder}/nats-auth/") for part in init["command"]]
    key = {"WARM_NATS_ACCOUNT_KEY": account_key(chart)}
    subprocess.run(
        [sys.executable if part == "python" else part for part in command],
        env={**os.environ, **key, "PYTHONPATH": str(REPO)},
        check=True,
        timeout=60,
    )
    config = secret_data(chart.get("Secret", "nats-config"))["nats.conf"]
    for old, new in (substitute or {}).items():
        config = config.replace(old, new)
    path = folder / "nats-config" / "nats.conf"
    path.write_text(re.sub(r"(?m)^(\s*)(port|http_port|store_dir):.*$", "", config))
    return NatsServer(folder, config=path)


@pytest.fixture(scope="module")
def nats(chart: Rendered, workdir: Path) -> Iterator[NatsServer]:
    with nats_server(chart, workdir) as server:
        yield server


@dataclass
class Exchange:
    """The watcher's credentials exchange as the chart configures it, on the API double."""

    kube: FakeKubeAPI
    url: str
    audience: str

    def token_for(self, chart: Rendered, component: str, node: str, folder: Path) -> Path:
        """A token of ``component``'s pod (its rendered ServiceAccount), running on ``node``,
        in the file the kubelet would project it to."""
        spec = chart.pod_spec(component)
        pod = f"{component}-{uuid.uuid4().hex[:6]}"
        body = {
            "metadata": {"name": pod},
            "spec": {
                "nodeName": node,
                "serviceAccountName": spec["serviceAccountName"],
                "containers": [{"name": component, "image": "warm-images:test"}],
            },
        }
        client.CoreV1Api(self.kube.api_client()).create_namespaced_pod(NAMESPACE, body)
        token = self.kube.issue_token(
            NAMESPACE, spec["serviceAccountName"], audiences=(self.audience,), pod=pod
        )
        path = folder / f"token-{pod}"
        path.write_text(token)
        return path


@pytest.fixture(scope="module")
def exchange(
    chart: Rendered, nats: NatsServer, redis_acl: RedisServer, workdir: Path
) -> Iterator[Exchange]:
    """``python -m watcher`` with the watcher's rendered settings (its key, its roles), on the
    API double: the exchange the other parts reach through the watcher's Service."""
    env = {name: entry.get("value") for name, entry in env_of(chart.container("watcher")).items()}
    [identity] = [v for v in chart.pod_spec("worker")["volumes"] if v["name"] == "nats-identity"]
    audience = identity["projected"]["sources"][0]["serviceAccountToken"]["audience"]
    port = free_port()
    kube = FakeKubeAPI().start()
    settings = {
        "WARM_NATS_ACCOUNT_KEY": account_key(chart),  # from the Secret, as the kubelet does
        "WARM_NATS_ROLES": str(env["WARM_NATS_ROLES"]),
        "WARM_NATS_CREDENTIALS_PORT": str(port),  # the rendered 8090 may be taken here
        "WARM_POD_NAMESPACE": NAMESPACE,
        "WARM_HEALTH_PORT": "0",
        "WARM_METRICS_PORT": "0",
    }
    environment = product.product_env(
        broker_url=broker_url(chart, redis_acl, "watcher"),
        nats_url=nats.url,
        kubeconfig=kube.write_kubeconfig(workdir / f"kubeconfig-{uuid.uuid4().hex[:6]}"),
        **settings,
    )
    watcher = product.watcher(environment, workdir / "logs").start()
    try:
        wait_for(lambda: _accepts(port), 30, "the watcher's credentials exchange", watcher.log_tail)
        yield Exchange(kube, f"http://127.0.0.1:{port}{PATH}", audience)
    finally:
        watcher.stop()
        kube.stop()


def part_env(
    chart: Rendered, exchange: Exchange, role: str, node: str, folder: Path
) -> dict[str, str]:
    """The NATS settings of ``role``'s pod as rendered, pointed at the test's exchange."""
    component = PARTS[role]
    env = env_of(chart.container(component))
    assert env["WARM_NATS_CREDENTIALS_URL"]["value"].endswith(PATH)
    token_file = exchange.token_for(chart, component, node, folder)
    return {
        "WARM_NATS_CREDENTIALS_URL": exchange.url,
        "WARM_NATS_IDENTITY_TOKEN_FILE": str(token_file),
    }


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
def bus_of(
    chart: Rendered, nats: NatsServer, exchange: Exchange, workdir: Path
) -> Iterator[Callable[..., NatsBus]]:
    """The bus of ``role``, a worker's on ``node``: the watcher's with the account key, the
    others' through the exchange, each with its pod's settings."""
    opened: dict[tuple[str, str], NatsBus] = {}

    def connect(role: str, node: str = "node-0") -> NatsBus:
        if (role, node) not in opened:
            env = {"WARM_NATS_URL": nats.url, "WARM_NATS_CONNECT_TIMEOUT": "2"}
            if role == "watcher":
                env["WARM_NATS_ACCOUNT_KEY"] = account_key(chart)
            else:
                env |= part_env(chart, exchange, role, node, workdir)
            opened[role, node] = NatsBus(load_settings(env).nats)
        return opened[role, node]

    yield connect
    for bus in opened.values():
        bus.close()


def broker_url(chart: Rendered, server: RedisServer, role: str) -> str:
    url = secret_data(chart.get("Secret", "redis"))[f"{role}-broker-url"]
    return re.sub(r"@[^/]+/", f"@127.0.0.1:{server.port}/", url)


def test_every_part_runs_as_its_own_user(chart: Rendered) -> None:
    """Its own Redis user; on NATS, the role the exchange maps its pod's account to."""
    roles = json.loads(env_of(chart.container("watcher"))["WARM_NATS_ROLES"]["value"])
    for component, role in (("worker", "worker"), ("beat", "beat"), ("flower", "client")):
        account = chart.pod_spec(component)["serviceAccountName"]
        assert roles[account] == role, component
    assert roles[chart.pod_spec("test")["serviceAccountName"]] == "client"
    assert chart.pod_spec("watcher")["serviceAccountName"] not in roles  # nobody gets its role
    for component, role in (("watcher", "watcher"), ("worker", "worker"), ("beat", "beat")):
        broker = env_of(chart.container(component))["WARM_BROKER_URL"]
        assert broker["valueFrom"]["secretKeyRef"]["key"] == f"{role}-broker-url"


def test_a_worker_cannot_write_another_nodes_status(bus_of: Callable[..., NatsBus]) -> None:
    """Each node's pod gets a user of its own from the exchange: node-a's writes its own
    status key and is refused node-b's, whose record stays node-b's."""
    node_a, node_b = f"node-{uuid.uuid4().hex[:6]}", f"node-{uuid.uuid4().hex[:6]}"
    image = "docker.io/library/a:1"
    StatusStore(bus_of("worker", node_b)).record_rewarm(node_b, [image], 1)
    worker_a = StatusStore(bus_of("worker", node_a))
    worker_a.record_rewarm(node_a, [image], 1, present=[image])
    with pytest.raises(BusUnavailable):  # the server refuses the publish; no JetStream ack comes
        worker_a.record_rewarm(node_b, [image], 1, present=[image])
    reader = StatusStore(bus_of("client"))
    assert (reader.get(node_a).warm_count, reader.get(node_b).warm_count) == (1, 0)


def test_a_worker_cannot_write_the_catalog_nor_announce_changes(
    bus_of: Callable[..., NatsBus],
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


def test_the_client_user_only_reads(bus_of: Callable[..., NatsBus]) -> None:
    client = bus_of("client")
    with pytest.raises(BusUnavailable):
        StatusStore(client).record_rewarm("node-x", ["docker.io/library/a:1"], 1)
    with pytest.raises(BusUnavailable):
        client.kv_delete(CATALOG_BUCKET, "nodes.anything")


def test_only_beat_holds_the_beat_lease(bus_of: Callable[..., NatsBus]) -> None:
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
    exchange: Exchange,
    bus_of: Callable[..., NatsBus],
    registry: Registry,
    workdir: Path,
) -> None:
    """Consume its queue, read its slice, pull, publish results, write its status."""
    image = push_image(registry.host, f"lp/app-{uuid.uuid4().hex[:4]}", "v1", size_mib=1)
    node_name = f"proc-{uuid.uuid4().hex[:6]}"
    with Containerd(
        workdir / f"lp{uuid.uuid4().hex[:4]}", "node", insecure_registries=[registry.host]
    ) as node:
        running = start_worker(
            node.endpoint,
            redis_acl,
            nats,
            workdir / "logs",
            node=node_name,
            WARM_BROKER_URL=broker_url(chart, redis_acl, "worker"),
            **part_env(chart, exchange, "worker", node_name, workdir),
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
    server = nats_server(tls_chart, workdir, {"/etc/nats-tls/": f"{certificates}/"})
    config_map = tls_chart.get("ConfigMap", "config")["data"]
    assert config_map["WARM_NATS_URL"].startswith("tls://")
    ca_file = config_map["WARM_NATS_TLS_CA_FILE"]
    mounts = {m["mountPath"]: m["name"] for m in tls_chart.container("watcher")["volumeMounts"]}
    assert mounts[str(Path(ca_file).parent)] == "nats-ca"
    with server:
        url = server.url.replace("nats://", "tls://")
        secure = NatsSettings(
            url=url,
            account_key=account_key(tls_chart),
            tls_ca_file=str(certificates / "ca.crt"),
            connect_timeout=2,
        )
        with NatsBus(secure) as bus:
            CatalogStore(bus).put_slice(NodeSlice("n1", (SliceImage("docker.io/library/a:1"),)))
        plain = replace(secure, url=server.url, tls_ca_file=None, connect_timeout=1)
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
