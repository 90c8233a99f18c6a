"""API bearer tokens: created once, shown once, stored only as a SHA-256 hash.

Roles nest: ``admin`` ⊇ ``operator`` ⊇ ``reader``. A reader may read, an
operator may also request power and run batches, an admin may also manage
nodes and tokens. The token's name is the *actor* recorded on requests and
events.

A verified token is remembered in-process for :data:`TOKEN_CACHE_TTL_S`
seconds (:func:`authenticate`), or until its expiry if that comes sooner,
keyed by its SHA-256, never by the token itself; refusals are never
remembered. So a revoked token stops working within that TTL in every API
process (at once in the process that revoked it), an expired one at its
expiry (as PostgreSQL's clock tells it), and a burst of calls with one
token costs one database statement per TTL instead of one per call.
``last_used_at`` is written at most once a minute, by the same statement
that verifies the token.

Names are actors, so two live (not revoked) tokens never share one: the
partial unique index ``uq_api_tokens_live_name`` refuses the second. An
expired token keeps its name until it is revoked.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import extract, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from powerq.db import session_scope, utcnow
from powerq.errors import InvalidInput, NotFound, TokenNameTaken
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
# How long a verified token is believed without asking the database again: the
# longest a revoked token keeps working in another API process.
TOKEN_CACHE_TTL_S = 5.0
_TOKEN_CACHE_MAX = 1024
# Bounds of ``expires_in`` (seconds): from one second to about five years.
MIN_EXPIRES_IN_S = 1
MAX_EXPIRES_IN_S = 5 * 366 * 86400
NAME_INDEX = "uq_api_tokens_live_name"


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


def create_token(
    session: Session, *, role: str, name: str | None = None, expires_in: int | None = None
) -> tuple[ApiToken, str]:
    """Create a token in the caller's transaction; return the row and the plaintext.

    The plaintext exists only in the return value: show it once, never store it.
    With ``expires_in`` (seconds), the token stops working that long after now
    (PostgreSQL's clock).

    :raises InvalidInput: unknown role, invalid name or ``expires_in`` out of bounds.
    :raises TokenNameTaken: a live token already has ``name``.
    """
    implied_roles(role)
    name = validate_token_name(name or f"{role}-{secrets.token_hex(3)}")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role, token_hash=hash_token(plaintext))
    if expires_in is not None:
        lifetime = timedelta(seconds=_checked_lifetime(expires_in))
        row.expires_at = func.now() + lifetime
    _insert(session, row)
    return row, plaintext


def _checked_lifetime(expires_in: int) -> int:
    """:raises InvalidInput: ``expires_in`` is outside the bounds."""
    if not MIN_EXPIRES_IN_S <= expires_in <= MAX_EXPIRES_IN_S:
        raise InvalidInput(
            f"expires_in must be {MIN_EXPIRES_IN_S}-{MAX_EXPIRES_IN_S} seconds (got {expires_in})"
        )
    return expires_in


def _insert(session: Session, row: ApiToken) -> None:
    """Insert ``row`` in a savepoint of the caller's transaction.

    :raises TokenNameTaken: the live-name index refused it (nothing else changes).
    :raises IntegrityError: any other constraint.
    """
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        diag = getattr(exc.orig, "diag", None)
        if getattr(diag, "constraint_name", None) != NAME_INDEX:
            raise
        raise TokenNameTaken(
            f"a live token is already named {row.name!r}: choose another name, "
            "or revoke that token first"
        ) from None


def verify_token(session: Session, token: str) -> Identity | None:
    """The identity of a valid, unrevoked, unexpired ``token``, or None.

    One statement: the lookup also notes the token's use when the last noted
    use is older than a minute (in the caller's transaction).
    """
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    return _verify_digest(session, hash_token(token))


def _verify_digest(session: Session, digest: str) -> Identity | None:
    found = _lookup(session, digest)
    return None if found is None else found[0]


def _lookup(session: Session, digest: str) -> tuple[Identity, float | None] | None:
    """The identity of a valid, unrevoked, unexpired token with hash ``digest``, and
    the seconds until it expires (None: never); None if there is no such token.

    One statement, which also notes the use (see :func:`verify_token`).
    """
    found = (
        select(ApiToken.id, ApiToken.name, ApiToken.role, ApiToken.last_used_at,
               extract("epoch", ApiToken.expires_at - func.now()).label("left_s"))
        .where(
            ApiToken.token_hash == digest,
            ApiToken.revoked_at.is_(None),
            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > func.now()),
        )
        .cte("found")
    )  # fmt: skip
    stale = or_(
        found.c.last_used_at.is_(None),
        found.c.last_used_at < func.now() - _LAST_USED_GRANULARITY,
    )
    touched = (
        update(ApiToken)
        .where(ApiToken.id == found.c.id, stale)
        .values(last_used_at=func.now())
        .cte("touched")
    )
    row = session.execute(
        select(found.c.id, found.c.name, found.c.role, found.c.left_s).add_cte(touched)
    ).one_or_none()
    if row is None:
        return None
    left_s = None if row.left_s is None else float(row.left_s)
    return Identity(token_id=row.id, name=row.name, role=row.role), left_s


class TokenCache:
    """Verified identities by token hash, each believed for ``ttl_s`` seconds.

    Thread-safe; bounded (when full, expired entries go, then everything).
    Holds hashes and identities only, never a token.
    """

    def __init__(
        self,
        ttl_s: float = TOKEN_CACHE_TTL_S,
        max_entries: int = _TOKEN_CACHE_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[Identity, float]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Identity | None:
        """The identity verified for ``digest`` less than ``ttl_s`` ago, or None."""
        entry = self._entries.get(digest)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    def put(self, digest: str, identity: Identity, expires_in_s: float | None = None) -> None:
        """Remember that ``digest`` was verified as ``identity`` just now, for ``ttl_s``
        or until the token expires (``expires_in_s`` from now) if that is sooner."""
        lifetime = self.ttl_s if expires_in_s is None else min(self.ttl_s, expires_in_s)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._prune()
            self._entries[digest] = (identity, self.clock() + lifetime)

    def forget(self, token_id: int) -> None:
        """Drop every entry of the token ``token_id`` (it was revoked here)."""
        with self._lock:
            for digest in [d for d, (i, _) in self._entries.items() if i.token_id == token_id]:
                del self._entries[digest]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()

    def _prune(self) -> None:
        now = self.clock()
        self._entries = {d: e for d, e in self._entries.items() if e[1] > now}
        if len(self._entries) >= self.max_entries:
            self._entries.clear()


token_cache = TokenCache()


def authenticate(token: str) -> Identity | None:
    """The identity of a valid, unrevoked, unexpired ``token``, or None.

    No database statement when the token was verified in this process less
    than :data:`TOKEN_CACHE_TTL_S` ago (and before its expiry); else one, in
    its own short transaction.

    :raises sqlalchemy.exc.OperationalError: the database cannot be reached.
    :raises ConfigError: no database URL is configured.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    digest = hash_token(token)
    identity = token_cache.get(digest)
    if identity is not None:
        return identity
    with session_scope() as session:
        found = _lookup(session, digest)
    if found is None:
        return None
    token_cache.put(digest, *found)
    return found[0]


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
    token_cache.forget(token_id)
    return row


def revoke_named(session: Session, name: str) -> None:
    """Revoke the live token named ``name``, if there is one (so the name can be reused)."""
    row = session.scalars(
        select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
    ).one_or_none()
    if row is not None:
        revoke_token(session, row.id)
