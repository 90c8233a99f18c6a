"""CLI tests: the real API served over HTTP (werkzeug, threaded) in this process,
tokens per role, and a live stack (sim fleet, lane workers, control worker)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

from powerq.api import create_app
from powerq.cli import main
from powerq.tokens import ROLES, create_token
from tests.api.helpers import live_server
from tests.batches.live import live_stack, reset
from tests.stack import Stack

FLEET_SIZE = 6


@pytest.fixture(scope="package")
def api_url(services: object) -> Iterator[str]:
    """The API on a free loopback port, for the whole package."""
    with live_server(create_app()) as url:
        yield url


@dataclass
class Cli:
    """Runs ``powerq …`` in-process against the live API, as one role."""

    url: str
    tokens: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, *args: str, role: str = "admin", stdin: str | None = None, **env: str
    ) -> Result:
        environment = {
            "POWERQ_API_URL": self.url,
            "POWERQ_TOKEN": self.tokens[role],
            "COLUMNS": "250",  # rich wraps tables to the terminal width
            **self.env,
            **env,
        }
        result = CliRunner().invoke(
            main, list(args), input=stdin, env=environment, catch_exceptions=False
        )
        assert "Traceback" not in result.output, result.output
        return result


@pytest.fixture
def cli(api_url: str, session: Session) -> Cli:
    """The CLI with a token per role (the database is empty: tokens made here)."""
    tokens = {}
    for role in ROLES:
        _, tokens[role] = create_token(session, role=role, name=f"cli-{role}")
    session.commit()
    return Cli(api_url, tokens)


@pytest.fixture
def quiet_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process API records requests and batches as usual but rings no lane, so
    they stay pending even when this process's live stack (package-scoped) runs
    workers: for tests of what the CLI is answered, not of execution."""
    monkeypatch.setattr("powerq.api.power.ring_marked", lambda *args: True)
    monkeypatch.setattr("powerq.api.power.dispatch_request", lambda *args: True)
    monkeypatch.setattr("powerq.api.batches.dispatch_releases", lambda releases: len(releases))


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, services: object) -> Iterator[Stack]:
    """Real workers against the suite's PostgreSQL and Redis, and a fleet of sim BMCs."""
    with live_stack(tmp_path_factory.mktemp("cli-workers"), FLEET_SIZE) as running:
        yield running


@pytest.fixture
def live(stack: Stack, db: None) -> Stack:
    """The stack with an empty database and every BMC healthy and on."""
    return reset(stack)


def error_line(result: Result, *, alone: bool = True, code: int = 1) -> str:
    """The one ``Error: …`` line a failing command printed on stderr (with ``alone``,
    nothing else is on stderr; otherwise a progress bar may precede it), which
    ended it with exit ``code``."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    if alone:
        assert len(lines) == 1, result.stderr
    return errors[0]
