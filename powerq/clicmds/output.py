"""How the API commands print: tables for people, plain rows for scripts.

Every command that prints rows takes ``-o table|json|csv|value`` (and
``--json``, the same as ``-o json``). Without ``-o``, a terminal gets a
table drawn by rich, and anything else (a pipe, a file, a script's capture)
gets ``value``: one tab-separated line per row, no title, no header, never
folded, so ``powerq nodes list | wc -l`` counts nodes. ``-o table`` off a
terminal is plain aligned text, and rich is not imported at all: it costs
more CPU to import than the rest of ``powerq power NODE query`` together.
Summary lines (``4 succeeded``) go to stdout with a table and to stderr with
``value`` and ``csv``, so the rows stay alone on stdout. The progress bars of
``--wait`` are rich's, on stderr.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import click

from powerq.client import Client

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

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
GAP = "  "  # between the columns of a plain table
FORMATS = ("table", "json", "csv", "value")


def client() -> Client:
    """The API client for this invocation (``POWERQ_*`` read now).

    :raises ConfigError: ``POWERQ_API_URL`` is not an http(s) URL.
    """
    return Client.from_environment()


class Styled(NamedTuple):
    """A cell with a colour (shown on a terminal only)."""

    text: str
    style: str | None

    def __str__(self) -> str:
        return self.text

    def markup(self) -> str:
        """The text in rich markup."""
        return f"[{self.style}]{self.text}[/{self.style}]" if self.style else self.text


class Grid(NamedTuple):
    """A table to print: its title, column headings (``None``: no header) and cells."""

    title: str | None
    columns: Sequence[str] | None
    rows: Sequence[Sequence[Any]]

    def width(self) -> int:
        """How many columns."""
        return len(self.columns) if self.columns is not None else 2


class Printer:
    """Prints grids on ``stream``: rich on a terminal, plain text otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def print(self, grid: Grid) -> None:
        """Print ``grid`` (and its title)."""
        if self.stream.isatty():
            console(self.stream).print(rich_table(grid))
        else:
            click.echo(plain(grid), file=self.stream, nl=False)


def err() -> Console:
    """Console on stderr (progress).

    :raises ImportError: rich is not installed.
    """
    return console(sys.stderr)


def console(stream: IO[str]) -> Console:
    """A rich console on ``stream`` (rich imported now)."""
    from rich.console import Console

    return Console(file=stream, highlight=False)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    click.echo(json.dumps(value, indent=2))


def styled(state: str) -> Styled:
    """``state`` with its colour."""
    return Styled(state, STYLES.get(state))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Grid:
    """A table with a header row."""
    return Grid(title, tuple(columns), [tuple(row) for row in rows])


def key_values(title: str, pairs: Iterable[tuple[str, Any]]) -> Grid:
    """A two-column table of fields (no header)."""
    return Grid(title, None, [tuple(pair) for pair in pairs])


def _cell(value: Any) -> str:
    """A cell as one line of text (``None`` is blank)."""
    return "" if value is None else " ".join(str(value).splitlines())


def plain(grid: Grid) -> str:
    """``grid`` as aligned text: its title, the header, one line per row."""
    lines = [[_cell(value) for value in row] for row in grid.rows]
    if grid.columns is not None:
        lines.insert(0, list(grid.columns))
    widths = [max((len(line[i]) for line in lines if i < len(line)), default=0)
              for i in range(grid.width())]  # fmt: skip
    text = [grid.title] if grid.title else []
    for line in lines:
        text.append(GAP.join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip())
    return "".join(f"{line}\n" for line in text)


def rich_table(grid: Grid) -> Table:
    """``grid`` as a rich table (rich imported now): what a terminal shows."""
    from rich.table import Table

    def cell(value: Any) -> str:
        return value.markup() if isinstance(value, Styled) else "" if value is None else str(value)

    if grid.columns is None:
        result = Table(title=grid.title, title_justify="left", show_header=False, box=None)
        result.add_column(style="bold")
        result.add_column(overflow="fold")
    else:
        result = Table(title=grid.title, title_justify="left", header_style="bold")
        for column in grid.columns:
            result.add_column(column, overflow="fold")
    for row in grid.rows:
        result.add_row(*(cell(value) for value in row))
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
    """A progress bar on stderr: description, bar, done/total, elapsed (rich imported now)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err(),
        transient=False,
    )


def _flat(value: Any) -> str:
    """A cell of ``value``/``csv`` output: one line, tabs turned into spaces."""
    return _cell(value).replace("\t", " ")


def value_rows(grid: Grid) -> str:
    """``grid``'s rows as tab-separated lines (no title, no header)."""
    return "".join("\t".join(_flat(value) for value in row) + "\n" for row in grid.rows)


def csv_rows(grid: Grid) -> str:
    """``grid`` as CSV: a header (``field,value`` for fields), then the rows."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(grid.columns if grid.columns is not None else ("field", "value"))
    writer.writerows([_flat(value) for value in row] for row in grid.rows)
    return buffer.getvalue()


class Output:
    """Prints a command's result in one of :data:`FORMATS` on stdout."""

    def __init__(self, fmt: str, stream: IO[str] | None = None) -> None:
        self.fmt = fmt
        self.stream = sys.stdout if stream is None else stream

    @property
    def json(self) -> bool:
        """Whether the output is JSON (the API's documents, as they came)."""
        return self.fmt == "json"

    def show(self, grid: Grid, document: Any = None) -> None:
        """Print ``grid`` (``document`` as JSON with ``-o json``)."""
        if self.fmt == "json":
            echo_json(document)
        elif self.fmt == "table":
            Printer(self.stream).print(grid)
        else:
            text = csv_rows(grid) if self.fmt == "csv" else value_rows(grid)
            click.echo(text, file=self.stream, nl=False)

    def note(self, line: str) -> None:
        """A summary line: on stdout under a table, on stderr beside rows, none with JSON."""
        if self.fmt == "table":
            click.echo(line, file=self.stream)
        elif self.fmt != "json":
            click.echo(line, err=True)


def resolve_format(fmt: str | None, as_json: bool, stream: IO[str] | None = None) -> str:
    """The format asked for: ``-o``, or ``--json``, else table on a terminal and
    ``value`` anywhere else.

    :raises click.UsageError: ``--json`` with another ``-o``.
    """
    if as_json:
        if fmt not in (None, "json"):
            raise click.UsageError(f"--json is -o json; it cannot go with -o {fmt}")
        return "json"
    if fmt is not None:
        return fmt.lower()
    return "table" if (sys.stdout if stream is None else stream).isatty() else "value"


def output_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command ``-o/--output`` and ``--json``; it receives ``output: Output``."""

    @click.option("-o", "--output", "output_format", type=click.Choice(FORMATS,
                  case_sensitive=False), default=None,
                  help="table (default on a terminal), json, csv, or value (tab-separated "
                       "rows, the default anywhere else).")  # fmt: skip
    @click.option("--json", "as_json", is_flag=True, help="The same as -o json.")
    @functools.wraps(func)
    def wrapper(*args: Any, output_format: str | None, as_json: bool, **kwargs: Any) -> Any:
        return func(*args, output=Output(resolve_format(output_format, as_json)), **kwargs)

    return wrapper
