"""The ``powerq`` command line (click). Subcommands live next to what they drive."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="powerq")
def main() -> None:
    """powerq: serialised, durable, verified power actions for bare-metal fleets."""


def _register() -> None:
    from powerq.tasks.cli import beat, worker

    main.add_command(worker)
    main.add_command(beat)


_register()
