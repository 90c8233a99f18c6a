"""``powerq tokens …``: API tokens from the command line (talks to PostgreSQL directly,
so the first admin token can be made before the API has any)."""

from __future__ import annotations

import click

from powerq.db import session_scope
from powerq.tokens import ROLES, create_token, list_tokens, revoke_token


@click.group("tokens")
def tokens() -> None:
    """API bearer tokens (only their SHA-256 is stored)."""


@tokens.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the token may do.")
@click.option("--name", default=None, help="Actor name recorded on requests (default: generated).")
def create(role: str, name: str | None) -> None:
    """Create a token and print it (this once: it cannot be shown again)."""
    with session_scope() as session:
        row, plaintext = create_token(session, role=role, name=name)
        label = f"{row.name} ({row.role})"
    click.echo(plaintext)
    click.echo(f"token {label} created; store it now, it will not be shown again", err=True)


@tokens.command("list")
def list_() -> None:
    """List tokens (id, name, role, state); never their secrets."""
    with session_scope() as session:
        for row in list_tokens(session):
            state = "revoked" if row.revoked_at else "active"
            click.echo(f"{row.id}\t{row.name}\t{row.role}\t{state}")


@tokens.command("revoke")
@click.argument("token_id", type=int)
def revoke(token_id: int) -> None:
    """Revoke token TOKEN_ID (see `powerq tokens list`)."""
    with session_scope() as session:
        row = revoke_token(session, token_id)
        click.echo(f"token {row.id} ({row.name}) revoked")
