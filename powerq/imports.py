"""Importing a manifest of nodes in a fixed number of statements, whatever its length.

The rows apply in order, exactly as if :func:`powerq.inventory.import_node` had
registered them one by one in one transaction (it is the reference, and the
fallback): a row sees the nodes created, moved or changed by the rows before
it, so a second row naming a node of the first one skips or updates it, and a
row on a BMC endpoint taken earlier in the same manifest is ``invalid``.

Instead of a savepoint, a few lookups and writes per row, an import:

1. reads the live nodes it may touch, in two statements: the rows' names
   (locked when updating) and the holders of the rows' BMC endpoints;
2. plans every row in memory with the inventory's own checks and changes
   (validation, endpoint ownership, options, encrypted passwords, the changed
   fields of each ``updated`` event);
3. writes the plan in one savepoint: one ``UPDATE … FROM unnest(…)``, one
   ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING``, one
   events ``INSERT``.

A write that a concurrent registration overtook (the unique indexes refuse a
name or endpoint the plan thought free) rolls the savepoint back, and the
import runs again row by row, which reports such rows as the single-node path
does. Plaintext passwords never reach a statement: only their Fernet tokens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from powerq.errors import Conflict, InvalidInput
from powerq.inventory import (
    LIVE,
    ImportOutcome,
    NodeSpec,
    apply_changes,
    changed_text,
    changes_from,
    check_spec,
    checked_changes,
    endpoint_after,
    endpoint_taken,
    import_node,
    new_node,
    validate_tags,
)
from powerq.models import Node

log = logging.getLogger(__name__)

EndpointKey = tuple[str, int, str]
ManifestRow = tuple[int, NodeSpec]  # (row number, spec)


def endpoint_key(address: str, port: int, system: str | None) -> EndpointKey:
    """A BMC endpoint as the unique index ``uq_nodes_bmc_endpoint`` compares it."""
    return (address.lower(), port, system or "")


# --- planning (no database) ----------------------------------------------------------------


@dataclass
class Known:
    """The live nodes a manifest may touch: scratch copies by name (planning changes
    them), and who holds each endpoint the manifest names."""

    nodes: dict[str, Node] = field(default_factory=dict)
    holders: dict[EndpointKey, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedEvent:
    """An event the import writes for node ``name``."""

    name: str
    kind: str
    message: str
    detail: dict[str, Any]


@dataclass
class ImportPlan:
    """What an import does: each row's outcome, and the final state of every node it
    creates or changes (several rows may change one node)."""

    outcomes: list[ImportOutcome] = field(default_factory=list)
    created: dict[str, Node] = field(default_factory=dict)
    changed: dict[str, Node] = field(default_factory=dict)
    events: list[PlannedEvent] = field(default_factory=list)


def plan_import(rows: Sequence[ManifestRow], known: Known, *, update: bool) -> ImportPlan:
    """Plan ``rows`` in order against ``known`` (which is changed as rows apply)."""
    plan = ImportPlan()
    for number, spec in rows:
        plan.outcomes.append(_plan_row(plan, known, number, spec, update=update))
    return plan


def _plan_row(
    plan: ImportPlan, known: Known, number: int, spec: NodeSpec, *, update: bool
) -> ImportOutcome:
    """One row's outcome, as :func:`powerq.inventory.import_node` decides it."""
    try:
        validate_tags(spec.tags)
        node = known.nodes.get(spec.name)
        if node is None:
            _plan_create(plan, known, spec)
            return ImportOutcome(number, spec.name, "created", "node added")
        if not update:
            return ImportOutcome(number, spec.name, "skipped", "a node with this name exists")
        changed = _plan_update(plan, known, node, spec)
        return ImportOutcome(number, spec.name, "updated", changed_text(changed))
    except (InvalidInput, Conflict) as exc:
        return ImportOutcome(number, spec.name, "invalid", exc.detail)


def _require_endpoint(
    known: Known, name: str, address: str, port: int, system: str | None
) -> EndpointKey:
    """The endpoint's key, if no node but ``name`` holds it.

    :raises BmcEndpointTaken: another node holds it (named in the message).
    """
    key = endpoint_key(address, port, system)
    holder = known.holders.get(key)
    if holder is not None and holder != name:
        raise endpoint_taken(address, port, system, holder)
    return key


def _plan_create(plan: ImportPlan, known: Known, spec: NodeSpec) -> None:
    """:raises InvalidInput, DriverNotEnabled, BmcEndpointTaken: as ``create_node``."""
    check_spec(spec)
    key = _require_endpoint(known, spec.name, spec.address, spec.port, spec.options.system)
    node = new_node(spec)
    known.nodes[spec.name] = plan.created[spec.name] = node
    known.holders[key] = spec.name
    plan.events.append(PlannedEvent(spec.name, "registered", "node added", {}))


