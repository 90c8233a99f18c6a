"""``powerq tokens create|list|revoke`` over HTTP with the admin token, against the live API."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

import powerq.tokens
from powerq.clicmds import tokens as cli_tokens
from powerq.models import ApiToken
from tests.cli.conftest import Cli, error_line


def test_the_cli_repeats_the_servers_roles_and_bounds() -> None:
    assert cli_tokens.ROLES == powerq.tokens.ROLES
    assert cli_tokens.MIN_EXPIRES_IN_S == powerq.tokens.MIN_EXPIRES_IN_S
    assert cli_tokens.MAX_EXPIRES_IN_S == powerq.tokens.MAX_EXPIRES_IN_S


def test_create_list_revoke_through_the_api(cli: Cli, session: Session) -> None:
    made = cli("tokens", "create", "--role", "reader", "--name", "dash", "--expires-in", "600")

    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    row = session.scalars(select(ApiToken).where(ApiToken.name == "dash")).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert row.expires_at is not None
    assert cli("nodes", "list", POWERQ_TOKEN=token).exit_code == 0  # it works, and is noted

    listed = cli("tokens", "list", "-o", "table")
    line = next(line for line in listed.stdout.splitlines() if " dash " in line)
    assert "reader" in line and "active" in line and token not in listed.stdout
    assert cli("tokens", "list", "--json").stdout.count('"last_used_at": "') >= 2

    revoked = cli("tokens", "revoke", str(row.id))
    assert revoked.exit_code == 0 and f"token {row.id} (dash) revoked" in revoked.stdout
    after = cli("tokens", "list", "-o", "table").stdout.splitlines()
    assert "revoked" in next(line for line in after if " dash " in line)
    assert "HTTP 401" in error_line(cli("nodes", "list", POWERQ_TOKEN=token), code=2)


def test_a_taken_name_is_one_line_with_the_409(cli: Cli) -> None:
    result = cli("tokens", "create", "--role", "admin", "--name", "cli-admin")

    assert "already named 'cli-admin'" in error_line(result)
    assert "HTTP 409" in error_line(result)


def test_only_an_admin_may_manage_tokens(cli: Cli) -> None:
    assert "HTTP 403" in error_line(cli("tokens", "list", role="operator"), code=2)
    assert "HTTP 403" in error_line(
        cli("tokens", "create", "--role", "reader", role="operator"), code=2
    )


def test_revoking_an_unknown_token_is_one_line(cli: Cli) -> None:
    assert "HTTP 404" in error_line(cli("tokens", "revoke", "9999"), code=2)


def test_without_a_token_create_says_how_to_bootstrap(cli: Cli, tmp_path: object) -> None:
    result = cli("tokens", "create", "--role", "admin", POWERQ_TOKEN="",
                 POWERQ_DATA_DIR=str(tmp_path))  # fmt: skip

    assert "--database-url" in error_line(result, code=2)
