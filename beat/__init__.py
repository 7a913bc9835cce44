"""The periodic re-warm: ``celery -A tasks beat`` with the scheduler in :mod:`beat.scheduler`.

celeryconfig.py names the scheduler by its dotted path, so the shared contract in tasks/ never
imports this package.
"""
