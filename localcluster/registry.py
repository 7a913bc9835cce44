"""A real OCI registry (Debian's docker-registry, i.e. distribution 2.8) on a loopback port.

Node workers pull through containerd, and containerd pulls from a registry over HTTP: faking the
registry would test nothing of that path. The real one starts in well under a second, keeps its
blobs under a directory of the test's, and can require basic auth from an htpasswd file, which is
what the private-registry tests need, or tokens from a :class:`TokenServer` (the Bearer flow of
Docker Hub and most hosted registries). pause()/resume() stop and restart it on the same port and
storage, for tests of "the registry went down, then came back".
"""

from __future__ import annotations

import importlib
import json
import secrets
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from localcluster._lifecycle import Service
from localcluster._process import Daemon, wait_until
from localcluster.packages import require_binary
from localcluster.ports import free_port
from localcluster.token_auth import TokenServer

_PORT_ATTEMPTS = 5
_PORT_TAKEN = "address already in use"


class Registry(Service):
    """docker-registry serving 127.0.0.1:<free port>, with storage under `workdir`.

    `htpasswd` maps user names to passwords; when given, every request needs basic auth.
    `token`: every request needs a token of that server instead. `storage`: another registry's
    storage, to serve the images pushed there (behind other auth).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        htpasswd: dict[str, str] | None = None,
        token: TokenServer | None = None,
        storage: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.users: dict[str, str] = dict(htpasswd or {})
        self.token = token
        self._storage = Path(storage).absolute() if storage else self.workdir / "storage"
        self.port: int | None = None
        # Fixed per instance so that a resume() keeps upload state signed by the same secret.
        self._secret = secrets.token_hex(16)
        self._daemon = Daemon("docker-registry", [], self.workdir / "registry.log")

    @property
    def host(self) -> str:
        """host:port, as it appears in image references ("127.0.0.1:PORT/repo:tag")."""
        if self.port is None:
            raise RuntimeError("registry not started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage(self) -> Path:
        return self._storage

    @property
    def log_path(self) -> Path:
        """The registry's log, access log included (one line per request)."""
        return self._daemon.log_path

    @property
    def auth(self) -> tuple[str, str] | None:
        """Some valid (user, password), for push_image(auth=...); None without htpasswd."""
        return next(iter(self.users.items()), None)

    def start(self, timeout: float = 10.0) -> Registry:
        """Start on a free port and wait until /v2/ answers (200, or 401 with htpasswd)."""
        if self.running():
            raise RuntimeError(f"registry already running on {self.host}")
        binary = require_binary("docker-registry")
        self._daemon.argv = [binary, "serve", str(self.workdir / "config.yml")]
        self.storage.mkdir(parents=True, exist_ok=True)
        if self.users:
            _write_htpasswd(self.workdir / "htpasswd", self.users)
        for attempt in range(_PORT_ATTEMPTS):
            self.port = free_port()
            try:
                self._serve(timeout)
                return self
            except RuntimeError:
                # free_port() races with every other process on the machine: pick another.
                if _PORT_TAKEN not in self._daemon.log_tail() or attempt == _PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the registry (SIGTERM, then SIGKILL). Idempotent; storage is kept."""
        self._daemon.stop()

    def pause(self) -> None:
        """Take the registry down, keeping its port and storage for resume()."""
        self._daemon.stop()

    def resume(self, timeout: float = 10.0) -> None:
        """Bring a paused registry back on the same port, with the same images."""
        if self.port is None:
            raise RuntimeError("registry was never started")
        if not self._daemon.alive():
            self._serve(timeout)

    def running(self) -> bool:
        return self._daemon.alive()

    @property
    def pid(self) -> int | None:
        """Process id of the registry while it was last started."""
        return self._daemon.pid

    def _serve(self, timeout: float) -> None:
        self._write_config()
        self._daemon.start()
        try:
            wait_until(self._daemon, self._answers, timeout, f"answer on {self.url}/v2/")
        except BaseException:
            self._daemon.stop()
            raise

    def _write_config(self) -> None:
        # JSON is YAML, and json.dumps quotes paths safely.
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                # A background purge of uploads would race with slow tests' pushes.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": self._secret},
        }
        if self.token is not None:
            config["auth"] = self.token.registry_auth()
        elif self.users:
            config["auth"] = {
                "htpasswd": {"realm": "localcluster", "path": str(self.workdir / "htpasswd")}
            }
        (self.workdir / "config.yml").write_text(json.dumps(config, indent=2) + "\n")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=1.0) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except OSError:
            return False

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"<Registry {self.port and self.host} {state} workdir={self.workdir}>"


def _write_htpasswd(path: Path, users: dict[str, str]) -> None:
    lines = [_htpasswd_line(user, password) for user, password in users.items()]
    path.write_text("".join(f"{line}\n" for line in lines))
    path.chmod(0o600)


def _htpasswd_line(user: str, password: str) -> str:
    """One bcrypt entry: the only hash the registry's htpasswd auth accepts."""
    if not user or ":" in user:
        raise ValueError(f"invalid htpasswd user name {user!r}")
    try:
        bcrypt = importlib.import_module("bcrypt")
    except ImportError:
        return _htpasswd_tool_line(user, password)
    hashed: bytes = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
    return f"{user}:{hashed.decode()}"


def _htpasswd_tool_line(user: str, password: str) -> str:
    # -i reads the password from stdin, which keeps it out of `ps` (same as -nbB otherwise).
    proc = subprocess.run(
        [require_binary("htpasswd"), "-niB", user],
        input=password,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    line = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not line.startswith(f"{user}:"):
        raise RuntimeError(f"htpasswd failed ({proc.returncode}): {proc.stderr.strip()}")
    return line
