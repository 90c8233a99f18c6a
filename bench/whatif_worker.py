"""A lane worker with the fixes BENCHMARKS.md recommends, patched in at run time.

Evidence for the recommendations only (``python -m bench batch --whatif``),
never a way to run powerq: it changes, in this process and its prefork child,

* no pool pre-ping: engines are made with ``pool_pre_ping=False``;
* no ``SELECT now()`` round trip per transaction: the executor's ``db_now``
  returns this host's clock (the same clock PostgreSQL reads here; the real fix
  is ``now()`` inside the statements);
* no Celery task events (``worker_send_task_events``/``task_send_sent_event``);

and runs the Celery worker in this process (no ``powerq worker`` supervisor).
The control worker of a what-if run also gets ``POWERQ_REDISPATCH_AFTER_S=300``
so that the sweeper does not ring requests again while they wait in a long lane.

    python -m bench.whatif_worker LANE
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any


def apply() -> None:
    """Patch powerq in this process (before any engine or worker exists)."""
    from sqlalchemy import create_engine

    import powerq.db as db
    import powerq.tasks.leases as leases
    import powerq.tasks.steps as steps
    from powerq.tasks.app import app

    def engine_for(url: str) -> Any:
        if url not in db._engines:
            db._engines[url] = create_engine(
                db.sqlalchemy_url(url), pool_pre_ping=False, pool_size=5, max_overflow=10
            )
        return db._engines[url]

    def host_now(session: Any) -> datetime:
        return db.utcnow()

    db.engine_for = engine_for
    leases.db_now = host_now
    steps.db_now = host_now
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False


def main(argv: list[str]) -> None:
    """Patch, then run the lane's Celery worker as ``powerq worker --lane K`` would."""
    lane = int(argv[0])
    apply()
    from powerq.tasks.worker import parse, serve

    sys.exit(serve(parse(["lane", str(lane), "--loglevel", "WARNING"])))


if __name__ == "__main__":
    main(sys.argv[1:])
