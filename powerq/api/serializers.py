"""How nodes, power requests and events look on the outside (JSON), in one place.

The API, the CLI and the status page all use these models and functions, so
a node looks the same everywhere: timestamps are ISO-8601 in UTC (``…Z``),
enums are their string values, and a node's BMC password is never part of it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from powerq.models import ApiToken, Node, PowerEvent, PowerRequest
from powerq.states import (
    Action,
    DesiredPowerState,
    DriverKind,
    Evidence,
    PowerState,
    RequestStatus,
    Step,
)


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc)]


class OutModel(BaseModel):
    """Base of every response model: built from trusted rows, frozen."""

    model_config = ConfigDict(frozen=True)


class PowerRequestOut(OutModel):
    """A power request and how its execution went."""

    id: uuid.UUID
    node: str = Field(description="Name of the node")
    action: Action
    status: RequestStatus
    attempt: int = Field(description="Fencing token: incremented by every worker claim")
    next_step: Step
    checks: int
    deadline_s: float
    deadline_at: UtcDatetime | None
    soft_fallback: bool
    not_before: UtcDatetime | None
    dispatched_at: UtcDatetime | None = Field(description="Last time a lane was woken for it")
    dispatch_count: int
    lease_expires_at: UtcDatetime | None
    command_sent: Action | None = Field(
        description="The last command transmitted (a cycle sends off, then on)"
    )
    command_sent_at: UtcDatetime | None = Field(
        description="Written just before the command went out (at most once per phase)"
    )
    command_acked_at: UtcDatetime | None = Field(
        description="When the BMC answered it; null after a send means it may or may not have run"
    )
    transition_seen_at: UtcDatetime | None = Field(
        description="A cycle: when off was read back (the on phase follows)"
    )
    evidence: Evidence | None = Field(
        description=(
            "What showed a success: power_state (target read back), already (nothing sent), "
            "off_then_on (a cycle seen off, then on), acknowledged (the BMC answered; a reset "
            "cannot be read back: not verified), read (a query)"
        )
    )
    start_by: UtcDatetime | None = Field(
        description="Not started by then (its batch's deadline), it fails unstarted"
    )
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    observed_before: PowerState | None
    observed_after: PowerState | None
    error: str | None
    requested_by: str
    batch_id: uuid.UUID | None
    idempotency_key: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class NodeOut(OutModel):
    """A machine, its observed and desired power state. No password, ever."""

    name: str
    driver: DriverKind
    address: str
    port: int
    username: str
    power_state: PowerState = Field(description="Observed: last state the BMC reported")
    power_state_at: UtcDatetime | None
    desired_power_state: DesiredPowerState | None = Field(
        description="Desired: set only by power requests, null when nobody asked"
    )
    desired_power_state_at: UtcDatetime | None
    maintenance: bool
    maintenance_reason: str | None = Field(description="Why the node is in maintenance")
    maintenance_by: str | None = Field(description="The token name that put it there")
    maintenance_since: UtcDatetime | None
    power_fault: bool
    power_fault_reason: str | None
    power_fault_at: UtcDatetime | None
    last_error: str | None
    last_checked_at: UtcDatetime | None
    tags: list[str]
    system: str | None = Field(description="redfish: the system path (null: the only one)")
    verify_tls: bool = Field(description="redfish: whether the BMC's certificate is verified")
    ca_bundle_set: bool = Field(description="redfish: whether a CA bundle is stored")
    ipmi_cipher_suite: str = Field(description="ipmi: auto, 3 or 17")
    ipmi_privilege: str = Field(description="ipmi: operator or administrator")
    ipmi_kg_set: bool = Field(description="ipmi: whether a BMC key (Kg) is stored")
    outstanding_request: PowerRequestOut | None = Field(
        description="The pending or running request, if any"
    )
    created_at: UtcDatetime
    updated_at: UtcDatetime


class PowerStatusOut(OutModel):
    """Observed versus desired power of one node, and what is being done about it."""

    node: str
    power_state: PowerState
    power_state_at: UtcDatetime | None
    desired_power_state: DesiredPowerState | None
    desired_power_state_at: UtcDatetime | None
    in_sync: bool | None = Field(
        description="Whether observed matches desired (null: no desired state or unknown)"
    )
    outstanding_request: PowerRequestOut | None
    maintenance: bool
    power_fault: bool
    power_fault_reason: str | None
    last_error: str | None
    last_checked_at: UtcDatetime | None


class PowerEventOut(OutModel):
    """One entry of a node's audit trail."""

    id: int
    node: str
    request_id: uuid.UUID | None
    kind: str
    actor: str
    message: str | None
    detail: dict[str, Any]
    created_at: UtcDatetime


class TokenOut(OutModel):
    """An API token as listed (never its hash or plaintext)."""

    id: int
    name: str
    role: str
    created_at: UtcDatetime
    last_used_at: UtcDatetime | None
    revoked_at: UtcDatetime | None
    expires_at: UtcDatetime | None


