"""``GET /healthz`` (no auth): can the API record intent and wake lanes?

200 when PostgreSQL answers (``status: degraded`` if the broker does not: power
requests are still accepted, and dispatched later by the sweeper); 503
problem+json when PostgreSQL does not. The answer also counts the lanes a
live ``powerq agent`` holds (``lanes``): a lane without one has no consumer
until an agent takes it; it does not change ``status``.
"""

from __future__ import annotations

import logging
from typing import Literal

from apiflask import APIBlueprint, APIFlask
from sqlalchemy import text

from powerq.api.problems import problem, problem_response
from powerq.api.results import ViewResult
from powerq.api.schemas import Check, Health, Lanes
from powerq.broker import bounded_connection
from powerq.config import get_settings
from powerq.db import get_engine

log = logging.getLogger(__name__)

bp = APIBlueprint("health", __name__, tag="Health")
BROKER_TIMEOUT_S = 1.0


# The database check is also the lanes' census: one statement either way.
_LANES = text(
    "SELECT (SELECT count(*) FROM lane_leases WHERE expires_at > now() AND lane < :lanes)"
    " AS held, (SELECT count(*) FROM agents WHERE expires_at > now()) AS agents"
)


def database_check() -> tuple[Check, Lanes | None]:
    """Whether PostgreSQL answers, and (when it does) how many lanes a live agent
    holds; one statement."""
    lanes = get_settings().lanes
    try:
        with get_engine().connect() as conn:
            row = conn.execute(_LANES, {"lanes": lanes}).one()
    except Exception as exc:  # any failure is the answer, not an error
        log.warning("health: database unreachable: %s", exc)
        return Check(ok=False, detail=type(exc).__name__), None
    return Check(ok=True, detail=None), Lanes(total=lanes, held=row.held, agents=row.agents)


def broker_check(timeout_s: float = BROKER_TIMEOUT_S) -> Check:
    """Whether the Celery broker answers a connection (and Redis's PING) in time."""
    try:
        with bounded_connection(timeout_s) as conn:
            conn.default_channel  # noqa: B018 - opening a channel PINGs Redis
    except Exception as exc:  # any failure is the answer, not an error
        log.warning("health: broker unreachable: %s", exc)
        return Check(ok=False, detail=type(exc).__name__)
    return Check(ok=True, detail=None)


@bp.get("/healthz")
@bp.output(Health, description="The database answers (the broker may not: `degraded`)")
@bp.doc(responses={503: "The database does not answer (problem+json with the checks)"})
def healthz() -> ViewResult:
    """Health of the API's backing services"""
    (database, lanes), broker = database_check(), broker_check()
    if not database.ok:
        body = problem(
            503,
            "Service unavailable",
            "the database cannot be reached",
            database=database.model_dump(),
            broker=broker.model_dump(),
        )
        return problem_response(body, {"Retry-After": "5"})
    status: Literal["ok", "degraded"] = "ok" if broker.ok else "degraded"
    return Health(status=status, database=database, broker=broker, lanes=lanes)


def init_app(app: APIFlask) -> None:
    """Register the health blueprint."""
    app.register_blueprint(bp)
