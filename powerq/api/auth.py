"""Bearer-token authentication and role checks (Flask-HTTPAuth through APIFlask).

Views declare the least role they need, e.g.
``@bp.auth_required(auth, roles=[OPERATOR])``; roles nest (admin ⊇ operator ⊇
reader), so a token passes when its role includes the one asked for. No valid
token → 401, a role that does not include the required one → 403, both as
problem+json.

A verified token is believed for :data:`powerq.tokens.TOKEN_CACHE_TTL_S`
seconds in each process without asking the database (so a revoked token may
keep working that long in another process); see :func:`powerq.tokens.authenticate`.
"""

from __future__ import annotations

from apiflask import HTTPTokenAuth

from powerq.api.problems import auth_error
from powerq.tokens import ADMIN, OPERATOR, READER, Identity, authenticate

__all__ = ["ADMIN", "OPERATOR", "READER", "auth", "current_actor", "current_identity"]

auth = HTTPTokenAuth(
    scheme="Bearer",
    security_scheme_name="BearerAuth",
    description="A token made with `powerq tokens create --role reader|operator|admin`",
)
auth.error_processor(auth_error)


@auth.verify_token  # type: ignore[untyped-decorator]
def _verify(token: str) -> Identity | None:
    """The caller's identity, or None (→ 401); cached briefly (see the module docstring).

    :raises sqlalchemy.exc.OperationalError: the database cannot be reached (→ 503).
    """
    return authenticate(token)


@auth.get_user_roles  # type: ignore[untyped-decorator]
def _roles(identity: Identity) -> list[str]:
    return identity.roles


def current_identity() -> Identity:
    """The authenticated caller of this request.

    :raises RuntimeError: called from a view that is not protected by ``auth``.
    """
    identity = auth.current_user
    if not isinstance(identity, Identity):
        raise RuntimeError("no authenticated caller: protect the view with auth_required")
    return identity


def current_actor() -> str:
    """The actor name recorded on requests and events: the token's name."""
    return current_identity().name
