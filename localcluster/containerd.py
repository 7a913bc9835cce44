"""One real containerd per simulated node, side by side on one machine.

The node worker talks to its runtime through the CRI ImageService over a unix socket, exactly as
on a real node; so each simulated node gets a real containerd (Debian's 1.6) with its own root,
state, opt directory and sockets under `workdir/name`, and the CRI plugin set up the way kubelet
expects it: overlayfs snapshotter, and a registry config_path whose certs.d holds one hosts.toml
per insecure registry so pulls from the local registry go over plain http.

containerd mounts overlays while it unpacks layers and must run as root; a stray daemon keeps
those mounts and its socket busy. So it runs in its own process group that stop() (and an atexit
hook) kills as a whole, and stop() detaches any mount left under its directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import grpc

from localcluster._lifecycle import Service
from localcluster._process import Daemon, wait_until
from localcluster.packages import require_binary

# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
CRI_NAMESPACE = "k8s.io"
_TTRPC_SUFFIX = ".ttrpc"
# A CRI call that needs no image: it answers only once the CRI service is initialised.
_CRI_VERSION = "/runtime.v1.RuntimeService/Version"
# Snapshotters this machine does not have: skipping them keeps the log free of noise.
_DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
)


class Containerd(Service):
    """containerd with its own root, state, sockets and CRI registry config under workdir/name."""

    def __init__(
        self, workdir: Path, name: str, *, insecure_registries: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.dir = Path(workdir).absolute() / name  # unix:// endpoints need absolute paths
        self.insecure_registries = list(insecure_registries)
        self.socket = self.dir / "containerd.sock"
        self.endpoint = f"unix://{self.socket}"
        self._check_socket_path()
        self._daemon = Daemon(
            f"containerd[{name}]",
            [],
            self.dir / "containerd.log",
            cleanup=lambda: _detach_mounts_under(self.dir),
        )

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def config_path(self) -> Path:
        return self.dir / "containerd.toml"

    @property
    def certs_dir(self) -> Path:
        return self.dir / "certs.d"

    @property
    def log_path(self) -> Path:
        return self._daemon.log_path

    def start(self, timeout: float = 20.0) -> Containerd:
        """Start and wait until the CRI plugin is "ok" and CRI answers over the socket."""
        if self.running():
            raise RuntimeError(f"{self!r} is already running")
        binary = require_binary("containerd")
        if os.geteuid() != 0:
            raise RuntimeError("containerd mounts overlays and needs root")
        self._prepare()
        self._daemon.argv = [binary, "--config", str(self.config_path)]
        self._daemon.start()
        try:
            wait_until(self._daemon, self.socket.exists, timeout, "socket")
            wait_until(self._daemon, self._cri_plugin_ok, timeout, "CRI plugin ok")
            wait_until(self._daemon, self._cri_answers, timeout, "CRI answer")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the daemon's group, SIGKILL after a grace period, detach mounts. Idempotent."""
        self._daemon.stop()  # its cleanup detaches the mounts

    def running(self) -> bool:
        return self._daemon.alive()

    @property
    def pid(self) -> int | None:
        """Process id of containerd while it was last started."""
        return self._daemon.pid

    def add_insecure_registry(self, host: str) -> None:
        """Allow plain-http pulls from `host`; containerd reads certs.d on every pull."""
        _write_hosts_toml(self.certs_dir, host)
        if host not in self.insecure_registries:
            self.insecure_registries.append(host)

    def ctr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `ctr` against this containerd in the CRI namespace (k8s.io)."""
        argv = [require_binary("ctr"), "--address", str(self.socket), "-n", CRI_NAMESPACE]
        return subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def image_refs(self) -> set[str]:
        """References of the images this node holds (what CRI and kubelet see)."""
        proc = self.ctr("images", "ls", "-q")
        if proc.returncode != 0:
            raise RuntimeError(f"ctr images ls failed: {proc.stderr.strip()}")
        return set(proc.stdout.split())

    def ingests(self) -> dict[str, tuple[int, int]]:
        """Downloads in progress in the content store: ingest ref -> (bytes written, expected).

        Read from the store's files, so a drill sees a layer mid-download as containerd does,
        not after the registry logged the finished request.
        """
        found = {}
        for ingest in (self.root / "io.containerd.content.v1.content" / "ingest").glob("*"):
            try:
                ref = (ingest / "ref").read_text()
                written = (ingest / "data").stat().st_size
                total = (ingest / "total").read_text().strip()
            except OSError:  # finished (moved into the store) while being read
                continue
            found[ref] = (written, int(total or 0))
        return found

    def _check_socket_path(self) -> None:
        longest = f"{self.socket}{_TTRPC_SUFFIX}"
        if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"socket path {longest!r} is {len(os.fsencode(longest))} bytes, over the "
                f"{MAX_SOCKET_PATH}-byte limit of unix sockets: use a short workdir such as "
                "tempfile.mkdtemp(prefix='lc-', dir='/tmp')"
            )

    def _prepare(self) -> None:
        for path in (self.root, self.state, self.dir / "opt", self.dir / "cni" / "net.d"):
            path.mkdir(parents=True, exist_ok=True)
        # A socket left by a killed daemon would make the readiness check pass too early.
        for stale in (self.socket, Path(f"{self.socket}{_TTRPC_SUFFIX}")):
            stale.unlink(missing_ok=True)
        for host in self.insecure_registries:
            _write_hosts_toml(self.certs_dir, host)
        self.certs_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config())

    def _config(self) -> str:
        q = json.dumps  # a JSON string is a valid TOML basic string
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        return "\n".join(
            [
                "version = 2",
                f"root = {q(str(self.root))}",
                f"state = {q(str(self.state))}",
                f"disabled_plugins = {json.dumps(list(_DISABLED_PLUGINS))}",
                "[grpc]",
                f"  address = {q(str(self.socket))}",
                "[ttrpc]",
                f"  address = {q(str(self.socket) + _TTRPC_SUFFIX)}",
                '[plugins."io.containerd.internal.v1.opt"]',
                f"  path = {q(str(self.dir / 'opt'))}",
                cri,
                # Ephemeral port: several nodes must not fight over the streaming server.
                '  stream_server_address = "127.0.0.1"',
                '  stream_server_port = "0"',
                f"{cri[:-1]}.containerd]",
                '  snapshotter = "overlayfs"',
                # CRI creates and watches conf_dir: keep it off the host's /etc/cni.
                f"{cri[:-1]}.cni]",
                f"  bin_dir = {q(str(self.dir / 'cni' / 'bin'))}",
                f"  conf_dir = {q(str(self.dir / 'cni' / 'net.d'))}",
                f"{cri[:-1]}.registry]",
                f"  config_path = {q(str(self.certs_dir))}",
                "",
            ]
        )

    def _cri_plugin_ok(self) -> bool:
        proc = subprocess.run(
            [require_binary("ctr"), "--address", str(self.socket), "plugins", "ls"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return any(
            line.split()[:2] == ["io.containerd.grpc.v1", "cri"] and line.split()[-1] == "ok"
            for line in proc.stdout.splitlines()
        )

    def _cri_answers(self) -> bool:
        # Raw bytes in and out: an empty VersionRequest needs no generated protobuf stubs.
        with grpc.insecure_channel(self.endpoint) as channel:
            version = channel.unary_unary(
                _CRI_VERSION, request_serializer=None, response_deserializer=None
            )
            try:
                version(b"", timeout=2.0)
            except grpc.RpcError:
                return False
        return True

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"<Containerd {self.name} {state} {self.endpoint}>"


def _write_hosts_toml(certs_dir: Path, host: str) -> None:
    """Tell the CRI plugin to reach `host` over plain http, for pull and resolve."""
    server = json.dumps(f"http://{host}")
    folder = certs_dir / host
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hosts.toml").write_text(
        f'server = {server}\n[host.{server}]\n  capabilities = ["pull", "resolve"]\n'
    )


def _detach_mounts_under(directory: Path) -> None:
    """Lazily unmount whatever is still mounted under `directory`, deepest first."""
    prefix = f"{os.path.realpath(directory)}/"
    mounts = [m for m in _mount_points() if m.startswith(prefix)]
    for mount in sorted(mounts, key=len, reverse=True):
        # Lazy: a mount still busy (a stuck unpack) is detached now and freed when released.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30, check=False)


def _mount_points() -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    # Field 5 is the mount point; space, tab, newline and backslash come as octal escapes.
    return [_unescape_mountinfo(line.split()[4]) for line in lines if len(line.split()) > 4]


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
