"""Flower as the chart runs it: task columns that show node and image, a history kept on disk.

The options are Flower's own (FLOWER_<OPTION> is --<option>): the names are checked against the
option table of the installed Flower, so a typo or a renamed option fails here, not in a pod.
"""

from __future__ import annotations

import yaml
from chart_helpers import CHART, Rendered, env_of
from flower.options import default_options as OPTIONS
from flower.views.tasks import TASK_COLUMNS

from localcluster import product


def flower_env(result: Rendered) -> dict[str, str]:
    return {name: var.get("value", "") for name, var in env_of(result.container("flower")).items()}


def test_every_flower_variable_names_a_flower_option(rendered: dict[str, Rendered]) -> None:
    for value_set in ("default", "flower-ingress"):
        names = [name for name in flower_env(rendered[value_set]) if name.startswith("FLOWER_")]
        unknown = [name for name in names if name.removeprefix("FLOWER_").lower() not in OPTIONS]
        assert unknown == [], value_set


def test_the_task_list_shows_each_tasks_node_and_image_and_its_exception(
    rendered: dict[str, Rendered],
) -> None:
    columns = flower_env(rendered["default"])["FLOWER_TASKS_COLUMNS"].split(",")

    assert set(columns) <= set(TASK_COLUMNS)
    assert {"kwargs", "state", "exception", "worker"} <= set(columns)  # kwargs: node and image


def test_flower_keeps_its_history_on_a_writable_volume_saved_periodically(
    rendered: dict[str, Rendered],
) -> None:
    default, claimed = rendered["default"], rendered["flower-ingress"]
    env = flower_env(default)

    assert env["FLOWER_PERSISTENT"] == "true"
    assert env["FLOWER_STATE_SAVE_INTERVAL"] == "60000"  # milliseconds, from 60 s
    mount = next(m for m in default.container("flower")["volumeMounts"] if m["name"] == "history")
    assert env["FLOWER_DB"].startswith(mount["mountPath"] + "/")
    assert not mount.get("readOnly")
    volume = next(v for v in default.pod_spec("flower")["volumes"] if v["name"] == "history")
    assert volume == {"name": "history", "emptyDir": {}}
    claim = next(v for v in claimed.pod_spec("flower")["volumes"] if v["name"] == "history")
    assert claim["persistentVolumeClaim"] == {"claimName": "flower-history"}
    assert flower_env(claimed)["FLOWER_STATE_SAVE_INTERVAL"] == "15000"


def test_the_demo_and_tests_run_flower_with_the_charts_columns() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    assert values["flower"]["tasksColumns"] == product.FLOWER_TASKS_COLUMNS
