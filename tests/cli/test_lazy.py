"""The CLI imports only what a command needs (issue 16: "a CLI that starts instantly").

Counts of modules, never timings: ``bench/cli_cost.py`` measures the CPU.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap

import click
from click.testing import CliRunner

import powerq
from powerq.cli import COMMANDS, PowerqGroup, load, main

SERVER_SIDE = (
    "sqlalchemy", "celery", "alembic", "apiflask", "flask", "pyghmi", "sushy",
    "pydantic_settings", "kombu", "psycopg", "redis", "requests", "powerq.config", "powerq.db",
)  # fmt: skip
HTTP_COMMANDS = ("batch", "batches", "boot", "nodes", "power", "requests", "status", "tokens")


def _modules_after(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter, then report which watched modules it imported."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        watched = {(*SERVER_SIDE, "rich", "powerq.clicmds")!r}
        print(json.dumps({{
            "loaded": sorted(name for name in watched if name in sys.modules),
            "powerq": sorted(name for name in sys.modules if name.startswith("powerq")),
        }}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


def test_running_power_imports_the_client_only() -> None:
    after = _modules_after(
        """
        import click, powerq.cli
        command = powerq.cli.main.get_command(click.Context(powerq.cli.main), "power")
        assert command is not None and command.name == "power"
        import os
        os.environ.update(POWERQ_API_URL="http://127.0.0.1:9", POWERQ_TOKEN="pq_x")
        try:  # all the way to the HTTP call (nothing listens on port 9)
            powerq.cli.main(["power", "n1", "query"], standalone_mode=False)
        except click.ClickException as exc:
            assert "cannot reach the powerq API" in exc.message, exc.message
        """
    )

    assert after["loaded"] == ["powerq.clicmds"]  # no server side, and no rich off a terminal
    assert "powerq.clicmds.batch" not in after["powerq"]


def test_every_http_command_resolves_without_the_server_side() -> None:
    after = _modules_after(
        f"""
        import click, powerq.cli
        for name in {HTTP_COMMANDS!r}:
            assert powerq.cli.main.get_command(click.Context(powerq.cli.main), name) is not None
        """
    )

    assert [name for name in after["loaded"] if name != "powerq.clicmds"] == []


def test_version_and_help_import_no_command() -> None:
    after = _modules_after(
        """
        import powerq.cli
        for argv in (["--version"], ["--help"]):
            try:
                powerq.cli.main(argv)
            except SystemExit as exc:
                assert exc.code == 0
        """
    )

    assert after["loaded"] == []
    assert after["powerq"] == ["powerq", "powerq.cli", "powerq.errors"]


def test_help_lists_every_command_with_its_own_short_help() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "powerq.cli", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    loaded = PowerqGroup(name="powerq", lazy_subcommands=COMMANDS, callback=main.callback,
                         params=main.params, help=main.help)  # fmt: skip
    ctx = click.Context(loaded, info_name="powerq")
    for name in COMMANDS:
        loaded.get_command(ctx, name)  # every command imported: help from their docstrings

    assert listed.split("Commands:")[1].rstrip() == loaded.get_help(ctx).split("Commands:")[1]
    section = listed.split("Commands:")[1].splitlines()
    assert [line.split()[0] for line in section if line.strip()] == sorted(COMMANDS)
    server_side = {"agent", "db", "worker", "beat", "flower", "up", "sim-fleet"}
    assert set(HTTP_COMMANDS) | server_side == set(COMMANDS)


def test_the_table_names_each_command_and_its_first_sentence() -> None:
    for name, lazy in COMMANDS.items():
        command = load(lazy)

        assert command.name == name
        assert command.get_short_help_str(limit=1000) == lazy.short_help


def test_an_unknown_command_is_one_line() -> None:
    result = CliRunner().invoke(main, ["pwer"])

    assert result.exit_code == 2
    assert "No such command 'pwer'" in result.output
    assert "Traceback" not in result.output


def test_the_version_is_the_installed_one() -> None:
    result = CliRunner().invoke(main, ["--version"])

    assert result.output == f"powerq, version {importlib.metadata.version('powerq')}\n"
    assert powerq.__version__ == importlib.metadata.version("powerq")
