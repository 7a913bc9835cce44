"""RBAC for mirrored pull secrets: no Secret rule for the worker outside the release namespace.

Read through the bindings, as the API server would: every rule reachable from a component's
service account, with where it applies (cluster-wide, or a namespace).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_helpers import NAMESPACE, PREFIX, VALUE_SETS, Doc, Rendered, template

from tasks.settings import load_settings

SECRETS_GET = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}


def grants(result: Rendered, component: str) -> list[tuple[str | None, Doc]]:
    """(namespace or None for cluster-wide, rule) for every rule bound to ``component``'s
    service account."""
    account = f"{PREFIX}-{component}"
    found: list[tuple[str | None, Doc]] = []
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for binding in result.of_kind(kind):
            subjects = binding.get("subjects") or []
            if not any(s["kind"] == "ServiceAccount" and s["name"] == account for s in subjects):
                continue
            where = binding["metadata"].get("namespace") if kind == "RoleBinding" else None
            ref = binding["roleRef"]
            role = next(
                r
                for r in result.of_kind(ref["kind"])
                if r["metadata"]["name"] == ref["name"]
                and (ref["kind"] == "ClusterRole" or r["metadata"]["namespace"] == where)
            )
            found += [(where, rule) for rule in role["rules"]]
    return found


def secret_rules(result: Rendered, component: str) -> list[tuple[str | None, Doc]]:
    return [
        (where, rule) for where, rule in grants(result, component) if "secrets" in rule["resources"]
    ]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_secret_rule_for_the_worker_outside_the_release_namespace(
    rendered: dict[str, Rendered], value_set: str
) -> None:
    for where, rule in secret_rules(rendered[value_set], "worker"):
        assert where == NAMESPACE, (
            f"{value_set}: worker reads Secrets in {where or 'every namespace'}"
        )
        assert rule == SECRETS_GET


def test_with_credentials_the_worker_gets_secrets_of_the_release_namespace_only(
    rendered: dict[str, Rendered],
) -> None:
    for value_set in ("credentials", "full"):  # namespaces "*" and a list
        assert secret_rules(rendered[value_set], "worker") == [(NAMESPACE, SECRETS_GET)]
    assert secret_rules(rendered["default"], "worker") == []


def test_watcher_reads_sources_cluster_wide_only_with_every_namespace(
    rendered: dict[str, Rendered],
) -> None:
    copies = {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get", "list", "create", "update", "delete"],
    }
    everywhere = secret_rules(rendered["credentials"], "watcher")  # config.namespaces: ["*"]
    assert everywhere == [(None, SECRETS_GET), (NAMESPACE, copies)]
    listed = secret_rules(rendered["full"], "watcher")  # team-a, team-b; secretNames: [regcred]
    only_regcred = {**SECRETS_GET, "resourceNames": ["regcred"]}
    assert sorted(listed, key=str) == sorted(
        [("team-a", only_regcred), ("team-b", only_regcred), (NAMESPACE, copies)], key=str
    )
    assert secret_rules(rendered["default"], "watcher") == []


def test_the_chart_turns_the_products_mirroring_on_and_off_with_credentials(
    rendered: dict[str, Rendered],
) -> None:
    """The watcher mirrors (WARM_PULL_SECRETS) exactly when the chart grants it the RBAC."""
    for value_set, expected in (("default", False), ("credentials", True)):
        data = rendered[value_set].get("ConfigMap", "config")["data"]
        assert load_settings(data).runtime.pull_secrets is expected


def test_a_single_listed_namespace_is_the_boundary_too(helm: Path) -> None:
    args = ["--set", "worker.credentials.enabled=true", "--set", "config.namespaces={apps}"]
    result = template(helm, *args)
    assert result.returncode == 0, result.stderr
    rendered = Rendered.parse("apps", result.stdout)
    assert secret_rules(rendered, "worker") == [(NAMESPACE, SECRETS_GET)]
    assert [where for where, _ in secret_rules(rendered, "watcher")] == ["apps", NAMESPACE]
