"""The ``powerq`` command line (click). Subcommands live next to what they drive.

Every subcommand is imported on first use (click's lazy subcommands): the
table :data:`COMMANDS` names where each lives and its one-line help, so
``powerq --version`` and ``powerq --help`` import no command at all, and
``powerq power`` imports only the HTTP client, never the server side
(SQLAlchemy, Celery, Alembic, Flask, pyghmi). ``tests/cli/test_lazy.py`` keeps
it that way and keeps the help lines true.

Every powerq error ends the command with one clear line on stderr and a
non-zero exit code that says what kind of failure it was (0 all succeeded,
1 some failed, 2 usage or unknown node, 3 API unreachable, 4 still running
when ``--wait`` gave up: :mod:`powerq.clicmds.exits`), never a traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import click

from powerq import __version__
from powerq.errors import PowerqError


class Lazy(NamedTuple):
    """Where a subcommand lives (``"module:attribute"``) and its short help."""

    target: str
    short_help: str


# name -> (where, the first sentence of its docstring as `powerq --help` shows it)
COMMANDS: Mapping[str, Lazy] = {
    # HTTP commands: the client only.
    "batch": Lazy("powerq.clicmds.batch:batch",
                  "Run ACTION (on, off, soft_off, cycle, reset, query) on many nodes."),
    "batches": Lazy("powerq.clicmds.batch:batches", "Batches made earlier (through the API)."),
    "boot": Lazy("powerq.clicmds.power:boot",
                 "Set the boot DEVICE (pxe, disk, cdrom, bios) of each NODE."),
    "nodes": Lazy("powerq.clicmds.nodes:nodes", "Machines and their BMCs (through the API)."),
    "power": Lazy("powerq.clicmds.power:power",
                  "Request ACTION (on, off, soft_off, cycle, reset, query) on each NODE."),
    "requests": Lazy("powerq.clicmds.requests:requests_group", "Power requests (through the API)."),
    "status": Lazy("powerq.clicmds.power:status",
                   "Fleet summary: observed vs desired power, outstanding requests, faults."),
    "tokens": Lazy("powerq.clicmds.tokens:tokens",
                   "API bearer tokens (through the API; only their SHA-256 is stored)."),
    # Server side: database, Celery, the whole stack, BMC simulators.
    "agent": Lazy("powerq.agent.cli:agent",
                  "Run this host's lane workers under leases in PostgreSQL (one agent per host)."),
    "beat": Lazy("powerq.tasks.cli:beat",
                 "Run celery beat (exactly one per installation) for the sweeper and monitor."),
    "db": Lazy("powerq.dbcli:db", "Database schema commands."),
    "flower": Lazy("powerq.flower:flower",
                   "Run Celery Flower with basic auth from POWERQ_FLOWER_AUTH (user:password)."),
    "sim-fleet": Lazy("powerq.bmc.simfleet.cli:sim_fleet",
                      "Run COUNT simulated BMCs, one loopback port each: IPMI v2.0 (RMCP+) over "
                      "UDP, or Redfish over HTTPS (--protocol redfish)."),
    "up": Lazy("powerq.up:up",
               "Run the whole stack until Ctrl-C (embedded services when no URLs are set)."),
    "worker": Lazy("powerq.tasks.cli:worker",
                   "Run the worker of a lane (its BMC conversations in a bounded thread pool), "
                   "or the control worker."),
}  # fmt: skip


class PowerqGroup(click.Group):
    """A click group whose subcommands are imported when first used, and that
    turns powerq's errors into one-line messages.

    ``lazy_subcommands`` maps a name to a :class:`Lazy`; commands added with
    :meth:`add_command` work as in any group.
    """

    def __init__(
        self, *args: Any, lazy_subcommands: Mapping[str, Lazy] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand's name, sorted (nothing imported)."""
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The subcommand ``cmd_name`` (its module imported now, once); None if unknown.

        :raises ImportError: its module cannot be imported.
        :raises TypeError: the table names something that is not a click command.
        """
        if cmd_name not in self.commands and cmd_name in self.lazy_subcommands:
            self.add_command(load(self.lazy_subcommands[cmd_name]), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The ``Commands:`` section of ``--help``, from the table for commands not imported."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            # Not imported yet: a stand-in with the table's help, shortened the same way.
            command = self.commands.get(name) or click.Command(
                name, help=self.lazy_subcommands[name].short_help
            )
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; a :class:`PowerqError` becomes a one-line click error
        whose exit code says what kind of failure it was
        (:mod:`powerq.clicmds.exits`).

        :raises click.ClickException: the command failed with a powerq error.
        """
        try:
            return super().invoke(ctx)
        except PowerqError as exc:
            from powerq.clicmds.exits import code_for  # only when something failed

            raise Failure(str(exc), code_for(exc)) from None


class Failure(click.ClickException):
    """A command's one-line failure, with the exit code that says what kind it was."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.__dict__["exit_code"] = code  # click's class attribute, for this one failure


def load(lazy: Lazy) -> click.Command:
    """Import the command ``lazy`` names.

    :raises ImportError: its module cannot be imported.
    :raises TypeError: the attribute is not a click command.
    """
    module_name, attribute = lazy.target.split(":")
    command = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{lazy.target} is not a click command")
    return command


@click.group(
    cls=PowerqGroup,
    lazy_subcommands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="powerq")
def main() -> None:
    """powerq: serialised, durable, verified power actions for bare-metal fleets."""


if __name__ == "__main__":
    main()
