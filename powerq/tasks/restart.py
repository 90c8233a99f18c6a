"""Keep a Celery worker running: restart it when it dies, stop it on a signal.

Celery's worker exits with "Unrecoverable error" when Redis goes away while
it holds unacknowledged messages (kombu 5.7's restore on close reaches for a
connection that is already gone: celery/kombu#582 and relatives). Nothing is
lost by that (PostgreSQL holds the work; the sweeper re-dispatches), but a
lane without a worker would stall. ``powerq worker`` therefore runs the Celery
worker as a child and restarts it with backoff until it is asked to stop.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


def run_supervised(argv: Sequence[str]) -> int:
    """Run ``argv`` until it exits cleanly or SIGTERM/SIGINT arrives; return its exit code.

    The signal is passed on to the child (Celery's warm shutdown). A child
    that exits for any other reason is restarted after a backoff of 1, 2, 4 …
    seconds (at most 30), reset after a run of a minute.
    """
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    backoff = 1.0
    try:
        while True:
            started = time.monotonic()
            child = subprocess.Popen(list(argv))
            code = child.wait()
            if stopping or code == 0:
                return code
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, MAX_BACKOFF_S)
            log.warning("celery worker exited with %s; restarting in %.0fs", code, backoff)
            _sleep_unless(lambda: stopping, backoff)
            if stopping:
                return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _sleep_unless(stop: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop():
        time.sleep(0.1)
