"""How the API commands print: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from powerq.client import Client

STYLES = {
    "succeeded": "green",
    "failed": "red",
    "refused": "red",
    "error": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "pending": "cyan",
    "held": "dim",
}
FINISHED = ("succeeded", "failed", "cancelled")


def client() -> Client:
    """The API client for this invocation (settings read now).

    :raises ConfigError: a ``POWERQ_*`` setting is malformed.
    """
    return Client.from_settings()


def out() -> Console:
    """Console on stdout (tables)."""
    return Console(highlight=False)


def err() -> Console:
    """Console on stderr (progress)."""
    return Console(stderr=True, highlight=False)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    click.echo(json.dumps(value, indent=2))


def styled(state: str) -> str:
    """``state`` with its colour markup."""
    style = STYLES.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A plain rich table."""
    result = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*("" if cell is None else str(cell) for cell in row))
    return result


def key_values(title: str, pairs: Iterable[tuple[str, Any]]) -> Table:
    """A two-column table of fields."""
    result = Table(title=title, title_justify="left", show_header=False, box=None)
    result.add_column(style="bold")
    result.add_column(overflow="fold")
    for key, value in pairs:
        result.add_row(key, "" if value is None else str(value))
    return result


def request_fields(request: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The fields of a power request worth showing."""
    keys = (
        "id", "node", "action", "status", "error", "attempt", "next_step", "not_before",
        "dispatched_at", "started_at", "command_sent", "command_sent_at", "finished_at",
        "observed_before", "observed_after", "deadline_s", "requested_by", "batch_id",
        "created_at",
    )  # fmt: skip
    return [(key, request.get(key)) for key in keys]


def progress(description: str) -> Progress:
    """A progress bar on stderr: description, bar, done/total, elapsed."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err(),
        transient=False,
    )
