"""Settings of every component, grouped by concern and read from the environment.

Every setting has an environment variable (the chart and the contract in DESIGN.md speak in
those names); any of them may also come from a TOML file named by ``WARM_CONFIG_FILE``, whose
top-level keys are the same variable names. The environment wins over the file, so a file can
hold a site's defaults and a pod can still override one value.

A malformed value fails at start-up with :class:`SettingsError`, naming the variable, the value
and what was expected, instead of surfacing later as a confusing failure in a pull; so do values
that each parse but contradict one another (a Lease renewed only after it expired).
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_IDENTITY_TOKEN_FILE = "/var/run/secrets/warm-images/token"  # the chart's projection
RUNTIME_KINDS = ("auto", "cri", "docker")
REFRESH_TAGS = ("none", "latest", "all")
GATE_IMAGES = ("all", "annotated")  # WARM_STARTUP_GATE_IMAGES
EXCHANGED_ROLES = ("worker", "beat", "client")  # NATS roles the watcher hands out


class SettingsError(ValueError):
    """A setting with a value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class BrokerSettings:
    url: str = DEFAULT_BROKER_URL
    # Must exceed the longest pull, or Redis redelivers a pull that is still running.
    visibility_timeout: int = 3600


@dataclass(frozen=True)
class NatsSettings:
    url: str = DEFAULT_NATS_URL
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca_file: str | None = None
    connect_timeout: float = 5.0
    # Operator mode (tasks/natsauth.py): the watcher signs user JWTs with the account key;
    # every other part exchanges its ServiceAccount token for one at the watcher's URL.
    account_key: str | None = None
    credentials_url: str | None = None
    identity_token_file: str = DEFAULT_IDENTITY_TOKEN_FILE
    # The watcher's side of that exchange: its port, and which ServiceAccount of the release
    # namespace gets which role (never "watcher": only the watcher writes the catalog).
    credentials_port: int = 8090
    roles: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NodeSettings:
    name: str | None = None
    # Remote control and heartbeats let `celery inspect` and Flower's worker pages reach the
    # worker, at up to eight broker connections per node instead of four (bench_idle_workers):
    # off by default for fleets of thousands; task events (Flower's task list) stay on.
    remote_control: bool = False


@dataclass(frozen=True)
class RuntimeSettings:
    kind: str = "auto"
    endpoint: str | None = None
    max_concurrent_pulls: int = 2
    pull_timeout: float = 600.0
    max_retries: int = 5
    retry_backoff_max: int = 600
    # Below kubelet's image GC high threshold (85 %), so warming never triggers a GC that
    # evicts the very images it warmed.
    disk_budget_percent: float = 80.0
    # Read the imagePullSecrets named in the node's catalog slice from the Kubernetes API.
    pull_secrets: bool = True
    # A docker config.json of the node's own registry credentials (kubelet's), as a fallback.
    kubelet_credentials_file: str | None = None
    # Which present tags a re-warm pulls again, to follow a tag that moved: "none", "latest"
    # (only :latest tags, the usual mutable ones) or "all". An unchanged tag costs the registry
    # one manifest request per node and re-warm, so "all" is for small fleets.
    refresh_tags: str = "latest"
    # An empty directory on the image filesystem, measured with statvfs for the disk budget
    # instead of the path the runtime reports, so that the runtime's root (every container's
    # layers) need not be mounted into the worker.
    image_fs_path: str | None = None
    # Pulls from one registry at once across the cluster (0: no cap), and per-host overrides:
    # at thousands of nodes the registry, not the node, is what a new image overwhelms.
    registry_pull_limit: int = 100
    registry_pull_limits: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class WatchSettings:
    namespaces: tuple[str, ...] = ("*",)
    ignore_namespaces: tuple[str, ...] = ()
    # Images to warm before any workload uses them, with optional node selectors.
    explicit: tuple[ExplicitImage, ...] = ()
    namespace_selector: str = ""  # label selector on Namespaces, e.g. "team=web,env!=dev"
    opt_in: bool = False  # only workloads annotated warm-images.io/warm: "true" count
    include_images: tuple[str, ...] = ()  # globs on the normalized reference; empty: all
    exclude_images: tuple[str, ...] = ()
    # An image no workload uses any more stays this long (a rollout replaces its users).
    catalog_grace_period: float = 600.0
    resync_interval: float = 3600.0  # seconds between full re-lists of every watched kind
    # Seconds between two reads of every referenced pull secret, so a mirrored copy follows
    # its source (a rotated password) within this time.
    pull_secret_sync_interval: float = 60.0
    stale_after: float = 600.0  # a watch silent this long makes /healthz fail
    # The warm-before-schedule gate (watcher/gate.py): the taint key a new node carries until
    # its images are warm ("" turns the gate off), its deadline, and which images gate.
    startup_taint: str = ""
    startup_taint_deadline: float = 600.0
    startup_gate_images: str = "all"  # "all" of the slice, or only "annotated" workloads'
    # The leader counts the kubelet's Pulled Events (hits, misses, seconds waited): the proof
    # of what warming saved. Needs list and watch on Events (watcher/kubelet_events.py).
    kubelet_events: bool = True
    # Waves (watcher/waves.py): a new image, or a new digest, goes to this many canary nodes
    # first and to the rest once a canary holds it; 0 sends it everywhere at once.
    canary_nodes: int = 2


