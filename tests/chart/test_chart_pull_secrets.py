"""RBAC for mirrored pull secrets: the worker reads Secrets of the mirror namespace only.

The copies live in a namespace of their own (<release namespace>-pull-secrets by default),
because the release namespace holds the chart's own password Secrets: neither the worker nor the
watcher may touch Secrets there. Read through the bindings, as the API server would: every rule
reachable from a component's service account, with where it applies (cluster-wide, or a
namespace).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_helpers import NAMESPACE, PREFIX, RELEASE, VALUE_SETS, Doc, Rendered, template

from tasks.settings import load_settings

SECRETS_GET = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
MIRROR = f"{NAMESPACE}-pull-secrets"
COPIES = {
    "apiGroups": [""],
    "resources": ["secrets"],
    "verbs": ["get", "list", "create", "update", "delete"],
}


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
def test_no_secret_rule_in_the_release_namespace_and_none_for_the_worker_elsewhere(
    rendered: dict[str, Rendered], value_set: str
) -> None:
    for component in ("worker", "watcher"):
        namespaces = [w for w, _ in secret_rules(rendered[value_set], component)]
        assert NAMESPACE not in namespaces, (
            f"{value_set}: the {component} may touch the release's own Secrets"
        )
    for where, rule in secret_rules(rendered[value_set], "worker"):
        assert where == MIRROR, f"{value_set}: worker reads Secrets in {where or 'every namespace'}"
        assert rule == SECRETS_GET


def test_with_credentials_the_worker_gets_secrets_of_the_mirror_namespace_only(
    rendered: dict[str, Rendered],
) -> None:
    for value_set in ("credentials", "full"):  # namespaces "*" and a list
        assert secret_rules(rendered[value_set], "worker") == [(MIRROR, SECRETS_GET)]
    assert secret_rules(rendered["default"], "worker") == []


def test_the_chart_creates_the_mirror_namespace_with_credentials_only(
    rendered: dict[str, Rendered],
) -> None:
    """A namespace of the release's own, so it holds nothing but the copies; no pod belongs
    there, so Pod Security's strictest level applies."""
    (namespace,) = rendered["credentials"].of_kind("Namespace")
    assert namespace["metadata"]["name"] == MIRROR
    labels = namespace["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    data = rendered["credentials"].get("ConfigMap", "config")["data"]
    assert load_settings(data).pull_secret_namespace == MIRROR
    assert rendered["default"].of_kind("Namespace") == []


def test_watcher_reads_sources_cluster_wide_only_with_every_namespace(
    rendered: dict[str, Rendered],
) -> None:
    everywhere = secret_rules(rendered["credentials"], "watcher")  # config.namespaces: ["*"]
    assert everywhere == [(None, SECRETS_GET), (MIRROR, COPIES)]
    listed = secret_rules(rendered["full"], "watcher")  # team-a, team-b; secretNames: [regcred]
    only_regcred = {**SECRETS_GET, "resourceNames": ["regcred"]}
    assert sorted(listed, key=str) == sorted(
        [("team-a", only_regcred), ("team-b", only_regcred), (MIRROR, COPIES)], key=str
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
    assert secret_rules(rendered, "worker") == [(MIRROR, SECRETS_GET)]
    assert [where for where, _ in secret_rules(rendered, "watcher")] == ["apps", MIRROR]


def test_a_mirror_namespace_of_ones_choice_moves_the_copies_and_every_rule_on_them(
    helm: Path,
) -> None:
    args = ["--set", "worker.credentials.enabled=true"]
    result = template(helm, *args, "--set", "worker.credentials.mirrorNamespace=regcopies")
    assert result.returncode == 0, result.stderr
    rendered = Rendered.parse("chosen", result.stdout)
    assert [n["metadata"]["name"] for n in rendered.of_kind("Namespace")] == ["regcopies"]
    assert secret_rules(rendered, "worker") == [("regcopies", SECRETS_GET)]
    assert secret_rules(rendered, "watcher") == [(None, SECRETS_GET), ("regcopies", COPIES)]
    data = rendered.get("ConfigMap", "config")["data"]
    assert load_settings(data).pull_secret_namespace == "regcopies"


def test_the_release_namespace_is_refused_as_the_mirror_namespace(helm: Path) -> None:
    args = ["--set", "worker.credentials.enabled=true"]
    result = template(helm, *args, "--set", f"worker.credentials.mirrorNamespace={NAMESPACE}")
    assert result.returncode != 0
    assert "mirrorNamespace must not be the release namespace" in result.stderr
