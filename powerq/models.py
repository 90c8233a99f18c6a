"""The durable state of powerq: nodes, power requests, batches, events, tokens.

Desired (``desired_power_state``, set only by user requests) and observed
(``power_state``, set only from verified BMC reads) are separate columns. The
partial unique index ``uq_power_requests_one_outstanding`` lets the database
itself refuse a second outstanding request for a node.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from powerq.db import Base
from powerq.states import (
    Action,
    DesiredPowerState,
    DriverKind,
    PowerState,
    RequestStatus,
    Step,
)


def _pg_enum(enum_cls: type[enum.Enum], name: str) -> Enum:
    """A PostgreSQL enum stored by value ("soft_off"), not by member name."""
    return Enum(
        enum_cls,
        name=name,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


TZ = DateTime(timezone=True)


class Node(Base):
    """A machine and how to reach its BMC."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Unique among live nodes (uq_nodes_name_live): a deleted node's name is free again.
    name: Mapped[str] = mapped_column(String(63))
    driver: Mapped[DriverKind] = mapped_column(_pg_enum(DriverKind, "driver_kind"))
    bmc_address: Mapped[str] = mapped_column(String(255))
    bmc_port: Mapped[int] = mapped_column(Integer, default=623)
    bmc_username: Mapped[str] = mapped_column(String(64))
    # Fernet token of the password (see powerq.secrets); never the plaintext.
    bmc_password_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    power_state: Mapped[PowerState] = mapped_column(
        _pg_enum(PowerState, "power_state"), default=PowerState.UNKNOWN, server_default="unknown"
    )
    power_state_at: Mapped[datetime | None] = mapped_column(TZ)
    desired_power_state: Mapped[DesiredPowerState | None] = mapped_column(
        _pg_enum(DesiredPowerState, "desired_power_state")
    )
    desired_power_state_at: Mapped[datetime | None] = mapped_column(TZ)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Why, by whom and since when (set by the API; cleared when maintenance ends).
    maintenance_reason: Mapped[str | None] = mapped_column(Text)
    maintenance_by: Mapped[str | None] = mapped_column(Text)
    maintenance_since: Mapped[datetime | None] = mapped_column(TZ)
    power_fault: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    power_fault_reason: Mapped[str | None] = mapped_column(Text)
    power_fault_at: Mapped[datetime | None] = mapped_column(TZ)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    last_checked_at: Mapped[datetime | None] = mapped_column(TZ)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now(), onupdate=func.now())
    # Soft delete: a deleted node keeps its requests and events (the audit trail).
    deleted_at: Mapped[datetime | None] = mapped_column(TZ)
    # Redfish: the system's path (None: the single member of /redfish/v1/Systems),
    # TLS verification and an optional CA bundle (PEM) for the BMC's certificate.
    bmc_system: Mapped[str | None] = mapped_column(String(255))
    verify_tls: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    ca_bundle: Mapped[str | None] = mapped_column(Text)
    # IPMI: cipher suite ("auto", "3", "17"), privilege, and the BMC key Kg
    # (encrypted like the password; None: no Kg).
    ipmi_cipher_suite: Mapped[str] = mapped_column(String(8), default="auto", server_default="auto")
    ipmi_privilege: Mapped[str] = mapped_column(
        String(16), default="administrator", server_default="administrator"
    )
    ipmi_kg_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)

    requests: Mapped[list[PowerRequest]] = relationship(
        back_populates="node", passive_deletes=True, lazy="raise_on_sql"
    )

    __table_args__ = (
        Index("ix_nodes_tags", "tags", postgresql_using="gin"),
        Index(
            "uq_nodes_name_live", "name", unique=True, postgresql_where=text("deleted_at IS NULL")
        ),
        # One machine, one operation: the unit of serialisation is the BMC endpoint,
        # so two live nodes can never point at one BMC.
        Index(
            "uq_nodes_bmc_endpoint",
            func.lower(text("bmc_address")),
            "bmc_port",
            func.coalesce(text("bmc_system"), text("''")),
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    def __repr__(self) -> str:
        return (
            f"<Node {self.name} {self.driver} {self.bmc_address}:{self.bmc_port} "
            f"power={self.power_state} desired={self.desired_power_state}>"
        )


class Batch(Base):
    """A named set of requests made by one call (scripted runs)."""

    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        primary_key=True,
        default=uuid.uuid4,
        server_default=func.gen_random_uuid(),
    )
    name: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[Action] = mapped_column(_pg_enum(Action, "power_action"))
    stagger_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    max_in_flight: Mapped[int | None] = mapped_column(Integer)
    selector: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    requested_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    # Requests of the batch not started by then are failed (held ones never run).
    deadline_at: Mapped[datetime | None] = mapped_column(TZ)
    cancelled_at: Mapped[datetime | None] = mapped_column(TZ)

    def __repr__(self) -> str:
        return f"<Batch {self.id} {self.action} by={self.requested_by}>"


class BatchMember(Base):
    """One node of a batch, at its place in the batch's order (``position``, from 0),
    and what creating the batch did for it: ``created`` its own request, reused
    the identical outstanding one (``existing``), or was ``refused`` because of
    the conflicting outstanding one (``request_id`` is that request, ``detail``
    says why)."""

    __tablename__ = "batch_members"

    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The request's node (no foreign key of its own: the request's cascades).
    node_id: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("power_requests.id", ondelete="CASCADE")
    )
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("uq_batch_members_node", "batch_id", "node_id", unique=True),
        Index("ix_batch_members_request", "request_id"),
        CheckConstraint("outcome IN ('created', 'existing', 'refused')", name="outcome"),
    )

    def __repr__(self) -> str:
        return f"<BatchMember {self.batch_id}#{self.position} node={self.node_id} {self.outcome}>"


