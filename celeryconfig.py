"""Celery settings for every component, read from the environment (see tasks/settings.py).

The choices here are the ones that keep thousands of node workers cheap and no pull lost:
JSON only, late acknowledgement with requeue when a worker dies, prefetch of one, and a Redis
visibility timeout longer than the longest pull (or Redis redelivers a pull still running).

Task events are on from the start, not only once Flower asks for them, so Flower sees the first
pulls after an install too (docs/flower.md). Every public name here is a Celery setting: Celery
reads them all as configuration and shows them (Flower's worker page, ``celery inspect conf``),
so helpers are imported under private names.
"""

from tasks.names import REWARM_CATALOG as _REWARM_CATALOG
from tasks.settings import settings_or_exit as _settings_or_exit

_settings = _settings_or_exit()  # a bad setting: one line on stderr, exit status 1

broker_url = _settings.broker.url
broker_connection_retry_on_startup = True
broker_transport_options = {"visibility_timeout": _settings.broker.visibility_timeout}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"
worker_send_task_events = True
task_send_sent_event = True  # a task shows in Flower from its send, before a worker has it

task_ignore_result = True  # results travel on NATS, with the node's status in NATS KV
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_default_queue = "warm.unrouted"  # every task names its node's queue; this one stays empty
task_create_missing_queues = True

beat_scheduler = "beat.scheduler:RewarmScheduler"
beat_schedule = {
    "rewarm-catalog": {"task": _REWARM_CATALOG, "schedule": _settings.rewarm.interval},
}
