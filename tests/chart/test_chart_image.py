"""The Dockerfile of the one image the chart runs. No Docker engine here: check its structure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml
from chart_helpers import CHART, REPO

BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|make|apt-get install)\b")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}".strip()
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        keyword, _, args = pending.partition(" ")
        result.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return result


def stages() -> list[Stage]:
    """The stages, each base with the global ARGs' defaults (e.g. ${BASE}) filled in."""
    found: list[Stage] = []
    defaults: dict[str, str] = {}
    for keyword, args in instructions((REPO / "Dockerfile").read_text()):
        if keyword == "ARG" and not found:
            name, _, default = args.partition("=")
            defaults[name] = default
        elif keyword == "FROM":
            base, _, name = args.partition(" AS ")
            for arg, default in defaults.items():
                base = base.replace(f"${{{arg}}}", default)
            found.append(Stage(base.strip(), name.strip()))
        else:
            found[-1].instructions.append((keyword, args))
    return found


def build_args(stage: Stage) -> dict[str, str]:
    return dict(arg.partition("=")[::2] for arg in stage.args_of("ARG"))


def test_multi_stage_on_slim_python_pinned_by_digest() -> None:
    builder, final = stages()  # the bases are ${BASE}'s default, overridable with --build-arg
    assert builder.name == "builder"
    assert builder.base == final.base
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", builder.base), builder.base
    assert any("pip install --no-deps --no-build-isolation ." in r for r in builder.args_of("RUN"))


def test_dependencies_come_from_the_lock_with_hashes() -> None:
    """Every package installed is pinned and verified: the lock is installed with
    --require-hashes, and no other pip install may resolve or fetch anything."""
    builder = stages()[0]
    installs = [run for run in builder.args_of("RUN") if "pip install" in run]
    assert installs[0] == "pip install --require-hashes --no-deps -r requirements.lock"
    assert all("--no-deps" in run for run in installs)
    assert "COPY requirements.lock ./" in [f"COPY {c}" for c in builder.args_of("COPY")]
    lock = (REPO / "requirements.lock").read_text()
    pins = re.findall(r"(?m)^([A-Za-z0-9._-]+)==(\S+) \\$", lock)
    entries = re.split(r"(?m)^(?=[A-Za-z0-9._-]+==)", lock)[1:]
    assert len(pins) == len(entries) > 20
    assert all("--hash=sha256:" in entry for entry in entries)
    locked = {name.lower() for name, _ in pins}
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    wanted = {re.split(r"[\[<>=]", d.strip().strip('",'))[0].lower() for d in section.split("\n")}
    assert {w for w in wanted if w} <= locked
    assert "setuptools" in locked  # the build backend too, since the build is not isolated


def test_image_says_where_it_comes_from() -> None:
    final = stages()[-1]
    args = build_args(final)
    assert args["REVISION"] == "unknown" and args["SOURCE_URL"].startswith("https://")
    (labels,) = final.args_of("LABEL")
    assert 'org.opencontainers.image.source="${SOURCE_URL}"' in labels
    assert 'org.opencontainers.image.revision="${REVISION}"' in labels


def test_final_stage_runs_unprivileged_without_build_tools() -> None:
    final = stages()[-1]
    assert final.args_of("COPY") == ["--from=builder /opt/venv /opt/venv"]
    assert final.args_of("WORKDIR") == ["/app"]
    assert not any(BUILD_TOOLS.search(run) for run in final.args_of("RUN"))
    (user,) = final.args_of("USER")
    # Numeric, so that the kubelet can enforce runAsNonRoot; and the uid the chart runs with.
    uid = user.split(":")[0]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert uid.isdigit() and int(uid) == values["podSecurityContext"]["runAsUser"] == 10001
    # USER is the last word on identity: nothing after it runs as root.
    keywords = [kw for kw, _ in final.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_dockerignore_keeps_the_context_small_and_clean() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # An allow-list: everything out, then the packaging files and the Python packages back in.
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "requirements.lock", "tasks", "watcher", "worker", "beat"} <= allowed
    assert not allowed & {".git", ".tools", "tests", "chart", ".env", "localcluster"}
