"""Schema migrations (Alembic), driven from code so no alembic.ini is needed."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at powerq's migrations and ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``.

    :raises sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Revert migrations down to ``revision``.

    :raises sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    command.downgrade(alembic_config(database_url), revision)


if __name__ == "__main__":  # ``python -m powerq.migrate``: what ``powerq up`` runs
    from powerq.config import get_settings

    upgrade(get_settings().database_url or "")