def _plan_update(plan: ImportPlan, known: Known, node: Node, spec: NodeSpec) -> list[str]:
    """Apply ``spec`` to ``node``; return what changed.

    :raises InvalidInput, DriverNotEnabled, BmcEndpointTaken: as ``update_node``.
    """
    changes = checked_changes(node, changes_from(spec))
    before = endpoint_key(node.bmc_address, node.bmc_port, node.bmc_system)
    after = _require_endpoint(known, node.name, *endpoint_after(node, changes))
    changed = apply_changes(node, changes)
    if known.holders.get(before) == node.name:
        del known.holders[before]
    known.holders[after] = node.name
    if node.name not in plan.created:
        plan.changed[node.name] = node
    if changed:
        message = "changed " + ", ".join(changed)
        plan.events.append(PlannedEvent(node.name, "updated", message, {"fields": changed}))
    return changed


# --- reading -------------------------------------------------------------------------------


def load_known(session: Session, specs: Sequence[NodeSpec], *, lock: bool) -> Known:
    """The live nodes named by ``specs`` (locked, in id order, with ``lock``) and the
    holders of their BMC endpoints: two statements.

    The nodes are detached from ``session``: planning changes them, and only the
    plan's own statements may write.
    """
    names = bindparam("names", sorted({spec.name for spec in specs}), type_=ARRAY(String))
    query = select(Node).where(LIVE, Node.name == any_(names)).order_by(Node.id)
    if lock:
        query = query.with_for_update()
    nodes = {node.name: node for node in session.scalars(query)}
    for node in nodes.values():
        session.expunge(node)
    known = Known(nodes=nodes)
    for node in nodes.values():
        known.holders[endpoint_key(node.bmc_address, node.bmc_port, node.bmc_system)] = node.name
    known.holders.update(_holders(session, specs))
    return known


# By address and port only: a row that gives no system path keeps its node's, so
# every system path on those BMCs may be the one a row ends up on.
_HOLDERS = text(
    "SELECT lower(bmc_address) AS address, bmc_port AS port,"
    " coalesce(bmc_system, '') AS system, name FROM nodes"
    " WHERE deleted_at IS NULL AND (lower(bmc_address), bmc_port) IN"
    " (SELECT lower(a), p FROM unnest(CAST(:addresses AS text[]), CAST(:ports AS int[]))"
    " AS e(a, p))"
)


def _holders(session: Session, specs: Sequence[NodeSpec]) -> dict[EndpointKey, str]:
    """Who holds each endpoint (any system path) on the BMCs ``specs`` name."""
    if not specs:
        return {}
    params = {"addresses": [spec.address for spec in specs], "ports": [spec.port for spec in specs]}
    return {
        (row.address, row.port, row.system): row.name for row in session.execute(_HOLDERS, params)
    }


# --- writing -------------------------------------------------------------------------------

# The node columns an import writes: (column, array type it is sent as, how a row stores it).
_WRITTEN: tuple[tuple[str, str, str], ...] = (
    ("driver", "text[]", "CAST(r.driver AS driver_kind)"),
    ("bmc_address", "text[]", "r.bmc_address"),
    ("bmc_port", "int[]", "r.bmc_port"),
    ("bmc_username", "text[]", "r.bmc_username"),
    ("bmc_password_encrypted", "bytea[]", "r.bmc_password_encrypted"),
    ("tags", "jsonb[]", "ARRAY(SELECT jsonb_array_elements_text(r.tags))"),
    ("bmc_system", "text[]", "r.bmc_system"),
    ("verify_tls", "bool[]", "r.verify_tls"),
    ("ca_bundle", "text[]", "r.ca_bundle"),
    ("ipmi_cipher_suite", "text[]", "r.ipmi_cipher_suite"),
    ("ipmi_privilege", "text[]", "r.ipmi_privilege"),
    ("ipmi_kg_encrypted", "bytea[]", "r.ipmi_kg_encrypted"),
)


def _unnest(key: str, key_type: str) -> str:
    """``unnest(…) WITH ORDINALITY AS r(…)`` over ``key`` and the written columns."""
    columns = [(key, key_type), *((column, kind) for column, kind, _ in _WRITTEN)]
    arrays = ", ".join(f"CAST(:{column} AS {kind})" for column, kind in columns)
    return f"unnest({arrays}) WITH ORDINALITY AS r({', '.join(c for c, _ in columns)}, ord)"


