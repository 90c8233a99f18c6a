"""The ``powerq`` command line (click). Subcommands live next to what they drive.

Every powerq error ends the command with one clear line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

from typing import Any

import click

from powerq.errors import PowerqError


class PowerqGroup(click.Group):
    """A click group that turns powerq's errors into one-line messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PowerqError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=PowerqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="powerq")
def main() -> None:
    """powerq: serialised, durable, verified power actions for bare-metal fleets."""


def _register() -> None:
    from powerq.api.cli import tokens
    from powerq.bmc.simfleet.cli import sim_fleet
    from powerq.clicmds import CLIENT_COMMANDS
    from powerq.dbcli import db
    from powerq.tasks.cli import beat, worker
    from powerq.up import up

    main.add_command(db)
    main.add_command(worker)
    main.add_command(beat)
    main.add_command(up)
    main.add_command(tokens)
    main.add_command(sim_fleet)
    for command in CLIENT_COMMANDS:
        main.add_command(command)


_register()


if __name__ == "__main__":
    main()
