"""``/healthz`` for the node worker's liveness probe, on ``WARM_HEALTH_PORT`` (0: not served).

Healthy means this process serves and its runtime answers on its socket. A failed pull is the
registry's or the image's problem, and restarting the worker would not fix it, so no pull
outcome ever makes the probe fail: a broken registry must not turn into a crash-looping
DaemonSet.
"""

from __future__ import annotations

from typing import Any

from tasks.probes import HealthServer, serve_health

from .runtime import ImageRuntime, RuntimeUnavailable

_PROBE_TIMEOUT = 5.0


def check(runtime: ImageRuntime) -> tuple[bool, dict[str, Any]]:
    try:
        return True, {"runtime": f"ok: {runtime.version(timeout=_PROBE_TIMEOUT)}"}
    except RuntimeUnavailable as error:
        return False, {"runtime": f"unavailable: {error}"}


def serve(port: int, runtime: ImageRuntime) -> HealthServer | None:
    """Serve /healthz in a daemon thread (0: not served); a port taken is logged, not fatal."""
    return serve_health(port, lambda: check(runtime))