_INSERT_NODES = text(
    f"INSERT INTO nodes (name, {', '.join(column for column, _, _ in _WRITTEN)})"
    f" SELECT r.name, {', '.join(value for _, _, value in _WRITTEN)}"
    f" FROM {_unnest('name', 'text[]')} ORDER BY r.ord"
    " ON CONFLICT DO NOTHING RETURNING id, name"
)
_UPDATE_NODES = text(
    f"UPDATE nodes AS n SET {', '.join(f'{column} = {value}' for column, _, value in _WRITTEN)},"
    f" updated_at = now() FROM {_unnest('id', 'int[]')} WHERE n.id = r.id"
)
_INSERT_EVENTS = text(
    "INSERT INTO power_events (node_id, kind, actor, message, detail)"
    " SELECT r.node_id, r.kind, :actor, r.message, r.detail FROM unnest("
    "CAST(:node_ids AS int[]), CAST(:kinds AS text[]), CAST(:messages AS text[]),"
    " CAST(:details AS jsonb[])) WITH ORDINALITY AS r(node_id, kind, message, detail, ord)"
    " ORDER BY r.ord"
)


class Overtaken(Exception):
    """A concurrent registration took a name or endpoint the plan counted on."""


def _stored(node: Node, column: str) -> Any:
    value = getattr(node, column)
    if column == "driver":
        return value.value
    return json.dumps(value) if column == "tags" else value


def _columns(nodes: Sequence[Node], key: str) -> dict[str, list[Any]]:
    """The nodes' ``key`` and written columns, one list per column (unnest's arrays)."""
    columns = [key, *(column for column, _, _ in _WRITTEN)]
    return {column: [_stored(node, column) for node in nodes] for column in columns}


def _update_nodes(session: Session, nodes: Sequence[Node]) -> None:
    """:raises IntegrityError: a concurrent registration took an endpoint first."""
    if nodes:
        session.execute(_UPDATE_NODES, _columns(nodes, "id"))


def _insert_nodes(session: Session, nodes: Sequence[Node]) -> dict[str, int]:
    """Insert ``nodes``; their ids by name.

    :raises Overtaken: a concurrent registration took a name or endpoint first.
    """
    if not nodes:
        return {}
    rows = session.execute(_INSERT_NODES, _columns(nodes, "name")).all()
    if len(rows) != len(nodes):
        raise Overtaken(f"{len(nodes) - len(rows)} of {len(nodes)} new nodes were taken")
    return {row.name: row.id for row in rows}


def _insert_events(
    session: Session, events: Sequence[PlannedEvent], ids: dict[str, int], actor: str
) -> None:
    if events:
        params = {
            "actor": actor,
            "node_ids": [ids[event.name] for event in events],
            "kinds": [event.kind for event in events],
            "messages": [event.message for event in events],
            "details": [json.dumps(event.detail) for event in events],
        }
        session.execute(_INSERT_EVENTS, params)


def write_plan(session: Session, plan: ImportPlan, *, actor: str) -> None:
    """Write ``plan`` in the caller's transaction: at most three statements (moves
    first, so a new node may take an endpoint an existing one leaves).

    :raises Overtaken, IntegrityError: a concurrent registration overtook the plan
        (some statements may have run: write in a savepoint).
    """
    changed = list(plan.changed.values())
    _update_nodes(session, changed)
    ids = {node.name: node.id for node in changed}
    ids.update(_insert_nodes(session, list(plan.created.values())))
    _insert_events(session, plan.events, ids, actor)


# --- the import ----------------------------------------------------------------------------


def import_nodes(
    session: Session, rows: Iterable[ManifestRow], *, update: bool, actor: str
) -> list[ImportOutcome]:
    """Import manifest ``rows`` (number, spec) in the caller's transaction; each row's
    outcome, in order: ``created``, ``skipped`` (a live node has the name),
    ``updated`` (with ``update``: driver, BMC, credentials, tags and options
    replaced) or ``invalid`` (with the reason; the row changes nothing).

    Seven statements for any number of rows (two reads, a savepoint, three
    writes, its release); row by row only if a concurrent registration
    overtook the plan.

    The session must not hold these nodes already (a fresh one, as the API's):
    they are read into it and detached for planning.

    :raises ConfigError: the secret key is malformed.
    """
    rows = list(rows)
    known = load_known(session, [spec for _, spec in rows], lock=update)
    plan = plan_import(rows, known, update=update)
    try:
        with session.begin_nested():
            write_plan(session, plan, actor=actor)
    except (Overtaken, IntegrityError) as exc:
        log.info("import overtaken (%s); importing row by row", type(exc).__name__)
        return [import_node(session, n, spec, update=update, actor=actor) for n, spec in rows]
    return plan.outcomes
