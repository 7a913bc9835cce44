"""A real Docker Engine (Debian's docker.io dockerd) for one test run, beside the host's.

The node worker's Docker driver talks to dockerd's Engine API; the only honest test is a real
dockerd. This one keeps everything of its own under `workdir`: data root, exec root (where it
starts its own containerd), pid file and API socket, and touches no host networking
(``--iptables=false --bridge=none``), so it runs next to the machine's services and the tests'
containerds. The local registry is named as an insecure registry, so pulls go over plain http.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from localcluster._lifecycle import Service
from localcluster._process import Daemon, wait_until
from localcluster.containerd import MAX_SOCKET_PATH, _detach_mounts_under
from localcluster.packages import require_binary

_CONTAINERD_SOCKET = "containerd/containerd.sock.ttrpc"  # under exec-root: the longest path


class DockerDaemon(Service):
    """dockerd with its own data root, exec root and socket under workdir/name."""

    def __init__(
        self, workdir: Path, name: str = "docker", *, insecure_registries: Sequence[str] = ()
    ) -> None:
        self.dir = Path(workdir).absolute() / name
        self.insecure_registries = list(insecure_registries)
        self.socket = self.dir / "docker.sock"
        self.endpoint = f"unix://{self.socket}"
        longest = self.dir / "x" / _CONTAINERD_SOCKET
        if len(os.fsencode(str(longest))) > MAX_SOCKET_PATH:
            raise ValueError(f"{self.dir} is too long for dockerd's sockets: use a short workdir")
        self._daemon = Daemon(
            f"dockerd[{name}]", [], self.dir / "dockerd.log", cleanup=self._cleanup
        )

    @property
    def log_path(self) -> Path:
        return self._daemon.log_path

    def start(self, timeout: float = 30.0) -> DockerDaemon:
        """Start dockerd and wait until its API answers on the socket."""
        if os.geteuid() != 0:
            raise RuntimeError("dockerd mounts overlays and needs root")
        binary = require_binary("dockerd")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        registries = [
            arg for host in self.insecure_registries for arg in ("--insecure-registry", host)
        ]
        self._daemon.argv = [
            binary,
            "--data-root", str(self.dir / "data"),
            "--exec-root", str(self.dir / "x"),
            "--pidfile", str(self.dir / "dockerd.pid"),
            "-H", self.endpoint,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            # Its own containerd namespaces: never mix with a host dockerd's containers.
            "--containerd-namespace", f"lc-{self.dir.name}",
            "--containerd-plugins-namespace", f"lc-{self.dir.name}-plugins",
            *registries,
        ]  # fmt: skip
        self._daemon.start()
        try:
            wait_until(self._daemon, self._answers, timeout, "API answer on its socket")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM dockerd (it stops its containerd), SIGKILL after a grace. Idempotent."""
        self._daemon.stop(grace=15.0)

    def running(self) -> bool:
        return self._daemon.alive()

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        import docker

        try:
            client = docker.APIClient(base_url=self.endpoint, version="auto", timeout=2)
        except docker.errors.DockerException:
            return False
        client.close()
        return True

    def _cleanup(self) -> None:
        _detach_mounts_under(self.dir)

    def remove_data(self) -> None:
        """Delete the data root (after stop()): a test run's images take disk."""
        shutil.rmtree(self.dir / "data", ignore_errors=True)

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"<DockerDaemon {state} {self.endpoint}>"
