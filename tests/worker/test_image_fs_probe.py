"""The disk budget measures the image filesystem through WARM_IMAGE_FS_PATH when it is set.

The chart mounts an empty directory of the image filesystem there instead of the runtime's
root; statvfs on it must be what the worker reads, not the mountpoint ImageFsInfo names.
"""

from __future__ import annotations

import os
import tempfile

from localcluster import Containerd
from tasks.settings import RuntimeSettings
from worker.runtime import open_runtime


def capacity(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_blocks * stats.f_frsize


def test_the_probe_directory_is_measured_not_the_runtime_root(node: Containerd) -> None:
    reported = open_runtime(RuntimeSettings(kind="cri", endpoint=node.endpoint))
    # A directory on another filesystem than containerd's root tells the two apart.
    with tempfile.TemporaryDirectory(dir="/dev/shm") as probe:
        assert capacity(probe) != reported.filesystem_usage().capacity_bytes
        settings = RuntimeSettings(kind="cri", endpoint=node.endpoint, image_fs_path=probe)
        probed = open_runtime(settings)
        usage = probed.filesystem_usage()
        assert usage.capacity_bytes == capacity(probe)
        assert usage.used_percent is not None
        probed.close()
    reported.close()


def test_a_missing_probe_leaves_the_budget_unenforced_rather_than_guessed(
    node: Containerd,
) -> None:
    settings = RuntimeSettings(kind="cri", endpoint=node.endpoint, image_fs_path="/nonexistent")
    runtime = open_runtime(settings)
    assert runtime.filesystem_usage().used_percent is None
    runtime.close()