def request_out(request: PowerRequest) -> PowerRequestOut:
    """The outside view of a power request (its node must be loaded, as it is by default)."""
    return PowerRequestOut(
        id=request.id,
        node=request.node.name,
        action=request.action,
        status=request.status,
        attempt=request.attempt,
        next_step=request.next_step,
        checks=request.checks,
        deadline_s=request.deadline_s,
        deadline_at=request.deadline_at,
        soft_fallback=request.soft_fallback,
        not_before=request.not_before,
        dispatched_at=request.dispatched_at,
        dispatch_count=request.dispatch_count,
        lease_expires_at=request.lease_expires_at,
        command_sent=request.command_sent,
        command_sent_at=request.command_sent_at,
        command_acked_at=request.command_acked_at,
        transition_seen_at=request.transition_seen_at,
        evidence=Evidence(request.evidence) if request.evidence else None,
        start_by=request.start_by,
        started_at=request.started_at,
        finished_at=request.finished_at,
        observed_before=request.observed_before,
        observed_after=request.observed_after,
        error=request.error,
        requested_by=request.requested_by,
        batch_id=request.batch_id,
        idempotency_key=request.idempotency_key,
        created_at=request.created_at,
        updated_at=request.updated_at,
    )


def _maybe_request(request: PowerRequest | None) -> PowerRequestOut | None:
    return None if request is None else request_out(request)


def node_out(node: Node, outstanding: PowerRequest | None = None) -> NodeOut:
    """The outside view of a node, with its outstanding request if given."""
    return NodeOut(
        name=node.name,
        driver=node.driver,
        address=node.bmc_address,
        port=node.bmc_port,
        username=node.bmc_username,
        power_state=node.power_state,
        power_state_at=node.power_state_at,
        desired_power_state=node.desired_power_state,
        desired_power_state_at=node.desired_power_state_at,
        maintenance=node.maintenance,
        maintenance_reason=node.maintenance_reason,
        maintenance_by=node.maintenance_by,
        maintenance_since=node.maintenance_since,
        power_fault=node.power_fault,
        power_fault_reason=node.power_fault_reason,
        power_fault_at=node.power_fault_at,
        last_error=node.last_error,
        last_checked_at=node.last_checked_at,
        tags=list(node.tags),
        system=node.bmc_system,
        verify_tls=node.verify_tls,
        ca_bundle_set=node.ca_bundle is not None,
        ipmi_cipher_suite=node.ipmi_cipher_suite,
        ipmi_privilege=node.ipmi_privilege,
        ipmi_kg_set=node.ipmi_kg_encrypted is not None,
        outstanding_request=_maybe_request(outstanding),
        created_at=node.created_at,
        updated_at=node.updated_at,
    )


def in_sync(node: Node) -> bool | None:
    """Whether the observed state matches the desired one (None: nothing to compare)."""
    if node.desired_power_state is None or node.power_state is PowerState.UNKNOWN:
        return None
    return node.power_state.value == node.desired_power_state.value


def power_status_out(node: Node, outstanding: PowerRequest | None) -> PowerStatusOut:
    """Observed versus desired power of ``node``."""
    return PowerStatusOut(
        node=node.name,
        power_state=node.power_state,
        power_state_at=node.power_state_at,
        desired_power_state=node.desired_power_state,
        desired_power_state_at=node.desired_power_state_at,
        in_sync=in_sync(node),
        outstanding_request=_maybe_request(outstanding),
        maintenance=node.maintenance,
        power_fault=node.power_fault,
        power_fault_reason=node.power_fault_reason,
        last_error=node.last_error,
        last_checked_at=node.last_checked_at,
    )


def event_out(event: PowerEvent, node_name: str) -> PowerEventOut:
    """The outside view of an audit event of node ``node_name``."""
    return PowerEventOut(
        id=event.id,
        node=node_name,
        request_id=event.request_id,
        kind=event.kind,
        actor=event.actor,
        message=event.message,
        detail=dict(event.detail),
        created_at=event.created_at,
    )


def token_out(token: ApiToken) -> TokenOut:
    """The outside view of an API token (no hash)."""
    return TokenOut(
        id=token.id,
        name=token.name,
        role=token.role,
        created_at=token.created_at,
        last_used_at=token.last_used_at,
        revoked_at=token.revoked_at,
        expires_at=token.expires_at,
    )


def to_json(value: Any) -> Any:
    """``value`` made JSON-ready: rows become their outside view, models their dict.

    Used for the extra members of problem documents (e.g. the outstanding request
    a 409 carries).
    """
    if isinstance(value, PowerRequest):
        return request_out(value).model_dump(mode="json")
    if isinstance(value, Node):
        return node_out(value).model_dump(mode="json")
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return _as_utc(value).isoformat().replace("+00:00", "Z")
    return value
