"""Nodes: registering machines and turning a node row into a BMC target.

The BMC password enters here as plaintext once, is encrypted before it touches
the session, and is decrypted only by :func:`bmc_target`, inside the executor.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from powerq.audit import record_event
from powerq.bmc.base import BmcTarget
from powerq.db import utcnow
from powerq.errors import Conflict, InvalidInput
from powerq.intents import find_node
from powerq.models import Node, PowerRequest
from powerq.secrets import decrypt_password, encrypt_password
from powerq.states import OUTSTANDING_STATUSES, DesiredPowerState, DriverKind, PowerState

log = logging.getLogger(__name__)

# DNS-label-like: what a datacenter names machines, and safe in URLs and logs.
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Names the API uses as path segments next to node names (/v1/nodes/import).
RESERVED_NAMES: frozenset[str] = frozenset({"import"})


@dataclass(frozen=True)
class NodeSpec:
    """What it takes to register a node. ``password`` never shows in a repr."""

    name: str
    driver: DriverKind
    address: str
    port: int
    username: str
    password: str = field(repr=False)
    tags: tuple[str, ...] = ()


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid node name.

    :raises InvalidInput: empty, too long, with characters other than
        letters, digits, ``.``, ``_`` and ``-`` (not starting with a symbol),
        or one of :data:`RESERVED_NAMES`.
    """
    if not NODE_NAME.fullmatch(name):  # fullmatch: "$" would allow a trailing newline
        raise InvalidInput(
            f"invalid node name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise InvalidInput(f"{name!r} is reserved and cannot name a node")
    return name


def create_node(session: Session, spec: NodeSpec, *, actor: str) -> Node:
    """Register a node in the caller's transaction.

    :raises InvalidInput: a field is out of range.
    :raises Conflict: a node with that name exists.
    """
    validate_name(spec.name)
    if not 1 <= spec.port <= 65535:
        raise InvalidInput(f"port must be 1-65535, got {spec.port}")
    node = Node(
        name=spec.name,
        driver=spec.driver,
        bmc_address=spec.address,
        bmc_port=spec.port,
        bmc_username=spec.username,
        bmc_password_encrypted=encrypt_password(spec.password),
        tags=sorted(set(spec.tags)),
    )
    try:
        with session.begin_nested():
            session.add(node)
            session.flush()
    except IntegrityError:
        raise Conflict(f"a node named {spec.name!r} already exists") from None
    record_event(session, node_id=node.id, kind="registered", actor=actor, message="node added")
    return node


def set_password(node: Node, password: str) -> None:
    """Replace a node's stored BMC password (encrypted)."""
    node.bmc_password_encrypted = encrypt_password(password)


def bmc_target(node: Node) -> BmcTarget:
    """How to reach ``node``'s BMC, with the password decrypted (executor only).

    :raises ConfigError: the password cannot be decrypted with the current key.
    """
    return BmcTarget(
        driver=node.driver.value,
        address=node.bmc_address,
        port=node.bmc_port,
        username=node.bmc_username,
        password=decrypt_password(node.bmc_password_encrypted),
    )


# --- Node listing, update, deletion and import (used by the API and the CLI) ---

TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/=+-]{0,63}")


def validate_tags(tags: Sequence[str]) -> list[str]:
    """The tags, de-duplicated and sorted.

    :raises InvalidInput: a tag is empty, longer than 64 or has unusual characters.
    """
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise InvalidInput(
                f"invalid tag {tag!r}: use 1-64 letters, digits or . _ : / = + -, "
                "starting with a letter or digit"
            )
    return sorted(set(tags))


@dataclass(frozen=True)
class NodeFilter:
    """What :func:`list_nodes` selects; None means "any"."""

    power_state: PowerState | None = None
    # "none" selects nodes without a desired state.
    desired_power_state: DesiredPowerState | Literal["none"] | None = None
    maintenance: bool | None = None
    power_fault: bool | None = None
    tags: tuple[str, ...] = ()
    name_prefix: str | None = None


def _filtered(query: Select[Any], filters: NodeFilter) -> Select[Any]:
    if filters.power_state is not None:
        query = query.where(Node.power_state == filters.power_state)
    if filters.desired_power_state == "none":
        query = query.where(Node.desired_power_state.is_(None))
    elif filters.desired_power_state is not None:
        query = query.where(Node.desired_power_state == filters.desired_power_state)
    if filters.maintenance is not None:
        query = query.where(Node.maintenance.is_(filters.maintenance))
    if filters.power_fault is not None:
        query = query.where(Node.power_fault.is_(filters.power_fault))
    if filters.tags:
        query = query.where(Node.tags.contains(list(filters.tags)))
    if filters.name_prefix:
        query = query.where(Node.name.startswith(filters.name_prefix, autoescape=True))
    return query


def list_nodes(
    session: Session, filters: NodeFilter, *, limit: int, offset: int = 0
) -> tuple[list[Node], int]:
    """One page of nodes matching ``filters`` (by name) and how many match in all."""
    total = session.scalar(_filtered(select(func.count()).select_from(Node), filters)) or 0
    page = session.scalars(
        _filtered(select(Node), filters).order_by(Node.name).limit(limit).offset(offset)
    )
    return list(page), total


