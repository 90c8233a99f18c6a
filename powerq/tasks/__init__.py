"""Celery side of powerq: the app, lane routing, the step tasks, sweeper and monitor.

``celery -A powerq.tasks worker -Q powerq.lane.0 -c 1`` finds :data:`app` here.
"""

from powerq.tasks.app import app

__all__ = ["app"]