@dataclass(frozen=True)
class ExplicitImage:
    """An image to warm before any workload uses it, on the nodes its selector matches."""

    image: str
    node_selector: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LeaderSettings:
    """Leader election among watcher replicas, through a coordination.k8s.io Lease."""

    enabled: bool = False
    lease_name: str = "warm-images-watcher"
    namespace: str = "default"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass(frozen=True)
class ProbeSettings:
    health_port: int = 8080  # /healthz; 0 disables
    metrics_port: int = 9808  # Prometheus /metrics; 0 disables


@dataclass(frozen=True)
class RewarmSettings:
    interval: float = 1800.0
    # A periodic re-warm's sends are paced over this many seconds, so thousands of nodes do not
    # hit the registry in the same second (0: all at once).
    window: float = 60.0
    # The beat leader's lease lives this long without renewal; a standby takes over after it.
    lock_ttl: float = 30.0


@dataclass(frozen=True)
class Settings:
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    rewarm: RewarmSettings = field(default_factory=RewarmSettings)
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    # The release namespace (WARM_POD_NAMESPACE): where the Lease lives.
    release_namespace: str = "default"
    # Where the watcher's copies of pull secrets live (WARM_PULL_SECRET_NAMESPACE; default the
    # release namespace): the chart makes it a namespace of its own, holding nothing else, so
    # the nodes' `get` on Secrets there reaches no other Secret.
    pull_secret_namespace: str = "default"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``environ`` (default: ``os.environ``) and the config file."""
    source = _Source(_merged(os.environ if environ is None else environ))
    return _consistent(_read(source))


def settings_or_exit() -> Settings:
    """:func:`load_settings` for a process starting: a bad setting ends it with one line on
    stderr and status 1, rather than a traceback from deep inside a framework's start-up."""
    try:
        return load_settings()
    except SettingsError as error:
        print(f"warm-images: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def _consistent(settings: Settings) -> Settings:
    """Refuse settings that each parse but contradict one another."""
    leader, rewarm = settings.leader, settings.rewarm
    pairs = [
        # (shorter, longer, why the first must stay below the second)
        (
            ("WARM_LEASE_RENEW_DEADLINE", leader.renew_deadline),
            ("WARM_LEASE_DURATION", leader.lease_duration),
            "a leader must renew its Lease before the Lease runs out",
        ),
        (
            ("WARM_LEASE_RETRY_PERIOD", leader.retry_period),
            ("WARM_LEASE_RENEW_DEADLINE", leader.renew_deadline),
            "a leader must get to try again before its renew deadline",
        ),
    ]
    for (short, short_value), (long, long_value), why in pairs:
        if short_value >= long_value:
            raise SettingsError(
                f"{short}={short_value:g} must be less than {long}={long_value:g}: {why}"
            )
    if rewarm.window > rewarm.interval:
        raise SettingsError(
            f"WARM_REWARM_WINDOW={rewarm.window:g} must not exceed "
            f"WARM_REWARM_INTERVAL={rewarm.interval:g}: a re-warm would still be sending "
            "when the next one starts"
        )
    return settings


def _read(source: _Source) -> Settings:
    release_namespace = source.text("WARM_POD_NAMESPACE", "default")
    return Settings(
        broker=BrokerSettings(
            url=source.text("WARM_BROKER_URL", DEFAULT_BROKER_URL),
            visibility_timeout=source.number("WARM_BROKER_VISIBILITY_TIMEOUT", 3600, int),
        ),
        nats=NatsSettings(
            url=source.text("WARM_NATS_URL", DEFAULT_NATS_URL),
            user=source.optional("WARM_NATS_USER"),
            password=source.optional("WARM_NATS_PASSWORD"),
            token=source.optional("WARM_NATS_TOKEN"),
            tls_ca_file=source.optional("WARM_NATS_TLS_CA_FILE"),
            connect_timeout=source.number("WARM_NATS_CONNECT_TIMEOUT", 5.0, float),
            account_key=source.secret("WARM_NATS_ACCOUNT_KEY", minimum_length=16),
            credentials_url=source.optional("WARM_NATS_CREDENTIALS_URL"),
            identity_token_file=source.text(
                "WARM_NATS_IDENTITY_TOKEN_FILE", DEFAULT_IDENTITY_TOKEN_FILE
            ),
            credentials_port=source.number("WARM_NATS_CREDENTIALS_PORT", 8090, int, minimum=0),
            roles=source.roles("WARM_NATS_ROLES"),
        ),
        node=NodeSettings(
            name=source.optional("WARM_NODE_NAME") or source.optional("NODE_NAME"),
            remote_control=source.flag("WARM_WORKER_REMOTE_CONTROL", False),
        ),
        runtime=RuntimeSettings(
            kind=source.choice("WARM_RUNTIME", "auto", RUNTIME_KINDS),
            endpoint=source.optional("WARM_RUNTIME_ENDPOINT"),
            max_concurrent_pulls=source.number("WARM_MAX_CONCURRENT_PULLS", 2, int),
            pull_timeout=source.number("WARM_PULL_TIMEOUT", 600.0, float),
            max_retries=source.number("WARM_PULL_MAX_RETRIES", 5, int, minimum=0),
            retry_backoff_max=source.number("WARM_PULL_RETRY_BACKOFF_MAX", 600, int),
            disk_budget_percent=source.number("WARM_DISK_BUDGET_PERCENT", 80.0, float),
            pull_secrets=source.flag("WARM_PULL_SECRETS", True),
            kubelet_credentials_file=source.optional("WARM_KUBELET_CREDENTIALS_FILE"),
            refresh_tags=source.choice("WARM_REFRESH_TAGS", "latest", REFRESH_TAGS),
            image_fs_path=source.optional("WARM_IMAGE_FS_PATH"),
            registry_pull_limit=source.number("WARM_REGISTRY_PULL_LIMIT", 100, int, minimum=0),
            registry_pull_limits=source.limits("WARM_REGISTRY_PULL_LIMITS"),
        ),
        watch=WatchSettings(
            namespaces=source.words("WARM_NAMESPACES", ("*",)),
            ignore_namespaces=source.words("WARM_IGNORE_NAMESPACES", ()),
            explicit=source.explicit_images("WARM_EXPLICIT_IMAGES"),
            namespace_selector=source.text("WARM_NAMESPACE_SELECTOR", ""),
            opt_in=source.flag("WARM_OPT_IN", False),
            include_images=source.words("WARM_INCLUDE_IMAGES", ()),
            exclude_images=source.words("WARM_EXCLUDE_IMAGES", ()),
            catalog_grace_period=source.number(
                "WARM_CATALOG_GRACE_PERIOD", 600.0, float, minimum=0
            ),
            resync_interval=source.number("WARM_RESYNC_INTERVAL", 3600.0, float),
            pull_secret_sync_interval=source.number("WARM_PULL_SECRET_SYNC_INTERVAL", 60.0, float),
            stale_after=source.number("WARM_WATCH_STALE_AFTER", 600.0, float),
            startup_taint=source.text("WARM_STARTUP_TAINT", "").strip(),
            startup_taint_deadline=source.number("WARM_STARTUP_TAINT_DEADLINE", 600.0, float),
            startup_gate_images=source.choice("WARM_STARTUP_GATE_IMAGES", "all", GATE_IMAGES),
            kubelet_events=source.flag("WARM_KUBELET_EVENTS", True),
            canary_nodes=source.number("WARM_CANARY_NODES", 2, int, minimum=0),
        ),
        rewarm=RewarmSettings(
            interval=source.number("WARM_REWARM_INTERVAL", 1800.0, float),
            window=source.number("WARM_REWARM_WINDOW", 60.0, float, minimum=0),
            lock_ttl=source.number("WARM_BEAT_LOCK_TTL", 30.0, float, minimum=2),
        ),
        leader=LeaderSettings(
            enabled=source.flag("WARM_LEADER_ELECTION", False),
            lease_name=source.text("WARM_LEASE_NAME", "warm-images-watcher"),
            namespace=release_namespace,
            lease_duration=source.number("WARM_LEASE_DURATION", 15.0, float, minimum=2),
            renew_deadline=source.number("WARM_LEASE_RENEW_DEADLINE", 10.0, float),
            retry_period=source.number("WARM_LEASE_RETRY_PERIOD", 2.0, float, minimum=0.1),
        ),
        probes=ProbeSettings(
            health_port=source.number("WARM_HEALTH_PORT", 8080, int, minimum=0),
            metrics_port=source.number("WARM_METRICS_PORT", 9808, int, minimum=0),
        ),
        release_namespace=release_namespace,
        pull_secret_namespace=source.text("WARM_PULL_SECRET_NAMESPACE", release_namespace),
    )


def _merged(environ: Mapping[str, str]) -> dict[str, str]:
    path = environ.get("WARM_CONFIG_FILE")
    if not path:
        return dict(environ)
    try:
        from_file = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SettingsError(f"WARM_CONFIG_FILE={path!r} cannot be read: {error}") from error
    values = {key: _file_value(value) for key, value in from_file.items()}
    return {**values, **environ}


def _file_value(value: object) -> str:
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Source:
    """Typed, validated reads of string settings."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    def optional(self, name: str) -> str | None:
        return self._values.get(name) or None

    def secret(self, name: str, *, minimum_length: int) -> str | None:
        value = self.optional(name)
        if value is not None and len(value) < minimum_length:
            raise SettingsError(f"{name} must hold at least {minimum_length} characters")
        return value

    def text(self, name: str, default: str) -> str:
        return self._values.get(name) or default

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in allowed:
            raise SettingsError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        return value

    def number(self, name: str, default: T, kind: Callable[[str], T], *, minimum: float = 1) -> T:
        raw = self._values.get(name)
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}") from None
        if value < minimum:  # type: ignore[operator]
            raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
        return value

    def words(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._values.get(name)
        return tuple(raw.replace(",", " ").split()) if raw else default

    def flag(self, name: str, default: bool) -> bool:
        raw = (self._values.get(name) or "").strip().lower()
        if not raw:
            return default
        if raw in ("true", "1", "yes", "on"):
            return True
        if raw in ("false", "0", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r} is not true or false")

    def limits(self, name: str) -> tuple[tuple[str, int], ...]:
        """A JSON object of registry host to a whole number at least 0."""
        return self._json_object(
            name,
            lambda limit: type(limit) is int and limit >= 0,
            'a JSON object of registry host to limit, e.g. {"docker.io": 20} (0: no cap)',
        )

    def roles(self, name: str) -> tuple[tuple[str, str], ...]:
        """A JSON object of ServiceAccount name to the NATS role its pods get."""
        return self._json_object(
            name,
            lambda role: isinstance(role, str) and role in EXCHANGED_ROLES,
            f"a JSON object of ServiceAccount name to a role, one of {', '.join(EXCHANGED_ROLES)}, "
            'e.g. {"warm-images-worker": "worker"}',
        )

    def _json_object(
        self, name: str, valid: Callable[[Any], bool], expected: str
    ) -> tuple[tuple[str, Any], ...]:
        """A JSON object whose every value passes ``valid``, as sorted pairs; () when unset."""
        raw = self._values.get(name)
        if not raw:
            return ()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise SettingsError(f"{name} is not valid JSON: {error}") from None
        if not isinstance(value, dict) or not all(valid(item) for item in value.values()):
            raise SettingsError(f"{name} must be {expected}")
        return tuple(sorted(value.items()))

    def explicit_images(self, name: str) -> tuple[ExplicitImage, ...]:
        """A JSON list of references, or of {"image": ..., "nodeSelector": {...}} objects."""
        raw = self._values.get(name)
        if not raw:
            return ()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise SettingsError(f"{name} is not valid JSON: {error}") from None
        if not isinstance(value, list):
            raise SettingsError(f"{name} must be a JSON list of image references")
        return tuple(_explicit_image(name, item) for item in value)


def _explicit_image(name: str, item: object) -> ExplicitImage:
    if isinstance(item, str):
        return ExplicitImage(item)
    selector = (item.get("nodeSelector") or {}) if isinstance(item, dict) else None
    if (
        not isinstance(item, dict)
        or not isinstance(item.get("image"), str)
        or not isinstance(selector, dict)
        or not all(isinstance(v, str) for v in selector.values())
    ):
        raise SettingsError(
            f"{name} must be a JSON list of image references or of "
            '{"image": "...", "nodeSelector": {"label": "value"}} objects'
        )
    return ExplicitImage(item["image"], tuple(sorted(selector.items())))
