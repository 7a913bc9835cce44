"""The exceptions node tasks end with survive Celery's JSON serialization, message intact."""

from __future__ import annotations

import json

import pytest
from celery.backends.base import Backend

from tasks.app import app
from tasks.errors import (
    NodeTaskError,
    PullFailedError,
    RewarmIncompleteError,
    TransientPullError,
)


@pytest.mark.parametrize("kind", [PullFailedError, TransientPullError, RewarmIncompleteError])
def test_a_node_task_error_round_trips_through_a_json_result_backend(
    kind: type[NodeTaskError],
) -> None:
    backend = Backend(app, serializer="json")
    error = kind("registry.example/web:v1: not found:\n  manifest unknown")

    stored = json.loads(json.dumps(backend.prepare_exception(error, "json")))
    back = backend.exception_to_python(stored)

    assert type(back) is kind
    assert str(back) == "registry.example/web:v1: not found: manifest unknown"  # one line
    assert stored["exc_type"] == kind.__name__ and stored["exc_module"] == "tasks.errors"


def test_a_rewarm_names_what_failed_and_counts_what_it_does_not_list() -> None:
    failed = {f"registry.example/app-{i:02}:v1": "not found" for i in range(12)}

    message = RewarmIncompleteError.of(failed, expected=20).message

    assert message.startswith("12 of 20 image(s) not warm: registry.example/app-00:v1 (not found)")
    assert "app-09:v1 (not found); and 2 more (celery -A tasks warm-status)" in message
    assert "app-10" not in message
