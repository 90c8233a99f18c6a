"""Nodes: registering machines and turning a node row into a BMC target.

The BMC password enters here as plaintext once, is encrypted before it touches
the session, and is decrypted only by :func:`bmc_target`, inside the executor.

Rules every registration, change and import follows:

* **One machine, one node.** Two live nodes never share a BMC endpoint (address,
  compared case-insensitively, port, and the Redfish system path: one Redfish
  BMC may serve several systems): they could receive two commands at once.
  The partial unique index ``uq_nodes_bmc_endpoint`` decides; a friendly
  check before the write names the node that holds the endpoint, and the
  index's own refusal (a concurrent registration) is answered the same way.
* **Enabled drivers only.** A node's driver must be one of ``POWERQ_DRIVERS``.
* **Options of its own protocol only** (:mod:`powerq.node_options`): a Redfish
  node takes a system path and TLS options, an IPMI node a cipher suite,
  privilege and Kg; anything else is refused.
* **Deleting keeps the audit trail.** A deleted node is only marked
  (``deleted_at``): its requests and events stay, and its name and endpoint
  are free for a new node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from powerq import node_options
from powerq.audit import record_event
from powerq.bmc.base import BmcTarget
from powerq.config import get_settings
from powerq.db import utcnow
from powerq.errors import BmcEndpointTaken, Conflict, DriverNotEnabled, InvalidInput
from powerq.intents import find_node
from powerq.models import Node, PowerRequest
from powerq.node_options import NodeOptions
from powerq.secrets import decrypt_password, encrypt_password
from powerq.states import OUTSTANDING_STATUSES, DesiredPowerState, DriverKind, PowerState

log = logging.getLogger(__name__)

# DNS-label-like: what a datacenter names machines, and safe in URLs and logs.
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Names the API uses as path segments next to node names (/v1/nodes/import).
RESERVED_NAMES: frozenset[str] = frozenset({"import"})
# The partial unique indexes on live nodes (migration 0002).
NAME_INDEX = "uq_nodes_name_live"
ENDPOINT_INDEX = "uq_nodes_bmc_endpoint"
LIVE = Node.deleted_at.is_(None)


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
    options: NodeOptions = field(default_factory=NodeOptions)


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


def enabled_drivers() -> tuple[DriverKind, ...]:
    """The drivers nodes may be registered with (``POWERQ_DRIVERS``)."""
    return get_settings().drivers


def require_driver(driver: DriverKind) -> None:
    """Accept ``driver`` only if it is enabled.

    :raises DriverNotEnabled: it is not in ``POWERQ_DRIVERS`` (the message says
        how to enable it).
    """
    enabled = enabled_drivers()
    if driver in enabled:
        return
    listed = ", ".join(kind.value for kind in enabled)
    values = [kind.value for kind in enabled]
    fake = " ('sim' is an in-process fake, meant for tests)" if driver is DriverKind.SIM else ""
    raise DriverNotEnabled(
        f"driver {driver.value!r} is not enabled (enabled: {listed}); to enable it, add it "
        f"to the POWERQ_DRIVERS setting (comma-separated, e.g. "
        f"POWERQ_DRIVERS={','.join([*values, driver.value])}) and restart powerq{fake}",
        enabled_drivers=values,
    )


def endpoint_holder(
    session: Session,
    address: str,
    port: int,
    system: str | None = None,
    *,
    other_than: int | None = None,
) -> Node | None:
    """The live node registered on BMC ``address:port`` (address in any case) and
    Redfish system path (None: none), if any."""
    query = select(Node).where(
        LIVE,
        func.lower(Node.bmc_address) == func.lower(address),
        Node.bmc_port == port,
        func.coalesce(Node.bmc_system, "") == (system or ""),
    )
    if other_than is not None:
        query = query.where(Node.id != other_than)
    return session.scalars(query).first()


def endpoint_taken(
    address: str, port: int, system: str | None, holder: str | None
) -> BmcEndpointTaken:
    """The error refusing BMC ``address:port`` (and system path) held by node ``holder``."""
    endpoint = f"BMC {address}:{port}" + (f" system {system}" if system else "")
    if holder is None:  # the holder went away again after refusing us
        return BmcEndpointTaken(f"{endpoint} is already registered as another node")
    return BmcEndpointTaken(
        f"{endpoint} is already registered as node {holder!r}", existing_node=holder
    )


def _require_free_endpoint(
    session: Session,
    address: str,
    port: int,
    system: str | None = None,
    *,
    other_than: int | None = None,
) -> None:
    """:raises BmcEndpointTaken: another live node is registered on ``address:port``
    (and the same system path)."""
    holder = endpoint_holder(session, address, port, system, other_than=other_than)
    if holder is not None:
        raise endpoint_taken(address, port, system, holder.name)


def _constraint_name(error: IntegrityError) -> str | None:
    diag = getattr(error.orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    return name if isinstance(name, str) else None


@contextlib.contextmanager
def _node_write(
    session: Session,
    name: str,
    address: str,
    port: int,
    system: str | None = None,
    *,
    node_id: int | None = None,
) -> Iterator[None]:
    """Run the body (which adds or changes node ``name``, to be on ``address:port``)
    in a savepoint of the caller's transaction, and flush it there.

    The checks before the write see only committed rows; a concurrent
    registration that commits first makes the unique index refuse this one,
    and that refusal is reported exactly like the checks report it. On any
    error the savepoint is rolled back, so the body's changes are undone.

    :raises Conflict: another live node has the name.
    :raises BmcEndpointTaken: another live node has the BMC endpoint.
    :raises IntegrityError: any other constraint.
    """
    try:
        with session.begin_nested():
            yield
            session.flush()
    except IntegrityError as exc:
        constraint = _constraint_name(exc)
        if constraint == NAME_INDEX:
            raise Conflict(f"a node named {name!r} already exists") from None
        if constraint == ENDPOINT_INDEX:
            with session.no_autoflush:
                holder = endpoint_holder(session, address, port, system, other_than=node_id)
            raise endpoint_taken(address, port, system, holder.name if holder else None) from None
        raise


def _name_taken(session: Session, name: str) -> bool:
    return session.scalar(select(Node.id).where(LIVE, Node.name == name)) is not None


def check_spec(spec: NodeSpec) -> None:
    """Accept ``spec`` as a new node, as far as can be told without the database.

    :raises InvalidInput: an invalid name or port, or an option that does not
        apply to the driver.
    :raises DriverNotEnabled: the driver is not enabled.
    """
    validate_name(spec.name)
    if not 1 <= spec.port <= 65535:
        raise InvalidInput(f"port must be 1-65535, got {spec.port}")
    require_driver(spec.driver)
    node_options.check(spec.options, spec.driver)


def new_node(spec: NodeSpec) -> Node:
    """A transient node as ``spec`` (already checked) registers it, password encrypted.

    :raises ConfigError: the secret key is malformed.
    """
    node = Node(
        name=spec.name,
        driver=spec.driver,
        bmc_address=spec.address,
        bmc_port=spec.port,
        bmc_username=spec.username,
        bmc_password_encrypted=encrypt_password(spec.password),
        tags=sorted(set(spec.tags)),
        verify_tls=True,
        ipmi_cipher_suite="auto",
        ipmi_privilege="administrator",
    )
    node_options.apply(node, spec.options)
    return node


def create_node(session: Session, spec: NodeSpec, *, actor: str) -> Node:
    """Register a node in the caller's transaction.

    :raises InvalidInput: a field is out of range, or an option does not apply
        to the driver.
    :raises DriverNotEnabled: the driver is not enabled.
    :raises Conflict: a live node with that name exists.
    :raises BmcEndpointTaken: a live node is registered on the same BMC endpoint.
    """
    check_spec(spec)
    if _name_taken(session, spec.name):
        raise Conflict(f"a node named {spec.name!r} already exists")
    system = spec.options.system
    _require_free_endpoint(session, spec.address, spec.port, system)
    node = new_node(spec)
    with _node_write(session, spec.name, spec.address, spec.port, system):
        session.add(node)
    record_event(session, node_id=node.id, kind="registered", actor=actor, message="node added")
    return node


def set_password(node: Node, password: str) -> None:
    """Replace a node's stored BMC password (encrypted)."""
    node.bmc_password_encrypted = encrypt_password(password)


