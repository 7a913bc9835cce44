"""System packages the local cluster runs on.

The registry, containerd and its runtime are real programs, not Python packages: on Debian they
come from apt. A fresh machine (a new developer's, or CI's) lacks them, so the test bed installs
them itself rather than relying on whatever a previous session left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess

# Debian package for each binary the local cluster runs.
REQUIRED_BINARIES: dict[str, str] = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "htpasswd": "apache2-utils",
    "dockerd": "docker.io",  # the Docker Engine, for the worker's Docker driver
}
APT_PACKAGES: tuple[str, ...] = (
    "containerd",
    "runc",
    "docker-registry",
    "skopeo",
    "apache2-utils",
    "docker.io",
)

# runc lives in /usr/sbin, which is not on every user's PATH.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_APT_TIMEOUT = 900.0


def which(binary: str) -> str | None:
    """Locate a binary on PATH or in the sbin directories root normally has on PATH."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(binary, path=search)


def missing_binaries() -> list[str]:
    return [binary for binary in REQUIRED_BINARIES if which(binary) is None]


def require_binary(binary: str) -> str:
    """Path of a binary, or a RuntimeError telling how to get it."""
    path = which(binary)
    if path is None:
        hint = ""
        if binary in REQUIRED_BINARIES:
            hint = (
                ": call localcluster.ensure_system_packages() as root, or run: "
                f"apt-get install {REQUIRED_BINARIES[binary]}"
            )
        raise RuntimeError(f"{binary!r} is not installed{hint}")
    return path


def ensure_system_packages() -> None:
    """Install containerd, runc, docker-registry, skopeo, apache2-utils and docker.io if a
    binary is missing.

    Does nothing when every binary is present, so it is cheap to call before each test session.
    """
    missing = missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(
            f"missing {', '.join(missing)} and not root, so cannot apt-get install them; "
            f"run as root: apt-get install {' '.join(APT_PACKAGES)}"
        )
    _apt_get("update", "-qq")
    _apt_get("install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES)
    still_missing = missing_binaries()
    if still_missing:
        raise RuntimeError(f"apt-get install succeeded but {', '.join(still_missing)} missing")


def _apt_get(*args: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(
            ["apt-get", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_APT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"apt-get {' '.join(args)} could not run: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"apt-get {' '.join(args)} failed ({proc.returncode}): {tail}")
