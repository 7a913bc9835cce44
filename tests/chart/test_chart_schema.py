"""values.schema.json covers every value and rejects wrong ones; the README table is current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_helpers import CHART, template
from chart_values_table import leaves, load_schema, load_values, resolve, updated_readme

# Values that are Kubernetes structures, documented as one object each.
KUBERNETES_STRUCTURES = {
    "resources",
    "podSecurityContext",
    "securityContext",
    "nodeSelector",
    "affinity",
    "podAnnotations",
    "podLabels",
    "annotations",
    "labels",
    "commonLabels",
    "updateStrategy",
    "registryPullLimits",  # registry host to limit: the keys are the user's, the values typed
}
# (--set arguments, what the error must say). Helm prints the JSON pointer of the bad value.
WRONG_VALUES = [
    (
        ["--set", "worker.runtime.type=podman"],
        "at '/worker/runtime/type': value must be one of 'auto', 'containerd', 'k3s', 'crio'",
    ),
    (["--set", "worker.diskBudget.percent=150"], "at '/worker/diskBudget/percent': maximum"),
    # Moved to worker.diskBudget.percent: the old key fails loudly instead of being ignored.
    (
        ["--set", "config.diskBudgetPercent=70"],
        "at '/config': additional properties 'diskBudgetPercent' not allowed",
    ),
    (["--set", "config.optIn=yes"], "at '/config/optIn': got string, want boolean"),
    (
        ["--set-string", "watcher.resyncInterval=600"],
        "at '/watcher/resyncInterval': got string, want number",
    ),
    (
        ["--set-json", "worker.pull.maxRetries=1.5"],
        "at '/worker/pull/maxRetries': got number, want integer",
    ),
    (["--set", "worker.pull.maxRetries=-1"], "at '/worker/pull/maxRetries': minimum"),
    (["--set", "beat.lockTtl=1"], "at '/beat/lockTtl': minimum"),
    (["--set", "config.includeImages=ghcr.io/*"], "at '/config/includeImages': got string"),
    (["--set", "config.excludeImages[0]=a b"], "at '/config/excludeImages/0'"),
    (
        ["--set", "config.explicitImages[0].nodeSelector.gpu=true"],
        "at '/config/explicitImages/0'",
    ),
    (["--set", "worker.diskBudget.enabled=maybe"], "at '/worker/diskBudget/enabled'"),
    (["--set", "worker.diskBudget.imageFsPath=/"], "at '/worker/diskBudget/imageFsPath'"),
    (
        ["--set", "worker.credentials.kubeletCredentialsFile=config.json"],
        "at '/worker/credentials/kubeletCredentialsFile'",
    ),
    (["--set", "watcher.replica=2"], "at '/watcher': additional properties 'replica' not allowed"),
    (["--set", "watcher.replicas=0"], "at '/watcher/replicas': minimum: got 0, want 1"),
    (
        ["--set-string", "config.maxConcurrentPulls=2"],
        "at '/config/maxConcurrentPulls': got string, want integer",
    ),
    (["--set", "config.namespaces=default"], "at '/config/namespaces': got string, want array"),
    (["--set", "nats.auth.accountKey=short"], "at '/nats/auth/accountKey'"),
    (["--set", "externalBroker.url=http://broker"], "at '/externalBroker/url'"),
    (["--set", "externalNats.url=nats://user:pw@nats:4222"], "at '/externalNats/url'"),
    (["--set", "worker.tolerations[0].operator=Maybe"], "at '/worker/tolerations/0/operator'"),
    (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
    # Holes that once let a value mean something else than it says.
    (["--set", "config.namespaces=null"], "at '/config': missing property 'namespaces'"),
    (["--set-json", 'config.namespaces=["default","*"]'], "at '/config/namespaces'"),
    (["--set-json", 'config.namespaces=["*","*"]'], "at '/config/namespaces'"),
    (["--set-json", "config.namespaces=[]"], "at '/config/namespaces'"),
    (
        ["--set", "worker.credentials.mirrorNamespace=Pull_Secrets"],
        "at '/worker/credentials/mirrorNamespace'",
    ),
    (
        ["--set-json", 'worker.credentials.secretNames=["*"]'],
        "at '/worker/credentials/secretNames/0'",
    ),
    (
        ["--set", "securityContext.runAsUsr=5"],
        "at '/securityContext': additional properties 'runAsUsr' not allowed",
    ),
    (
        ["--set", "worker.podSecurityContext.seccompProfile.typo=x"],
        "at '/worker/podSecurityContext/seccompProfile'",
    ),
    (
        ["--set", "nats.securityContext.capabilities.dorp=ALL"],
        "at '/nats/securityContext/capabilities'",
    ),
    (["--set", "redis.podSecurityContext.fsGroupChangePolicy=Never"], "at '/redis/podSecurity"),
]


@pytest.mark.parametrize(("args", "message"), WRONG_VALUES, ids=[a[1] for a, _ in WRONG_VALUES])
def test_schema_rejects_wrong_values(helm: Path, args: list[str], message: str) -> None:
    result = template(helm, *args)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def schema_nodes(
    node: dict[str, Any], root: dict[str, Any], path: str = ""
) -> list[tuple[str, dict[str, Any]]]:
    """Every property of the schema, $refs followed, with its dotted path."""
    found = []
    for key, child in node.get("properties", {}).items():
        child = resolve(child, root)
        found.append((f"{path}{key}", child))
        found.extend(schema_nodes(child, root, f"{path}{key}."))
    return found


def test_every_value_is_in_the_schema() -> None:
    schema = load_schema()
    missing = [path for path, _, node in leaves(load_values(), schema, schema) if node is None]
    assert not missing


def test_schema_is_closed_and_described() -> None:
    """Unknown keys are errors in every section the chart defines (so a typo fails the install),
    and every documented value says what it is. Only Kubernetes structures stay open objects."""
    schema = load_schema()
    assert schema["additionalProperties"] is False
    for path, default, node in leaves(load_values(), schema, schema):
        assert node is not None and node.get("description"), f"{path} has no description"
        if isinstance(default, dict):
            assert path.rsplit(".", 1)[-1] in KUBERNETES_STRUCTURES, f"{path} is not closed"


def test_every_schema_property_has_a_default() -> None:
    """The other direction: no schema entry without its value in values.yaml."""
    schema = load_schema()
    documented = {path for path, _, _ in leaves(load_values(), schema, schema)}
    for path, _ in schema_nodes(schema, schema):
        related = any(
            d == path or d.startswith(f"{path}.") or path.startswith(f"{d}.") for d in documented
        )
        assert related, f"{path} is in the schema but not in values.yaml"


def test_readme_values_table_is_current() -> None:
    readme = (CHART / "README.md").read_text()
    assert updated_readme(readme) == readme, (
        "chart/README.md is out of date: run python tests/chart/chart_values_table.py"
    )


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    schema = load_schema()
    for path, _, _ in leaves(load_values(), schema, schema):
        assert f"| `{path}` |" in readme


@pytest.mark.parametrize(
    "args",
    [
        ["--set-json", 'config.namespaces=["*"]'],
        ["--set-json", 'config.namespaces=["team-a","team-b"]'],
        ["--set", "worker.securityContext.seLinuxOptions.type=spc_t"],
        ["--set-json", "worker.podSecurityContext.supplementalGroups=[999]"],
    ],
)
def test_schema_keeps_what_is_right(helm: Path, args: list[str]) -> None:
    result = template(helm, *args)
    assert result.returncode == 0, result.stderr
