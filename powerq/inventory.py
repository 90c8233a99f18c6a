"""Nodes: registering machines and turning a node row into a BMC target.

The BMC password enters here as plaintext once, is encrypted before it touches
the session, and is decrypted only by :func:`bmc_target`, inside the executor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from powerq.audit import record_event
from powerq.bmc.base import BmcTarget
from powerq.errors import Conflict, InvalidInput
from powerq.models import Node
from powerq.secrets import decrypt_password, encrypt_password
from powerq.states import DriverKind

# DNS-label-like: what a datacenter names machines, and safe in URLs and logs.
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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

    :raises InvalidInput: empty, too long, or with characters other than
        letters, digits, ``.``, ``_`` and ``-`` (not starting with a symbol).
    """
    if not NODE_NAME.match(name):
        raise InvalidInput(
            f"invalid node name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
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
