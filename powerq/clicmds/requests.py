"""``powerq requests list|show|cancel``: power requests through the API."""

from __future__ import annotations

from typing import Any

import click

from powerq.clicmds.exits import USAGE, Exit, parse_uuid
from powerq.clicmds.output import (
    Output,
    client,
    key_values,
    output_option,
    request_fields,
    styled,
    table,
)
from powerq.client import ApiError

STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
MAX_LIMIT = 10_000


def _named(request_id: str, error: ApiError) -> Exception:
    """``error`` in words when it says the request does not exist."""
    if error.status == 404:
        return Exit(f"no request {request_id}", USAGE)
    return error


@click.group("requests")
def requests_group() -> None:
    """Power requests (through the API)."""


@requests_group.command("show")
@click.argument("request_id")
@output_option
def show(request_id: str, output: Output) -> None:
    """Show power request REQUEST_ID and how its execution went."""
    wanted = parse_uuid(request_id, "request")
    try:
        found = client().request(wanted)
    except ApiError as exc:
        raise _named(wanted, exc) from None
    output.show(key_values(f"request {found['id']}", request_fields(found)), found)


@requests_group.command("list")
@click.option("--node", help="Only this node's requests.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(STATUSES, case_sensitive=False),
              help="Only requests in this state (repeatable: any of them).")  # fmt: skip
@click.option("--since", metavar="DURATION|TIMESTAMP",
              help="Only requests made since: 90s, 15m, 2h, 1d, or an ISO 8601 time "
                   "with its offset (2026-12-01T10:00:00Z).")  # fmt: skip
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=50, show_default=True,
              help="Most requests to show (newest first).")  # fmt: skip
@output_option
def list_(
    node: str | None, statuses: tuple[str, ...], since: str | None, limit: int, output: Output
) -> None:
    """List power requests, newest first (a bad filter is exit 2)."""
    filters = {"node": node, "status": ",".join(statuses) or None, "since": since}
    items, total = client().requests(limit=limit, **filters)
    grid = table(f"{len(items)} of {total} requests", COLUMNS, [_row(r) for r in items])
    output.show(grid, {"items": items, "total": total})


COLUMNS = ("REQUEST", "NODE", "ACTION", "STATUS", "CREATED", "FINISHED", "BY", "REASON")


def _row(request: dict[str, Any]) -> tuple[Any, ...]:
    return (
        request["id"], request["node"], request["action"], styled(request["status"]),
        request["created_at"], request["finished_at"], request["requested_by"],
        request["error"],
    )  # fmt: skip


@requests_group.command("cancel")
@click.argument("request_id")
@output_option
def cancel(request_id: str, output: Output) -> None:
    """Cancel power request REQUEST_ID if no worker has claimed it yet.

    A running request is never interrupted (exit 1, saying so): nobody could
    say whether its command ran. The node's desired power state goes back to
    what it was before the request.
    """
    wanted = parse_uuid(request_id, "request")
    try:
        cancelled = client().cancel_request(wanted)
    except ApiError as exc:
        raise _named(wanted, exc) from None
    row = (cancelled["id"], cancelled["node"], cancelled["action"], cancelled["status"])
    grid = table(None, ("REQUEST", "NODE", "ACTION", "STATUS"), [row])
    if output.fmt in ("table", "value"):
        click.echo(f"request {row[0]} ({row[2]} on {row[1]}) cancelled")
    else:
        output.show(grid, cancelled)
