"""The watcher: turns workload and node changes into a catalog and into pull tasks.

``python -m watcher`` starts it. Reflectors (:mod:`watcher.reflector`) list and watch the API;
:mod:`watcher.workloads` and :mod:`watcher.targeting` boil objects down to images and placement
rules; :mod:`watcher.catalog` keeps what is in use; :mod:`watcher.slices` works out which images
belong on which node; :mod:`watcher.dispatch` writes the catalog to NATS key-value and sends
Celery tasks to the per-node queues; :mod:`watcher.leader` elects the one replica that
dispatches, and ``Watcher.check`` (served as ``/healthz``) says whether it is still watching.
"""
