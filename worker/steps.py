"""The worker step that builds the node agent, so tasks find it through their app.

The agent is made when Celery builds the worker (a bootstep of the worker's blueprint), from
the parts ``python -m worker`` opened and checked first: a wrong runtime socket fails before
Celery starts, in one line. The runtime and the NATS bus stay owned by ``python -m worker``,
which closes them after the worker's pool has drained: the last pulls' events still leave.
Tasks reach the agent as ``agent_of(self.app)``, never through a module global.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from tasks.bus import NatsBus
from tasks.settings import Settings

from .agent import NodeAgent, attach_agent
from .runtime import ImageRuntime


def agent_step(settings: Settings, node: str, runtime: ImageRuntime, bus: NatsBus) -> type[Any]:
    """A worker bootstep class (Celery's blueprints take classes) bound to these parts."""

    class NodeAgentStep(bootsteps.StartStopStep):
        label = "node agent"

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.agent = NodeAgent(settings, node, runtime, bus)
            attach_agent(worker.app, self.agent)

        def shutdown(self, worker: Any) -> None:
            attach_agent(worker.app, None)

    return NodeAgentStep