def outstanding_by_node(session: Session, node_ids: Sequence[int]) -> dict[int, PowerRequest]:
    """The outstanding (pending or running) request of each node that has one."""
    if not node_ids:
        return {}
    rows = session.scalars(
        select(PowerRequest).where(
            PowerRequest.node_id.in_(node_ids),
            PowerRequest.status.in_(OUTSTANDING_STATUSES),
        )
    )
    return {request.node_id: request for request in rows}


@dataclass(frozen=True)
class NodeChanges:
    """A partial update of a node; None leaves a field as it is.

    ``password`` never shows in a repr. ``clear_desired`` withdraws the node's
    desired power state (it can only be *set* by a power request).
    """

    driver: DriverKind | None = None
    address: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tags: tuple[str, ...] | None = None
    maintenance: bool | None = None
    clear_desired: bool = False


def _apply_fields(node: Node, changes: NodeChanges) -> list[str]:
    changed: list[str] = []
    for attr, value in (
        ("driver", changes.driver),
        ("bmc_address", changes.address),
        ("bmc_port", changes.port),
        ("bmc_username", changes.username),
        ("maintenance", changes.maintenance),
    ):
        if value is not None and getattr(node, attr) != value:
            setattr(node, attr, value)
            changed.append(attr.removeprefix("bmc_"))
    if changes.tags is not None and list(changes.tags) != node.tags:
        node.tags = list(changes.tags)
        changed.append("tags")
    return changed


def update_node(session: Session, node: Node, changes: NodeChanges, *, actor: str) -> list[str]:
    """Apply ``changes`` to ``node`` in the caller's transaction; return what changed.

    Writes one ``updated`` event naming the changed fields (never a password).

    :raises InvalidInput: a port, tag or other field is out of range.
    """
    if changes.port is not None and not 1 <= changes.port <= 65535:
        raise InvalidInput(f"port must be 1-65535, got {changes.port}")
    if changes.tags is not None:
        changes = dataclasses.replace(changes, tags=tuple(validate_tags(changes.tags)))
    changed = _apply_fields(node, changes)
    if changes.password is not None:
        set_password(node, changes.password)
        changed.append("password")
    if changes.clear_desired and node.desired_power_state is not None:
        node.desired_power_state = None
        node.desired_power_state_at = utcnow()
        changed.append("desired_power_state")
    if changed:
        record_event(
            session,
            node_id=node.id,
            kind="updated",
            actor=actor,
            message="changed " + ", ".join(changed),
            detail={"fields": changed},
        )
    return changed


def delete_node(session: Session, name: str, *, actor: str) -> None:
    """Delete a node and its history, unless it has a request outstanding.

    The node row is locked first, so a power request racing the delete either
    commits before it (and the delete is refused) or fails after it.

    :raises NotFound: no such node.
    :raises Conflict: a request is outstanding (``extra["outstanding"]``).
    """
    node = find_node(session, name, lock=True)
    outstanding = outstanding_by_node(session, [node.id]).get(node.id)
    if outstanding is not None:
        raise Conflict(
            f"node {name!r} has an outstanding {outstanding.action.value!r} request "
            f"({outstanding.status.value}); delete it once that request has finished",
            outstanding=outstanding,
        )
    session.delete(node)
    session.flush()
    # The node's events go with it (ON DELETE CASCADE): the log keeps the trace.
    log.info("node %s deleted by %s", name, actor)


ImportOutcomeKind = Literal["created", "updated", "skipped", "invalid"]


@dataclass(frozen=True)
class ImportOutcome:
    """What importing one manifest row did."""

    row: int
    name: str | None
    outcome: ImportOutcomeKind
    detail: str


def import_node(
    session: Session, row: int, spec: NodeSpec, *, update: bool, actor: str
) -> ImportOutcome:
    """Register one manifest row in a savepoint of the caller's transaction.

    An existing node is left alone (``skipped``) or, with ``update``, gets the
    row's driver, address, port, credentials and tags. A row that cannot be
    applied is reported ``invalid`` and changes nothing.
    """
    try:
        with session.begin_nested():
            validate_tags(spec.tags)
            existing = session.scalars(select(Node).where(Node.name == spec.name)).one_or_none()
            if existing is None:
                create_node(session, spec, actor=actor)
                return ImportOutcome(row, spec.name, "created", "node added")
            if not update:
                return ImportOutcome(row, spec.name, "skipped", "a node with this name exists")
            changed = update_node(session, existing, _changes_from(spec), actor=actor)
            return ImportOutcome(row, spec.name, "updated", _changed_text(changed))
    except (InvalidInput, Conflict) as exc:
        return ImportOutcome(row, spec.name, "invalid", exc.detail)


def _changes_from(spec: NodeSpec) -> NodeChanges:
    return NodeChanges(
        driver=spec.driver,
        address=spec.address,
        port=spec.port,
        username=spec.username,
        password=spec.password,
        tags=spec.tags,
    )


def _changed_text(changed: list[str]) -> str:
    return "changed " + ", ".join(changed) if changed else "nothing changed"
