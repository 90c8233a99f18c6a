"""``GET /v1/summary``: the fleet's counts (observed, desired, in sync, drift,
flags, outstanding requests, batches running) in one SQL statement whatever
the fleet's size. The status page reads its count cards from here, and takes
``as_of`` as the point from which to ask ``GET /v1/nodes?changed_since=`` next.
"""

from __future__ import annotations

from apiflask import APIBlueprint, APIFlask

from powerq.api.auth import READER, auth
from powerq.api.results import ViewResult
from powerq.api.session import transaction
from powerq.api.summary_schemas import SummaryOut, summary_out
from powerq.fleet_summary import fleet_summary

bp = APIBlueprint("summary", __name__, url_prefix="/v1", tag="Nodes")


@bp.get("/summary")
@bp.auth_required(auth, roles=[READER])
@bp.output(SummaryOut)
def get_summary() -> ViewResult:
    """The fleet at a glance

    Counts over live nodes and outstanding requests, as of `as_of` (the
    database's time). One SQL statement, whatever the fleet's size.
    """
    with transaction() as session:
        return summary_out(fleet_summary(session))


def init_app(app: APIFlask) -> None:
    """Register ``GET /v1/summary``."""
    app.register_blueprint(bp)
