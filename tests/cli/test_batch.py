"""``powerq batch`` and ``powerq batches`` on a live stack: progress, tables, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from powerq.states import Action
from tests.cli.conftest import Cli, error_line
from tests.cli.test_power import hold_outstanding
from tests.stack import Stack

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]


def test_batch_off_all_waits_and_shows_every_node_succeeded(live: Stack, cli: Cli) -> None:
    names = live.register_fleet(4)

    result = cli("batch", "off", "--all", "--max-in-flight", "2", "--wait", "-v", "-o", "table",
                 role="operator")  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "4 succeeded" in result.stdout
    assert all(name in result.stdout for name in names)  # -v: every node
    assert "off" in result.stderr  # the progress bar
    assert "4/4" in result.stderr


def test_a_failing_bmc_fails_the_batch_with_its_reason(live: Stack, cli: Cli) -> None:
    names = live.register_fleet(3)
    live.fleet.control.set_fault(names[1], "down")

    result = cli(
        "batch", "off", *names, "--deadline", "3", "--wait", "--json", role="operator"
    )  # fmt: skip

    batch = json.loads(result.stdout)
    by_node = {node["node"]: node for node in batch["nodes"]}
    assert by_node[names[1]]["state"] == "failed"
    assert by_node[names[1]]["error"]
    assert [by_node[n]["state"] for n in (names[0], names[2])] == ["succeeded"] * 2
    assert error_line(result).endswith("1 failed of 3 node(s)")
    table = cli("batches", "show", batch["id"], role="reader")
    assert by_node[names[1]]["error"][:40] in table.stdout.replace("\n", " ")
    assert table.exit_code == 1


def test_conflicts_are_refused_with_the_outstanding_request(live: Stack, cli: Cli) -> None:
    names = live.register_fleet(3)
    outstanding = hold_outstanding(names[0], Action.ON)

    result = cli("batch", "off", "--all", "--wait", "-o", "table", role="operator")

    assert "refused" in result.stdout and outstanding in result.stdout
    assert "outstanding 'on' request" in result.stdout
    assert "2 succeeded" in result.stdout  # the summary line; the table lists the refused only
    assert names[1] not in result.stdout and names[2] not in result.stdout
    assert error_line(result, alone=False).endswith("1 refused of 3 node(s)")


def test_batch_from_a_file_by_tag_and_listing(live: Stack, cli: Cli, tmp_path: Path) -> None:
    names = live.register_fleet(3)
    listing = tmp_path / "nodes.txt"
    listing.write_text(f"# rack 1\n{names[2]}\n{names[0]}\n")

    from_file = cli("batch", "on", "--file", str(listing), "--json", role="operator")
    no_match = cli("batch", "on", "--tag", "nowhere", role="operator")
    usage = cli("batch", "on", "--all", names[0], role="operator")
    empty = cli("batch", "on", "--file", "-", role="operator", stdin="# nothing\n")
    listed = cli("batches", "list", "--json", role="reader")

    assert from_file.exit_code == 0, from_file.output
    assert json.loads(from_file.stdout)["selector"] == {"nodes": [names[2], names[0]]}
    assert error_line(no_match, code=2) == (
        "Error: no node matches the selector tags nowhere; nothing was queued"
    )
    assert usage.exit_code == 2 and "name the nodes one way" in usage.stderr
    assert error_line(empty, code=2) == "Error: <stdin> names no node; nothing was queued"
    assert json.loads(listed.stdout)["total"] == 1


def test_waiting_gives_up_saying_it_still_runs_exit_4(live: Stack, cli: Cli) -> None:
    (name,) = live.register_fleet(1)
    live.fleet.control.set_fault(name, "stuck")  # accepts the command, never changes

    result = cli(
        "batch", "off", name, "--deadline", "2", "--wait", "--timeout", "1", role="operator"
    )  # fmt: skip

    line = error_line(result, alone=False, code=4)  # not 1: nothing failed
    assert "is still running after 1s: nothing failed, it goes on in the server" in line
    assert "powerq batches show" in line and "--wait" in line
