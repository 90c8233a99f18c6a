"""``powerq db …``: schema migrations from the command line."""

from __future__ import annotations

import click

from powerq.config import get_settings
from powerq.errors import ConfigError


@click.group("db")
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (POWERQ_DATABASE_URL must be set)."""
    from powerq.migrate import upgrade as run_upgrade

    url = get_settings().database_url
    if not url:
        raise ConfigError("POWERQ_DATABASE_URL is not set (or use `powerq up`, which migrates)")
    run_upgrade(url, revision)
    click.echo(f"database at {revision}")
