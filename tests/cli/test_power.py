"""``powerq power``, ``powerq requests show`` and ``powerq status`` on a live stack."""

from __future__ import annotations

import json

import pytest

from powerq.db import session_scope
from powerq.intents import find_node, request_power
from powerq.states import Action
from tests.cli.conftest import Cli, error_line
from tests.stack import Stack

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]


def hold_outstanding(name: str, action: Action) -> str:
    """Record a request that no lane is told about (no beat runs): it stays pending."""
    with session_scope() as session:
        request = request_power(session, find_node(session, name), action, actor="bob").request
        return str(request.id)


def test_power_wait_then_show_the_request_and_the_status(live: Stack, cli: Cli) -> None:
    a, b, _ = live.register_fleet(3)

    result = cli("power", a, b, "off", "--wait", role="operator")

    assert result.exit_code == 0, result.output
    assert result.stdout.count("succeeded") == 2
    rows = json.loads(cli("power", a, "off", "--json", role="operator").stdout)
    (row,) = rows
    assert row["outcome"] == "created"
    shown = cli("requests", "show", row["request"]["id"], "--json", role="reader")
    assert json.loads(shown.stdout)["node"] == a
    status = json.loads(cli("status", "--json", role="reader").stdout)
    assert status["nodes"] == 3
    assert status["desired"] == {"on": 0, "off": 2, "none": 1}
    assert status["faults"] == []
    assert status["lanes"] == {"total": 2, "held": 0, "agents": 0}  # workers run without agents
    table = cli("status", role="reader").stdout
    assert "observed" in table and "in sync" in table and "outstanding" in table
    assert "0 of 2 held by 0 agents" in table


def test_a_conflicting_power_request_is_refused_in_its_row(live: Stack, cli: Cli) -> None:
    busy, free = live.register_fleet(2)
    outstanding = hold_outstanding(busy, Action.ON)

    result = cli("power", busy, free, "off", "--wait", role="operator")

    assert "refused" in result.stdout and outstanding in result.stdout
    assert "outstanding 'on' request" in result.stdout
    assert "succeeded" in result.stdout  # the other node went on
    assert error_line(result, alone=False) == ("Error: 1 of 2 node(s) did not succeed: 1 refused")


def test_an_unknown_node_is_one_line_and_exit_2(live: Stack, cli: Cli) -> None:
    result = cli("power", "ghost", "on", role="operator")
    assert error_line(result, code=2) == "Error: no node named 'ghost'; nothing was queued"
    assert result.stdout == ""


def test_query_wait_prints_each_nodes_state(live: Stack, cli: Cli) -> None:
    a, b = live.register_fleet(2)
    cli("power", b, "off", "--wait", role="operator")

    plain = cli("power", a, b, "QUERY", "--wait", role="operator")
    table = cli("power", a, b, "query", "--wait", "-o", "table", role="operator")

    assert plain.exit_code == 0, plain.output
    assert plain.stdout == f"{a}\ton\t\n{b}\toff\t\n"
    assert table.stdout.splitlines()[1:] == [f"{a}  on", f"{b}  off"]


def test_a_wait_that_gives_up_says_nothing_failed_and_exits_4(live: Stack, cli: Cli) -> None:
    (name,) = live.register_fleet(1)
    live.fleet.control.set_fault(name, "stuck")  # accepts the command, never changes

    result = cli(
        "power", name, "off", "--deadline", "3", "--wait", "--timeout", "1", role="operator"
    )  # fmt: skip

    line = error_line(result, code=4)
    assert line.startswith("Error: 1 request(s) still unfinished after 1s: nothing failed")
    assert "powerq requests show ID" in line
    (row,) = result.stdout.splitlines()
    assert row.split("\t")[:2] == [name, "created"] and row.split("\t")[2] in ("pending", "running")
