"""Rendering the chart with the real helm binary, and reading the rendered manifests."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "chart"
HELM = REPO / ".tools" / "bin" / "helm"
VALUES_DIR = Path(__file__).resolve().parent / "values"
# Given passwords for every render without a cluster, as a GitOps user gives them.
CI_PASSWORDS = Path(__file__).resolve().parent / "ci-passwords.yaml"
RELEASE = "warm"
NAMESPACE = "warm-images"
PREFIX = f"{RELEASE}-warm-images"

# "default" is the chart's own values; every other set is tests/chart/values/<name>.yaml.
VALUE_SETS = ["default", *sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))]
# The Kubernetes structures that hold a pod spec.
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}

Doc = dict[str, Any]


def values_args(value_set: str) -> list[str]:
    return [] if value_set == "default" else ["-f", str(VALUES_DIR / f"{value_set}.yaml")]


def load_values(value_set: str) -> dict[str, Any]:
    if value_set == "default":
        return {}
    return yaml.safe_load((VALUES_DIR / f"{value_set}.yaml").read_text()) or {}


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)


def template(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart as release RELEASE in NAMESPACE with the CI passwords,
    extra args appended."""
    return run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "-f",
        str(CI_PASSWORDS),
        *args,
    )


@dataclass
class Rendered:
    """The manifests of one value set."""

    name: str
    text: str
    docs: list[Doc] = field(default_factory=list)

    @classmethod
    def parse(cls, name: str, text: str) -> Rendered:
        return cls(name, text, [d for d in yaml.safe_load_all(text) if d])

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        """The one document of this kind named <PREFIX>-<name> (or exactly name)."""
        wanted = {name, f"{PREFIX}-{name}"}
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] in wanted]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, got {len(found)}"
        return found[0]

    def find(self, kind: str, name: str) -> Doc | None:
        wanted = {name, f"{PREFIX}-{name}"}
        return next((d for d in self.of_kind(kind) if d["metadata"]["name"] in wanted), None)

    def pod_specs(self) -> Iterator[tuple[str, Doc]]:
        """(component, pod spec) of every workload and bare Pod."""
        for doc in self.docs:
            component = doc["metadata"]["labels"].get("app.kubernetes.io/component", "?")
            if doc["kind"] in WORKLOAD_KINDS:
                yield component, doc["spec"]["template"]["spec"]
            elif doc["kind"] == "Pod":
                yield component, doc["spec"]

    def pod_spec(self, component: str) -> Doc:
        specs = [spec for c, spec in self.pod_specs() if c == component]
        assert len(specs) == 1, f"{self.name}: expected one {component} pod, got {len(specs)}"
        return specs[0]

    def container(self, component: str) -> Doc:
        containers: list[Doc] = self.pod_spec(component)["containers"]
        assert len(containers) == 1
        return containers[0]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_data(secret: Doc) -> dict[str, str]:
    """A Secret's data, base64-decoded, merged with its stringData."""
    decoded = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**decoded, **(secret.get("stringData") or {})}
