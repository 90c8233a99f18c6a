"""The Celery application (configured from the top-level ``celeryconfig``)."""

from __future__ import annotations

from celery import Celery

TASK_MODULES = [
    "powerq.tasks.steps",
    "powerq.tasks.sweeper",
    "powerq.tasks.monitor",
    "powerq.tasks.batch_pump",
]

app = Celery("powerq", include=TASK_MODULES)
app.config_from_object("celeryconfig")

# Worker start (resume a dead predecessor's leases) and stop (log out of BMCs).
import powerq.tasks.lifecycle  # noqa: E402, F401
