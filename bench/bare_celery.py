"""The baseline of benchmark 6: a bare Celery worker (no powerq imported), same broker,
same pool settings as a lane worker (threads, acks_late), one no-op task."""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "bench.bare"
app = Celery("bare", broker=os.environ.get("POWERQ_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop", ignore_result=True)  # type: ignore[untyped-decorator]
def noop(value: int) -> int:
    """Do nothing."""
    return value
