"""Schemas of ``GET /v1/summary`` and of the node list's fleet-page parameters
(``condition``, ``changed_since``), kept apart from :mod:`powerq.api.schemas`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BeforeValidator, Field, StringConstraints

from powerq.api.schemas import NodeQuery, Omittable
from powerq.api.serializers import OutModel, UtcDatetime
from powerq.fleet_summary import FleetFilter, FleetSummary


def _iso_8601(value: Any) -> Any:
    """An ISO 8601 date-time only (pydantic alone also takes "0.5" as a Unix time).

    :raises ValueError: a string that is not an ISO 8601 date-time.
    """
    return datetime.fromisoformat(value) if isinstance(value, str) else value


IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_8601)]


class FleetNodeQuery(NodeQuery):
    """The node list's filters, plus the fleet page's: condition and delta."""

    condition: Omittable[Literal["drift", "busy", "ok"]] = Field(
        default=None,
        description="drift: observed differs from desired and nothing is outstanding; "
        "busy: a request is outstanding; ok: neither",
    )
    changed_since: Omittable[IsoDatetime] = Field(
        default=None,
        description="Only nodes changed at or after this time (state read, desired state, "
        "flags, or their outstanding request's progress); use `as_of` of GET /v1/summary "
        "minus a few seconds, as the status page does",
    )

    name_from: Omittable[Annotated[str, StringConstraints(min_length=1, max_length=255)]] = Field(
        default=None, description="Names from this one on (inclusive, in the list's order)"
    )
    name_to: Omittable[Annotated[str, StringConstraints(min_length=1, max_length=255)]] = Field(
        default=None, description="Names up to this one (inclusive, in the list's order)"
    )

    def fleet_filter(self) -> FleetFilter:
        """The fleet query's view of these filters."""
        return FleetFilter(
            nodes=self.filters(),
            condition=self.condition,
            changed_since=self.changed_since,
            name_from=self.name_from,
            name_to=self.name_to,
        )


class ObservedCounts(OutModel):
    """Live nodes by observed power state."""

    on: int
    off: int
    unknown: int


class DesiredCounts(OutModel):
    """Live nodes by desired power state (none: nobody asked)."""

    on: int
    off: int
    none: int


class RequestCounts(OutModel):
    """Outstanding requests by status (held: pending, waiting for its batch's turn)."""

    held: int
    pending: int
    running: int


class SummaryOut(OutModel):
    """The fleet at a glance."""

    as_of: UtcDatetime = Field(description="The database's time these counts are as of")
    nodes: int = Field(description="Live nodes")
    observed: ObservedCounts
    desired: DesiredCounts
    in_sync: int = Field(description="Observed equals desired")
    drift: int = Field(description="Observed differs from desired and nothing is outstanding")
    converging: int = Field(description="Observed differs from desired, a request works on it")
    busy: int = Field(description="Nodes with an outstanding (pending or running) request")
    maintenance: int
    power_fault: int
    requests: RequestCounts
    batches_running: int = Field(description="Batches with work outstanding")


def summary_out(summary: FleetSummary) -> SummaryOut:
    """The outside view of the fleet's counts."""
    return SummaryOut(
        as_of=summary.as_of,
        nodes=summary.nodes,
        observed=ObservedCounts(**summary.observed),
        desired=DesiredCounts(**summary.desired),
        in_sync=summary.in_sync,
        drift=summary.drift,
        converging=summary.converging,
        busy=summary.busy,
        maintenance=summary.maintenance,
        power_fault=summary.power_fault,
        requests=RequestCounts(**summary.requests),
        batches_running=summary.batches_running,
    )
