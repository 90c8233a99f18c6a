"""``powerq nodes set|delete|maintenance`` and maintenance shown in ``nodes show|list``,
against the live API (no workers needed)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.models import Node
from powerq.states import Action
from tests.cli.conftest import Cli, error_line
from tests.cli.test_power import hold_outstanding
from tests.factories import make_node


@pytest.fixture
def fleet(session: Session, quiet_lanes: None) -> list[str]:
    names = ["m1", "m2", "m3"]
    for i, name in enumerate(names):
        make_node(session, name, address=f"10.8.0.{i + 1}", tags=("rack1",))
    return names


def _node(cli: Cli, name: str) -> dict[str, object]:
    return dict(json.loads(cli("nodes", "show", name, "--json", role="reader").stdout))


def _live_names(session: Session) -> list[str]:
    session.expire_all()
    query = select(Node.name).where(Node.deleted_at.is_(None)).order_by(Node.name)
    return list(session.scalars(query))


def test_set_changes_only_what_is_given(cli: Cli, fleet: list[str], session: Session) -> None:
    before = session.scalars(select(Node.bmc_password_encrypted).where(Node.name == "m1")).one()
    result = cli(
        "nodes", "set", "m1", "--address", "10.8.1.1", "--port", "6230", "--tags", "gpu, rack9",
        "--password-stdin", stdin="n3w-Secret\n",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert result.stdout == "node m1 changed: address, password, port, tags\n"
    node = _node(cli, "m1")
    assert (node["address"], node["port"], node["tags"]) == ("10.8.1.1", 6230, ["gpu", "rack9"])
    assert node["username"] == "admin"  # not given: unchanged
    assert "n3w-Secret" not in result.output
    session.expire_all()
    after = session.scalars(select(Node.bmc_password_encrypted).where(Node.name == "m1")).one()
    assert after != before  # the password from stdin was set


def test_set_refusals_are_one_line(cli: Cli, fleet: list[str]) -> None:
    nothing = cli("nodes", "set", "m1")
    unknown = cli("nodes", "set", "ghost", "--port", "1")
    port = str(_node(cli, "m1")["port"])
    taken = cli("nodes", "set", "m2", "--address", "10.8.0.1", "--port", port)
    reader = cli("nodes", "set", "m1", "--port", "1", role="reader")

    assert nothing.exit_code == 2 and "nothing to change" in nothing.stderr
    assert error_line(unknown, code=2) == "Error: no node named 'ghost' (HTTP 404)"
    assert "already registered as node 'm1'" in error_line(taken)
    assert "needs a token with the admin role" in error_line(reader, code=2)


def test_delete_checks_every_name_before_deleting_any(
    cli: Cli, fleet: list[str], session: Session
) -> None:
    result = cli("nodes", "delete", "m1", "ghost", "m2", "phantom")

    assert error_line(result, code=2) == (
        "Error: no node named 'ghost', 'phantom'; nothing was queued"
    )
    assert _live_names(session) == fleet


def test_delete_removes_each_and_reports_a_refused_one(
    cli: Cli, fleet: list[str], session: Session
) -> None:
    hold_outstanding("m2", Action.ON)

    result = cli("nodes", "delete", "m1", "m2")

    assert result.stdout.splitlines()[0] == "m1\tsucceeded\tdeleted"
    assert result.stdout.splitlines()[1].startswith("m2\tfailed\t")
    assert "has an outstanding 'on' request (pending)" in result.stdout
    assert error_line(result) == "Error: 1 of 2 node(s) were not changed"
    assert _live_names(session) == ["m2", "m3"]


def test_maintenance_on_and_off_with_who_why_and_since(cli: Cli, fleet: list[str]) -> None:
    on = cli("nodes", "maintenance", "on", "m1", "m2", "--reason", "PSU swap, ticket 4711")
    shown = cli("nodes", "show", "m1", "-o", "table", role="reader")
    listed = cli("nodes", "list", "-o", "table", role="reader")
    only = cli("nodes", "list", "--maintenance", role="reader")

    assert on.exit_code == 0, on.output
    node = _node(cli, "m1")
    assert (node["maintenance"], node["maintenance_reason"], node["maintenance_by"]) == (
        True, "PSU swap, ticket 4711", "cli-admin",
    )  # fmt: skip
    assert f"PSU swap, ticket 4711 (by cli-admin since {node['maintenance_since']})" in on.stdout
    assert "maintenance_reason" in shown.stdout and "PSU swap, ticket 4711" in shown.stdout
    assert "maintenance_by" in shown.stdout and str(node["maintenance_since"]) in shown.stdout
    assert "MAINTENANCE" in listed.stdout
    m1_row = next(line for line in listed.stdout.splitlines() if line.startswith("m1 "))
    assert "PSU swap, ticket 4711 (by cli-admin since" in m1_row
    assert [line.split("\t")[0] for line in only.stdout.splitlines()] == ["m1", "m2"]

    off = cli("nodes", "maintenance", "OFF", "m1")

    assert off.exit_code == 0, off.output
    assert off.stdout == "m1\tsucceeded\tnot in maintenance\n"
    assert _node(cli, "m1")["maintenance_reason"] is None


def test_maintenance_refusals(cli: Cli, fleet: list[str]) -> None:
    off_with_reason = cli("nodes", "maintenance", "off", "m1", "--reason", "x")
    unknown = cli("nodes", "maintenance", "on", "m1", "ghost", "--reason", "x")
    reader = cli("nodes", "maintenance", "on", "m1", role="reader")

    assert off_with_reason.exit_code == 2 and "--reason goes with on" in off_with_reason.stderr
    assert "no node named 'ghost'" in error_line(unknown, code=2)
    assert _node(cli, "m1")["maintenance"] is False  # nothing changed
    assert "needs a token with the admin role" in error_line(reader, code=2)


def test_a_node_in_maintenance_still_takes_single_requests(
    cli: Cli, fleet: list[str], session: Session
) -> None:
    cli("nodes", "maintenance", "on", "m1", "--reason", "bench")

    result = cli("power", "m1", "off", role="operator")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("m1\tcreated\tpending\t")
    count = session.scalar(select(func.count()).select_from(Node).where(Node.maintenance))
    assert count == 1
