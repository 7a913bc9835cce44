"""The watcher: turns workload and node changes into a catalog and into pull tasks.

``python -m watcher`` starts it. Reflectors (:mod:`watcher.reflector`) list and watch the API;
:mod:`watcher.catalog` keeps what is in use; :mod:`watcher.dispatch` writes the catalog to NATS
key-value and sends Celery tasks to the per-node queues.
"""
