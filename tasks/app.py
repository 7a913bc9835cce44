"""The Celery application every component shares (``celery -A tasks ...``)."""

from __future__ import annotations

from celery import Celery

app = Celery("warm-images")
app.config_from_object("celeryconfig")