class BmcColumns(Protocol):
    """What :func:`bmc_target` reads: a :class:`Node`, or a result row that
    selected those columns under their own names (the executor's claim)."""

    @property
    def driver(self) -> DriverKind | str: ...
    @property
    def bmc_address(self) -> str: ...
    @property
    def bmc_port(self) -> int: ...
    @property
    def bmc_username(self) -> str: ...
    @property
    def bmc_password_encrypted(self) -> bytes: ...
    @property
    def bmc_system(self) -> str | None: ...
    @property
    def verify_tls(self) -> bool: ...
    @property
    def ca_bundle(self) -> str | None: ...
    @property
    def ipmi_cipher_suite(self) -> str: ...
    @property
    def ipmi_privilege(self) -> str: ...
    @property
    def ipmi_kg_encrypted(self) -> bytes | None: ...


def bmc_target(node: BmcColumns) -> BmcTarget:
    """How to reach ``node``'s BMC, with the password decrypted (executor only).

    :raises ConfigError: the password cannot be decrypted with the current key.
    """
    kg = node.ipmi_kg_encrypted
    return BmcTarget(
        driver=DriverKind(node.driver).value,
        address=node.bmc_address,
        port=node.bmc_port,
        username=node.bmc_username,
        password=decrypt_password(node.bmc_password_encrypted),
        system=node.bmc_system,
        verify_tls=node.verify_tls,
        ca_bundle=node.ca_bundle,
        cipher_suite=node.ipmi_cipher_suite,
        privilege=node.ipmi_privilege,
        kg=decrypt_password(kg) if kg is not None else None,
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
    query = query.where(LIVE)
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
    """One page of live nodes matching ``filters`` (by name) and how many match in all."""
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
    maintenance_reason: str | None = None
    clear_desired: bool = False
    options: NodeOptions = field(default_factory=NodeOptions)


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


def endpoint_after(node: Node, changes: NodeChanges) -> tuple[str, int, str | None]:
    """The BMC address, port and system ``node`` will have once ``changes`` are applied
    (a node leaving Redfish loses its system path)."""
    address = changes.address if changes.address is not None else node.bmc_address
    port = changes.port if changes.port is not None else node.bmc_port
    system = node_options.system_of(changes.options, node.bmc_system)
    if (changes.driver or node.driver) is not DriverKind.REDFISH:
        system = None
    return address, port, system


def checked_changes(node: Node, changes: NodeChanges) -> NodeChanges:
    """``changes`` with tags normalised, if (the database aside) they may be applied
    to ``node``.

    :raises InvalidInput: a port or tag is out of range, or an option does not
        apply to the node's (new) driver.
    :raises DriverNotEnabled: the new driver is not enabled.
    """
    if changes.port is not None and not 1 <= changes.port <= 65535:
        raise InvalidInput(f"port must be 1-65535, got {changes.port}")
    in_maintenance = node.maintenance if changes.maintenance is None else changes.maintenance
    if changes.maintenance_reason is not None and not in_maintenance:
        raise InvalidInput(
            "maintenance_reason is only for a node in maintenance (maintenance: true)"
        )
    if changes.tags is not None:
        changes = dataclasses.replace(changes, tags=tuple(validate_tags(changes.tags)))
    if changes.driver is not None:
        require_driver(changes.driver)
    node_options.check(changes.options, changes.driver or node.driver)
    return changes


def _check_changes(session: Session, node: Node, changes: NodeChanges) -> NodeChanges:
    """``changes`` with tags normalised, if they may be applied to ``node``.

    :raises InvalidInput: a port or tag is out of range, or an option does not
        apply to the node's (new) driver.
    :raises DriverNotEnabled: the new driver is not enabled.
    :raises BmcEndpointTaken: the new address/port/system is another live node's BMC.
    """
    changes = checked_changes(node, changes)
    address, port, system = endpoint_after(node, changes)
    if (address, port, system) != (node.bmc_address, node.bmc_port, node.bmc_system):
        _require_free_endpoint(session, address, port, system, other_than=node.id)
    return changes


def update_node(session: Session, node: Node, changes: NodeChanges, *, actor: str) -> list[str]:
    """Apply ``changes`` to ``node`` in the caller's transaction; return what changed.

    Writes one ``updated`` event naming the changed fields (never a password).
    On any error nothing is changed.

    A changed driver puts the other protocol's options back to their defaults.

    :raises InvalidInput: a port, tag or other field is out of range, or an
        option does not apply to the node's (new) driver.
    :raises DriverNotEnabled: the new driver is not enabled.
    :raises BmcEndpointTaken: the new address/port/system is another live node's BMC
        (also when a concurrent change took it first).
    """
    changes = _check_changes(session, node, changes)
    address, port, system = endpoint_after(node, changes)
    with _node_write(session, node.name, address, port, system, node_id=node.id):
        changed = apply_changes(node, changes)
        changed += note_maintenance(node, changes.maintenance_reason, changed, actor=actor)
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


def note_maintenance(
    node: Node, reason: str | None, changed: list[str], *, actor: str
) -> list[str]:
    """Record who put ``node`` in maintenance, since when (PostgreSQL's clock) and
    why, when ``changed`` says maintenance was just set; clear the note when it
    was just lifted; change only the reason (and who gave it) for a node that
    stays in maintenance. Returns ``["maintenance_reason"]`` when only the
    reason changed, else nothing more."""
    if "maintenance" in changed:
        on = node.maintenance
        node.maintenance_reason = reason if on else None
        node.maintenance_by = actor if on else None
        node.maintenance_since = func.now() if on else None
        return []
    if reason is not None and node.maintenance and reason != node.maintenance_reason:
        node.maintenance_reason, node.maintenance_by = reason, actor
        return ["maintenance_reason"]
    return []


def apply_changes(node: Node, changes: NodeChanges) -> list[str]:
    """Apply checked ``changes`` to ``node`` (in memory); return what changed, in the
    order an ``updated`` event names it."""
    changed = _apply_fields(node, changes)
    changed += node_options.reset_foreign(node, node.driver)
    changed += node_options.apply(node, changes.options)
    if changes.password is not None:
        set_password(node, changes.password)
        changed.append("password")
    if changes.clear_desired and node.desired_power_state is not None:
        node.desired_power_state = None
        node.desired_power_state_at = utcnow()
        changed.append("desired_power_state")
    return changed


def delete_node(session: Session, name: str, *, actor: str) -> Node:
    """Delete a node, unless it has a request outstanding; return it.

    A soft delete: the node gets ``deleted_at`` and a ``deleted`` event, and
    keeps its requests and events (the audit trail, readable by request id).
    It no longer shows anywhere by name, and its name and BMC endpoint may be
    registered again. The node row is locked first, so a power request racing
    the delete either commits before it (and the delete is refused) or finds
    no node after it (see :func:`powerq.intents.request_power`).

    :raises NotFound: no such (live) node.
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
    node.deleted_at = utcnow()
    record_event(
        session,
        node_id=node.id,
        kind="deleted",
        actor=actor,
        message="node deleted; its requests and events are kept",
        detail={"address": node.bmc_address, "port": node.bmc_port},
    )
    session.flush()
    log.info("node %s deleted by %s", name, actor)
    return node


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

    An existing (live) node is left alone (``skipped``) or, with ``update``,
    gets the row's driver, address, port, credentials and tags. A row that
    cannot be applied (a driver that is not enabled, a BMC endpoint another
    node holds, ...) is reported ``invalid`` with the reason and changes nothing.
    """
    try:
        with session.begin_nested():
            validate_tags(spec.tags)
            existing = session.scalars(
                select(Node).where(LIVE, Node.name == spec.name)
            ).one_or_none()
            if existing is None:
                create_node(session, spec, actor=actor)
                return ImportOutcome(row, spec.name, "created", "node added")
            if not update:
                return ImportOutcome(row, spec.name, "skipped", "a node with this name exists")
            changed = update_node(session, existing, changes_from(spec), actor=actor)
            return ImportOutcome(row, spec.name, "updated", changed_text(changed))
    except (InvalidInput, Conflict) as exc:
        return ImportOutcome(row, spec.name, "invalid", exc.detail)


def changes_from(spec: NodeSpec) -> NodeChanges:
    """What importing ``spec`` over an existing node changes (everything it gives)."""
    return NodeChanges(
        driver=spec.driver,
        address=spec.address,
        port=spec.port,
        username=spec.username,
        password=spec.password,
        tags=spec.tags,
        options=spec.options,
    )


def changed_text(changed: list[str]) -> str:
    """An ``updated`` row's detail: the fields that changed, or that none did."""
    return "changed " + ", ".join(changed) if changed else "nothing changed"
