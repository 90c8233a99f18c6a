"""``powerq requests list|show|cancel`` and ``powerq power`` without workers: names
checked before anything is queued, accepted requests are success without --wait."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.models import PowerRequest
from tests.cli.conftest import Cli, error_line
from tests.factories import make_node


@pytest.fixture
def fleet(session: Session, quiet_lanes: None) -> list[str]:
    names = [f"q{i}" for i in range(1, 11)]
    for i, name in enumerate(names):
        make_node(session, name, address=f"10.7.0.{i + 1}")
    return names


def _request_count(session: Session) -> int:
    session.expire_all()
    return int(session.scalar(select(func.count()).select_from(PowerRequest)) or 0)


def test_power_without_wait_succeeds_once_accepted_in_any_case(cli: Cli, fleet: list[str]) -> None:
    result = cli("power", "q1", "q2", "ON", role="operator")
    again = cli("power", "q1", "On", role="operator")  # the identical outstanding one
    boot = cli("boot", "q3", "PXE", role="operator")

    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("q1", "created", "pending"), ("q2", "created", "pending"),
    ]  # fmt: skip
    assert again.exit_code == 0 and again.stdout.split("\t")[1] == "existing"
    assert boot.exit_code == 0 and boot.stdout.startswith("q3\tcreated\tpending\t")


@pytest.mark.parametrize("count", [2, 9], ids=["one-get-each", "one-listing"])
def test_unknown_names_queue_nothing_and_exit_2(
    cli: Cli, fleet: list[str], session: Session, count: int
) -> None:
    result = cli("power", *fleet[: count - 1], "n9", "ghost", "off", role="operator")

    assert error_line(result, code=2) == "Error: no node named 'n9', 'ghost'; nothing was queued"
    assert result.stdout == ""
    assert _request_count(session) == 0


def test_a_refused_request_is_a_failure_without_wait(cli: Cli, fleet: list[str]) -> None:
    cli("power", "q1", "on", role="operator")

    result = cli("power", "q1", "q2", "off", role="operator")

    assert "an 'off' request cannot be accepted" in result.stdout
    assert error_line(result) == "Error: 1 of 2 node(s) did not succeed: 1 refused"


def test_requests_list_filters_and_pages(cli: Cli, fleet: list[str]) -> None:
    cli("power", "q1", "q2", "q3", "on", role="operator")
    cli("power", "q1", "on", role="operator")

    every = cli("requests", "list", role="reader")
    of_q2 = cli("requests", "list", "--node", "q2", "--json", role="reader")
    pending = cli("requests", "list", "--status", "PENDING", "--status", "running",
                  "--since", "1h", "--limit", "2", "-o", "table", role="reader")  # fmt: skip
    none = cli("requests", "list", "--status", "failed", role="reader")

    assert every.exit_code == 0, every.output
    assert [line.split("\t")[1] for line in every.stdout.splitlines()] == ["q3", "q2", "q1"]
    assert [r["node"] for r in json.loads(of_q2.stdout)["items"]] == ["q2"]
    assert "2 of 3 requests" in pending.stdout and "REQUEST" in pending.stdout
    assert none.exit_code == 0 and none.stdout == ""


def test_requests_list_refusals_are_one_line_exit_2(cli: Cli, fleet: list[str]) -> None:
    since = cli("requests", "list", "--since", "2026-12-01T10:00:00", role="reader")
    unknown = cli("requests", "list", "--node", "ghost", role="reader")
    status = cli("requests", "list", "--status", "done", role="reader")

    assert "the time needs its UTC offset" in error_line(since, code=2)
    assert error_line(unknown, code=2) == "Error: no node named 'ghost' (HTTP 404)"
    assert status.exit_code == 2 and "'done' is not one of" in status.stderr


def test_cancel_a_pending_request_then_again(cli: Cli, fleet: list[str], session: Session) -> None:
    asked = json.loads(cli("power", "q1", "off", "--json", role="operator").stdout)
    request_id = asked[0]["request"]["id"]

    cancelled = cli("requests", "cancel", request_id, role="operator")
    shown = json.loads(cli("requests", "show", request_id, "--json", role="reader").stdout)
    again = cli("requests", "cancel", request_id, role="operator")

    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout == f"request {request_id} (off on q1) cancelled\n"
    assert shown["status"] == "cancelled"
    assert "(HTTP 409)" in error_line(again)


def test_unknown_or_malformed_request_ids_are_said_in_words(cli: Cli) -> None:
    missing = str(uuid.uuid4())

    for command in ("show", "cancel"):
        malformed = cli("requests", command, "123", role="operator")
        unknown = cli("requests", command, missing, role="operator")

        assert error_line(malformed, code=2) == "Error: no request '123': request ids are UUIDs"
        assert error_line(unknown, code=2) == f"Error: no request {missing}"


def test_a_reader_is_told_which_role_cancelling_needs(cli: Cli, fleet: list[str]) -> None:
    asked = json.loads(cli("power", "q1", "off", "--json", role="operator").stdout)

    result = cli("requests", "cancel", asked[0]["request"]["id"], role="reader")

    assert "needs a token with the operator role" in error_line(result, code=2)
    assert "powerq tokens create --role operator" in error_line(result, code=2)


def test_a_bad_api_url_says_what_it_must_start_with(cli: Cli) -> None:
    result = cli("nodes", "list", POWERQ_API_URL="127.0.0.1:8000")

    assert error_line(result, code=2) == (
        "Error: POWERQ_API_URL must start with http:// or https:// and name a host "
        "(got '127.0.0.1:8000')"
    )


def test_a_name_the_router_cannot_take_is_said_in_words(cli: Cli) -> None:
    result = cli("nodes", "show", "bad name!", role="reader")

    assert error_line(result, code=2) == "Error: no node named 'bad name!' (HTTP 404)"