class PowerRequest(Base):
    """One requested power action on one node, and how its execution went."""

    __tablename__ = "power_requests"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        primary_key=True,
        default=uuid.uuid4,
        server_default=func.gen_random_uuid(),
    )
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    action: Mapped[Action] = mapped_column(_pg_enum(Action, "power_action"))
    status: Mapped[RequestStatus] = mapped_column(
        _pg_enum(RequestStatus, "request_status"),
        default=RequestStatus.PENDING,
        server_default="pending",
    )
    # Fencing token: incremented by every claim; every later write is
    # conditioned on it, so a zombie worker's late write changes nothing.
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZ)
    # The lane and lane fence of the worker that last claimed it (NULL: claimed
    # outside a lane worker, or an unfenced one): a lane worker that starts
    # resumes only what an earlier consumer of its own lane held.
    lane: Mapped[int | None] = mapped_column(Integer)
    lane_fence: Mapped[int | None] = mapped_column(BigInteger)
    next_step: Mapped[Step] = mapped_column(
        _pg_enum(Step, "request_step"), default=Step.QUERY, server_default="query"
    )
    checks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    transient_errors: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    deadline_s: Mapped[float] = mapped_column(Float)
    deadline_at: Mapped[datetime | None] = mapped_column(TZ)
    soft_fallback: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Earliest time the request may be dispatched (batch stagger).
    not_before: Mapped[datetime | None] = mapped_column(TZ)
    # Held back by its batch (max_in_flight): neither dispatched nor claimable
    # until the batch pump releases it. Still outstanding for its node.
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    dispatched_at: Mapped[datetime | None] = mapped_column(TZ)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    command_sent: Mapped[Action | None] = mapped_column(_pg_enum(Action, "power_action"))
    command_sent_at: Mapped[datetime | None] = mapped_column(TZ)
    # Written when the BMC answered the command; NULL after a send means "maybe sent".
    command_acked_at: Mapped[datetime | None] = mapped_column(TZ)
    fallback_sent_at: Mapped[datetime | None] = mapped_column(TZ)
    # What showed the outcome (see powerq.states.Evidence): never more than was seen.
    evidence: Mapped[str | None] = mapped_column(String(32))
    # A pending request not claimed by then fails (its batch's deadline).
    start_by: Mapped[datetime | None] = mapped_column(TZ)
    # Boot device to set before the power action (or alone, action "boot").
    boot_device: Mapped[str | None] = mapped_column(String(16))
    boot_persistent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    boot_set_at: Mapped[datetime | None] = mapped_column(TZ)
    # A cycle is verified by seeing the machine go off and back on (see tasks.verify).
    transition_seen_at: Mapped[datetime | None] = mapped_column(TZ)
    started_at: Mapped[datetime | None] = mapped_column(TZ)
    finished_at: Mapped[datetime | None] = mapped_column(TZ)
    observed_before: Mapped[PowerState | None] = mapped_column(_pg_enum(PowerState, "power_state"))
    observed_after: Mapped[PowerState | None] = mapped_column(_pg_enum(PowerState, "power_state"))
    error: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(128))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="SET NULL")
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now(), onupdate=func.now())

    node: Mapped[Node] = relationship(back_populates="requests", lazy="joined", innerjoin=True)

    __table_args__ = (
        Index(
            "uq_power_requests_one_outstanding",
            "node_id",
            unique=True,
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
        Index("ix_power_requests_node_created", "node_id", "created_at"),
        # GET /v1/requests without a node: its ORDER BY created_at DESC, id DESC
        Index("ix_power_requests_created", text("created_at DESC"), text("id DESC")),
        Index("ix_power_requests_batch", "batch_id"),
        # The sweeper's scans touch only outstanding rows: keep them off the history.
        Index(
            "ix_power_requests_outstanding_dispatch",
            "status",
            "dispatched_at",
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
        Index(
            "ix_power_requests_outstanding_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
        Index(
            "ix_power_requests_start_by",
            "start_by",
            postgresql_where=text("status = 'pending' AND start_by IS NOT NULL"),
        ),
        Index(
            "uq_power_requests_idempotency",
            "requested_by",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    def __repr__(self) -> str:
        return (
            f"<PowerRequest {self.id} node={self.node_id} {self.action} "
            f"{self.status} attempt={self.attempt}>"
        )


class PowerEvent(Base):
    """The audit trail: every transition, who or what caused it, and when."""

    __tablename__ = "power_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    request_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("power_requests.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128))
    message: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())

    __table_args__ = (
        Index("ix_power_events_node_created", "node_id", "created_at"),
        Index("ix_power_events_request", "request_id"),
        # the claim's read of a node's learned transition times (tasks/leases.py)
        Index(
            "ix_power_events_learned",
            "node_id",
            "created_at",
            postgresql_where=text("kind = 'succeeded' AND detail ? 'took_s'"),
        ),
    )

    def __repr__(self) -> str:
        return f"<PowerEvent {self.id} node={self.node_id} {self.kind} by={self.actor}>"


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        # Names are actors: two live tokens may not share one (revoked ones may).
        Index(
            "uq_api_tokens_live_name",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(TZ)
    revoked_at: Mapped[datetime | None] = mapped_column(TZ)
    expires_at: Mapped[datetime | None] = mapped_column(TZ)

    def __repr__(self) -> str:
        return f"<ApiToken {self.id} {self.name} role={self.role}>"


class IdempotentResponse(Base):
    """The first response to a call made with an ``Idempotency-Key`` header."""

    __tablename__ = "idempotent_responses"

    actor: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(512))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    # SHA-256 of the method, path and canonical body: a different call under the
    # same key is refused instead of being answered with the first one's response.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class Agent(Base):
    """A host's ``powerq agent``, alive while ``expires_at`` is in the future.

    ``incarnation`` tells a restarted agent from the one before it; ``auto``
    agents share the lanes among themselves (rendezvous hashing).
    """

    __tablename__ = "agents"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    incarnation: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    auto: Mapped[bool] = mapped_column(Boolean)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LaneLease(Base):
    """Who consumes lane ``lane``: its agent, until ``expires_at``.

    ``fence`` goes up by one every time the lane changes hands; a lane
    worker's claims and command marks name it, so a consumer that lost the
    lane changes nothing and sends nothing.
    """

    __tablename__ = "lane_leases"
    __table_args__ = (CheckConstraint("lane >= 0", name="lane"),)

    lane: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(Text)
    incarnation: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    fence: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
