"""API bearer tokens: created once, shown once, stored only as a SHA-256 hash.

Roles nest: ``admin`` ⊇ ``operator`` ⊇ ``reader``. A reader may read, an
operator may also request power and run batches, an admin may also manage
nodes and tokens. The token's name is the *actor* recorded on requests and
events.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from powerq.db import utcnow
from powerq.errors import InvalidInput, NotFound
from powerq.models import ApiToken

READER = "reader"
OPERATOR = "operator"
ADMIN = "admin"
ROLES: tuple[str, ...] = (READER, OPERATOR, ADMIN)

TOKEN_PREFIX = "pq_"
MAX_TOKEN_LENGTH = 256
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}")
# last_used_at is a hint, not an audit record: write it at most this often.
_LAST_USED_GRANULARITY = timedelta(seconds=60)


@dataclass(frozen=True)
class Identity:
    """Who is calling: the token's id, its name (the actor) and its role."""

    token_id: int
    name: str
    role: str

    @property
    def roles(self) -> list[str]:
        """Every role this identity holds (its own and the ones it includes)."""
        return implied_roles(self.role)


def implied_roles(role: str) -> list[str]:
    """``role`` and every role below it (``admin`` → admin, operator, reader).

    :raises InvalidInput: ``role`` is not one of :data:`ROLES`.
    """
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return list(ROLES[: ROLES.index(role) + 1])


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token`` (what ``api_tokens.token_hash`` holds)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_token_name(name: str) -> str:
    """Return ``name`` if it is usable as an actor name.

    :raises InvalidInput: empty, longer than 128, or with unusual characters.
    """
    if not TOKEN_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid token name {name!r}: use 1-128 letters, digits, '.', '_', '@', ':' "
            "or '-', starting with a letter or digit"
        )
    return name


def create_token(session: Session, *, role: str, name: str | None = None) -> tuple[ApiToken, str]:
    """Create a token in the caller's transaction; return the row and the plaintext.

    The plaintext exists only in the return value: show it once, never store it.

    :raises InvalidInput: unknown role or invalid name.
    """
    implied_roles(role)
    name = validate_token_name(name or f"{role}-{secrets.token_hex(3)}")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role, token_hash=hash_token(plaintext))
    session.add(row)
    session.flush()
    return row, plaintext


def verify_token(session: Session, token: str) -> Identity | None:
    """The identity of a valid, unrevoked ``token``, or None.

    Notes the token's use (at most once a minute) in the caller's transaction.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    row = session.scalars(
        select(ApiToken).where(
            ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
        )
    ).one_or_none()
    if row is None:
        return None
    _touch(session, row.id)
    return Identity(token_id=row.id, name=row.name, role=row.role)


def _touch(session: Session, token_id: int) -> None:
    now = utcnow()
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            or_(
                ApiToken.last_used_at.is_(None),
                ApiToken.last_used_at < now - _LAST_USED_GRANULARITY,
            ),
        )
        .values(last_used_at=now)
    )


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token, oldest first (hashes included: callers must not expose them)."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, token_id: int) -> ApiToken:
    """Revoke a token (idempotent: revoking twice keeps the first time).

    :raises NotFound: no such token.
    """
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no token with id {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
