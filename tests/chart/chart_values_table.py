"""The values table of chart/README.md, generated from values.yaml and values.schema.json.

values.yaml gives the keys and defaults, the schema the types and descriptions, so the table
cannot drift from either. A test compares the README with this output; to update it, run:

    python tests/chart/chart_values_table.py
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "chart"
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"

Schema = dict[str, Any]


def load_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def load_schema() -> Schema:
    return json.loads((CHART / "values.schema.json").read_text())


def resolve(node: Schema, root: Schema) -> Schema:
    """Follow a local $ref, keeping the referring node's description."""
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, "description": node.get("description", target.get("description"))}


def is_documented_by_key(node: Schema) -> bool:
    """Closed objects whose keys carry descriptions get a row per key; others (Kubernetes
    structures such as resources or a security context) are one value."""
    properties = node.get("properties")
    if not properties or node.get("additionalProperties") is not False:
        return False
    return all("description" in child for child in properties.values())


def leaves(
    values: dict[str, Any], node: Schema, root: Schema, prefix: str = ""
) -> Iterator[tuple[str, Any, Schema | None]]:
    """Yield (dotted key, default, schema node or None) for every documented value."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        child = node.get("properties", {}).get(key)
        child = resolve(child, root) if child is not None else None
        if isinstance(value, dict) and child is not None and is_documented_by_key(child):
            yield from leaves(value, child, root, f"{path}.")
        else:
            yield path, value, child


def type_of(node: Schema) -> str:
    if "type" in node:
        return str(node["type"])
    if "enum" in node:
        return "enum"
    if "oneOf" in node:
        return " or ".join(str(option.get("type", "?")) for option in node["oneOf"])
    return "object"


def cell(text: str) -> str:
    """Escape what Markdown would read as table syntax or HTML (<fullname>)."""
    escaped = text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return escaped.replace("\n", " ")


def rows() -> list[str]:
    schema = load_schema()
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for path, default, node in leaves(load_values(), schema, schema):
        if node is None:
            raise KeyError(f"{path} is in values.yaml but not in values.schema.json")
        shown = json.dumps(default, separators=(", ", ": "))
        lines.append(
            f"| `{path}` | {type_of(node)} | `{cell(shown)}` | {cell(node['description'])} |"
        )
    return lines


def table() -> str:
    return "\n".join([START, *rows(), END])


def updated_readme(text: str) -> str:
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    return before + table() + after


def main() -> int:
    readme = CHART / "README.md"
    readme.write_text(updated_readme(readme.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
