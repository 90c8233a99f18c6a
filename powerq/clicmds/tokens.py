"""``powerq tokens create|list|revoke``: API tokens through the API, with an admin token
(``POWERQ_API_URL`` and ``POWERQ_TOKEN``, or the admin token ``powerq up`` wrote).

One path goes to PostgreSQL instead: ``powerq tokens create --database-url URL``,
for bootstrapping an installation that runs without ``powerq up`` (the Procfile),
where no admin token exists yet to ask the API with. Only that path imports
the server side (SQLAlchemy), and only when it is taken.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from powerq.clicmds.output import Output, client, echo_json, output_option, table
from powerq.errors import ConfigError

# powerq.tokens.ROLES and the bounds of expires_in, repeated here so that the
# HTTP path imports no server module (tests/cli/test_tokens.py keeps them equal).
ROLES = ("reader", "operator", "admin")
MIN_EXPIRES_IN_S = 1
MAX_EXPIRES_IN_S = 5 * 366 * 86400


@click.group("tokens")
def tokens() -> None:
    """API bearer tokens (through the API; only their SHA-256 is stored)."""


@tokens.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the token may do.")
@click.option("--name", default=None,
              help="Actor name recorded on requests, unique among live tokens "
                   "(default: generated).")  # fmt: skip
@click.option("--expires-in", type=click.IntRange(MIN_EXPIRES_IN_S, MAX_EXPIRES_IN_S),
              default=None, help="Seconds until it stops working (default: never).")  # fmt: skip
@click.option("--database-url", default=None, metavar="URL",
              help="Bootstrap: write it straight into this PostgreSQL database instead of "
                   "asking the API (for the first admin token without `powerq up`).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the token and its fields as JSON.")
def create(
    role: str, name: str | None, expires_in: int | None, database_url: str | None, as_json: bool
) -> None:
    """Create a token and print it (this once: it cannot be shown again)."""
    body: dict[str, Any] = {"role": role}
    if name is not None:
        body["name"] = name
    if expires_in is not None:
        body["expires_in"] = expires_in
    made = _create_in_database(database_url, body) if database_url else _create_through_api(body)
    if as_json:
        echo_json(made)
        return
    click.echo(made["token"])
    click.echo(
        f"token {made['name']} ({made['role']}) created; store it now, it will not be shown again",
        err=True,
    )


def _create_through_api(body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/tokens`` with the configured admin token.

    :raises ConfigError: no token is configured (with the bootstrap hint).
    :raises ApiError: the API refused (e.g. 409: a live token has the name).
    :raises ApiUnreachable: the API cannot be reached.
    """
    api = client()
    if not api.token:
        raise ConfigError(
            "POWERQ_TOKEN is not set: export an admin token (the one `powerq up` printed), "
            "or make the first one with `powerq tokens create --role admin --database-url URL`"
        )
    return api.create_token(body)


def _create_in_database(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create the token in the database at ``url`` (the bootstrap path).

    :raises InvalidInput: invalid name or role.
    :raises TokenNameTaken: a live token already has the name.
    :raises sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    from sqlalchemy.orm import Session

    from powerq.db import engine_for
    from powerq.tokens import create_token

    with Session(engine_for(url)) as session, session.begin():
        row, plaintext = create_token(session, **body)
        session.flush()
        session.refresh(row)
        return {
            "id": row.id,
            "name": row.name,
            "role": row.role,
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
            "token": plaintext,
        }


def _state(token: dict[str, Any], now: datetime) -> str:
    """``revoked``, ``expired`` (by this machine's clock) or ``active``."""
    if token["revoked_at"]:
        return "revoked"
    expires_at = token.get("expires_at")
    if expires_at and datetime.fromisoformat(expires_at) <= now:
        return "expired"
    return "active"


@tokens.command("list")
@output_option
def list_(output: Output) -> None:
    """List tokens (id, name, role, state, expiry, last use); never their secrets."""
    found = client().tokens()
    now = datetime.now(UTC)
    rows = [
        (t["id"], t["name"], t["role"], _state(t, now), t["created_at"], t.get("expires_at"),
         t["last_used_at"])
        for t in found
    ]  # fmt: skip
    columns = ("ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST USED")
    output.show(table(f"{len(rows)} tokens", columns, rows), found)


@tokens.command("revoke")
@click.argument("token_id", type=click.IntRange(1))
def revoke(token_id: int) -> None:
    """Revoke token TOKEN_ID (see `powerq tokens list`)."""
    row = client().revoke_token(token_id)
    click.echo(f"token {row['id']} ({row['name']}) revoked")
