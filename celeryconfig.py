"""Celery settings for powerq (read by ``powerq.tasks.app``).

The numbers nest so that no message can be redelivered while its step may
still be running, and no lease can outlive a run that went on:

    run (at most ~20 s, then it parks)  <  lease (POWERQ_LEASE_S, 60 s)
        <  Redis visibility_timeout (300 s)

* A lane worker runs its steps in a thread pool (``powerq worker``), where
  Celery's time limits do not apply. A run is bounded by the executor itself:
  it parks after ``steps.MAX_RUN_S``, every BMC call is bounded by the
  driver's own timeouts (a few seconds), and every write renews the lease.
* The control worker (prefork) keeps the hard time limit below as a hang guard.
* The lease is how long a claim protects a running request from a second
  claim; it is renewed by every write of the run and must outlast the run.
* The visibility timeout is when Redis hands an unacknowledged message to
  another worker. Countdown (check backoff) tasks sit unacked in the worker and
  count against it, so check countdowns stay short (at most 10 s). After a
  lane worker is killed, its restart ends the dead one's leases and rings
  their requests at once (``powerq.tasks.lifecycle``); after a broker loss,
  the sweeper re-dispatches from PostgreSQL.
"""

from __future__ import annotations

import os

from kombu import Queue

from powerq.broker import sentinel_transport_options
from powerq.config import get_settings
from powerq.tasks.routing import CONTROL_QUEUE, lane_queue

_settings = get_settings()

STEP_SOFT_TIME_LIMIT_S = 20
STEP_TIME_LIMIT_S = 30
VISIBILITY_TIMEOUT_S = 300
assert STEP_TIME_LIMIT_S < _settings.lease_s < VISIBILITY_TIMEOUT_S, "see module docstring"

broker_url = _settings.broker_url or os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
broker_connection_retry_on_startup = True
broker_connection_timeout = 4
broker_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT_S,
    "socket_connect_timeout": 3,
    # A Redis that accepts connections but never answers must not hang an API
    # call that is only ringing a lane (the intent is already durable).
    "socket_timeout": 5,
    # With sentinel:// URLs: the master name (POWERQ_BROKER_MASTER_NAME) and how
    # to ask the sentinels (their password if any, 1 s timeouts, no retries:
    # powerq.broker). Every connection asks the sentinels where the primary is,
    # so a reconnect after a failover reaches the promoted replica.
    **sentinel_transport_options(_settings),
}
# A worker whose broker connection drops (primary lost, failover under way)
# reconnects (Celery's default, stated here because Sentinel relies on it: the
# reconnect asks the sentinels for the new primary). Should Celery still give
# up, powerq.tasks.worker re-executes the process.
broker_connection_retry = True

# Lanes: one queue per lane, each consumed by exactly one concurrency-1 worker.
# Celery publishes to a direct queue through Redis' anonymous exchange (the
# message goes straight onto the list named after the queue), so no exchange
# binding stored in Redis is needed: a FLUSHALL cannot make it route nowhere.
task_queues = [Queue(lane_queue(k)) for k in range(_settings.lanes)] + [Queue(CONTROL_QUEUE)]
task_default_queue = CONTROL_QUEUE
task_create_missing_queues = False

# Delivery: ack after the step ran; a SIGKILLed worker's message is requeued.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_soft_time_limit = STEP_SOFT_TIME_LIMIT_S
task_time_limit = STEP_TIME_LIMIT_S
task_ignore_result = True
result_backend = None

# Messages carry only ids: JSON, never pickle.
task_serializer = "json"
accept_content = ["json"]

# Flower sees tasks through events, and every event is a Redis message: a
# worker's are three per task (received, started, succeeded), the publisher's
# task-sent one more per publish (the API's hot path). Both are on only with
# POWERQ_TASK_EVENTS=1, which `powerq up --flower` sets; a Flower started
# without it still turns the workers' events on at run time (its
# --enable_events, on by default), but cannot ask publishers for task-sent.
_task_events = os.environ.get("POWERQ_TASK_EVENTS", "") == "1"
worker_send_task_events = _task_events
task_send_sent_event = _task_events

worker_hijack_root_logger = False
worker_max_memory_per_child = 200_000  # KiB: recycle a lane worker that leaks
timezone = "UTC"
enable_utc = True

# Periodic jobs (run exactly one beat; both jobs are harmless if two do).
beat_schedule = {
    "powerq-sweep": {
        "task": "powerq.sweep",
        "schedule": _settings.sweep_interval_s,
        "options": {"queue": CONTROL_QUEUE, "expires": _settings.sweep_interval_s},
    },
    "powerq-monitor": {
        "task": "powerq.monitor",
        "schedule": _settings.monitor_interval_s,
        "options": {"queue": CONTROL_QUEUE, "expires": _settings.monitor_interval_s},
    },
}
