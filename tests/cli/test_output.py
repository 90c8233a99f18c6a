"""``-o table|json|csv|value`` on listings, and plain unwrapped rows when stdout is
not a terminal: through the real ``powerq`` in a subprocess (a pipe, a pty) and
in-process."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import sys

import pytest
from sqlalchemy.orm import Session

from powerq.clicmds.output import resolve_format
from tests.cli.conftest import Cli, error_line
from tests.factories import make_node

# Long enough that a row is far wider than an 80-column terminal.
LONG_TAGS = tuple(f"rack-{i:02d}-with-a-long-label" for i in range(6))
NODES = 7


@pytest.fixture
def fleet(session: Session) -> list[str]:
    names = [f"node-{i:02d}-{'x' * 40}" for i in range(NODES)]
    for i, name in enumerate(names):
        make_node(session, name, address=f"10.9.0.{i + 1}", tags=LONG_TAGS)
    return names


def _powerq(cli: Cli, *args: str, shell: str = "") -> subprocess.CompletedProcess[str]:
    """Run the installed ``powerq`` (``python -m powerq.cli``) as a reader, its stdout a
    pipe (into ``shell``, a command line, when given)."""
    env = {**os.environ, "POWERQ_API_URL": cli.url, "POWERQ_TOKEN": cli.tokens["reader"],
           "COLUMNS": "80"}  # fmt: skip
    command = [sys.executable, "-m", "powerq.cli", *args]
    if shell:
        line = " ".join(command) + f" | {shell}"
        return subprocess.run(line, shell=True, env=env, capture_output=True, text=True, check=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def test_nodes_list_o_value_piped_to_wc_counts_the_nodes(cli: Cli, fleet: list[str]) -> None:
    counted = _powerq(cli, "nodes", "list", "-o", "value", shell="wc -l")

    assert int(counted.stdout.strip()) == NODES


def test_piped_rows_are_whole_one_per_node_and_tab_separated(cli: Cli, fleet: list[str]) -> None:
    default = _powerq(cli, "nodes", "list")  # not a terminal: value rows
    explicit = _powerq(cli, "nodes", "list", "-o", "value")

    assert default.returncode == 0, default.stderr
    assert default.stdout == explicit.stdout
    lines = default.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == fleet  # no title, no header
    for i, line in enumerate(lines):
        cells = line.split("\t")
        assert len(cells) == 9, cells
        assert cells[2] == f"10.9.0.{i + 1}:{cells[2].split(':')[1]}"
        assert cells[8] == ",".join(sorted(LONG_TAGS)) and len(line) > 80  # never folded


def test_a_terminal_gets_a_table(cli: Cli, fleet: list[str]) -> None:
    controller, terminal = pty.openpty()
    env = {**os.environ, "POWERQ_API_URL": cli.url, "POWERQ_TOKEN": cli.tokens["reader"],
           "COLUMNS": "400"}  # fmt: skip
    with subprocess.Popen(
        [sys.executable, "-m", "powerq.cli", "nodes", "list"], stdout=terminal, env=env
    ) as process:
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
    os.close(controller)

    text = shown.decode()
    assert process.returncode == 0
    assert f"{NODES} nodes" in text and "NODE" in text and "MAINTENANCE" in text
    assert "┃" in text or "│" in text  # rich's box


def test_csv_and_json_carry_the_same_nodes(cli: Cli, fleet: list[str]) -> None:
    as_csv = cli("nodes", "list", "-o", "csv", role="reader")
    as_json = cli("nodes", "list", "-o", "json", role="reader")
    alias = cli("nodes", "list", "--json", role="reader")
    upper = cli("nodes", "list", "-o", "JSON", role="reader")

    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0][:3] == ["NODE", "DRIVER", "BMC"] and len(rows) == NODES + 1
    assert [row[0] for row in rows[1:]] == fleet
    assert [node["name"] for node in json.loads(as_json.stdout)] == fleet
    assert as_json.stdout == alias.stdout == upper.stdout


def test_json_with_another_format_is_a_usage_error(cli: Cli) -> None:
    result = cli("nodes", "list", "--json", "-o", "csv", role="reader")

    assert result.exit_code == 2
    assert "--json is -o json" in result.stderr


def test_every_listing_takes_o(cli: Cli, fleet: list[str]) -> None:
    for args in (("nodes", "list"), ("nodes", "show", fleet[0]), ("requests", "list"),
                 ("batches", "list"), ("status",), ("tokens", "list")):  # fmt: skip
        for fmt in ("table", "json", "csv", "value"):
            result = cli(*args, "-o", fmt)
            assert result.exit_code == 0, (args, fmt, result.output)


def test_the_default_format_follows_the_terminal() -> None:
    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    assert resolve_format(None, False, Stream(True)) == "table"
    assert resolve_format(None, False, Stream(False)) == "value"
    assert resolve_format("CSV", False, Stream(True)) == "csv"
    assert resolve_format(None, True, Stream(True)) == "json"


def test_a_refusal_with_rows_keeps_the_error_off_stdout(cli: Cli, fleet: list[str]) -> None:
    result = cli("requests", "list", "--since", "yesterday", role="reader")

    assert result.stdout == ""
    assert "give a duration" in error_line(result, code=2)
