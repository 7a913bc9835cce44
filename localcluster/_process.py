"""Child processes that never outlive the Python process that started them.

A test that fails half-way, a Ctrl-C in the demo or a pytest timeout must not leave registries
and containerd daemons running: they hold ports, sockets and overlay mounts that break the next
run. So every daemon runs in its own session (its own process group), is stopped by signalling
the whole group, and an atexit hook stops whatever is still running when the interpreter exits.

The group is only signalled while its leader has not been reaped: a zombie leader still holds its
pid, so the group id cannot have been reused by some unrelated process.

atexit does not run when the Python process is SIGKILLed (a CI time limit, a hung run killed by
hand). For that, a daemon started from the main thread is also launched through
`setpriv --pdeathsig KILL`, so the kernel kills it when its parent dies. Only from the main
thread: the kernel's "parent" is the forking thread, and a worker thread that exits would take
its daemons with it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_POLL = 0.02
_live: set[Daemon] = set()
_live_lock = threading.Lock()


class Daemon:
    """One long-running child process, logging to a file, stopped together with its group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        # Runs after every stop(), the atexit one included (e.g. to detach leftover mounts).
        self.cleanup = cleanup
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    def start(self, env: Mapping[str, str] | None = None) -> None:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # The log is appended to across restarts; errors quote this run's part only.
            self._log_offset = log.tell()
            self._popen = subprocess.Popen(
                [*_die_with_parent(), *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else dict(env),
            )
        with _live_lock:
            _live.add(self)

    def alive(self) -> bool:
        """True while the leader runs; checked without reaping it (see module docstring)."""
        popen = self._popen
        if popen is None or popen.returncode is not None:
            return False
        try:
            info = os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return info is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, SIGKILL it after `grace` seconds, then reap. Idempotent."""
        popen = self._popen
        if popen is not None and popen.returncode is None:
            self._signal_group(signal.SIGTERM)
            self._wait_exit(grace)
            # Also takes down anything the daemon left in its group after it exited itself.
            self._signal_group(signal.SIGKILL)
            popen.wait()
        with _live_lock:
            _live.discard(self)
        if self.cleanup is not None:
            self.cleanup()

    def log_tail(self, limit: int = 3000) -> str:
        """The end of what the current (or last) run wrote to the log."""
        try:
            data = self.log_path.read_bytes()[self._log_offset :]
        except OSError:
            return ""
        return data[-limit:].decode(errors="replace")

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def _wait_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(_POLL)


def _die_with_parent() -> list[str]:
    """argv prefix that makes the kernel SIGKILL the daemon if this process dies."""
    setpriv = shutil.which("setpriv")  # util-linux, on every Debian system
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


def wait_until(daemon: Daemon, check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check()` until it is true; fail early, with the log, if the daemon died."""
    deadline = time.monotonic() + timeout
    while True:
        if not daemon.alive():
            raise RuntimeError(f"{daemon.name} exited before {what}:\n{daemon.log_tail()}")
        if check():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{daemon.name}: no {what} after {timeout:.1f}s:\n{daemon.log_tail()}"
            )
        time.sleep(_POLL)


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        daemons = list(_live)
    for daemon in daemons:
        daemon.stop(grace=2.0)
