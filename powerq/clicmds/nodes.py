"""``powerq nodes add|set|delete|maintenance|list|show|import|validate``.

Commands that change several nodes check every name first: an unknown one
changes nothing (exit 2). Then each node is changed on its own; one the API
refuses (e.g. a delete while a request is outstanding) is reported in its row
and the others go on (exit 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from powerq.clicmds.output import (
    Output,
    client,
    key_values,
    output_option,
    request_fields,
    styled,
    table,
)
from powerq.clicmds.power import check_names
from powerq.client import ApiError, Client
from powerq.errors import PowerqError
from powerq.states import DriverKind, PowerState


@click.group("nodes")
def nodes() -> None:
    """Machines and their BMCs (through the API)."""


@nodes.command("add")
@click.argument("name")
@click.option("--address", required=True, help="BMC host name or IP address.")
@click.option("--username", required=True, help="BMC user.")
@click.option(
    "--password",
    prompt="BMC password",
    hide_input=True,
    envvar="POWERQ_BMC_PASSWORD",
    help="BMC password (prompted when not given; or POWERQ_BMC_PASSWORD).",
)
@click.option(
    "--driver",
    type=click.Choice([kind.value for kind in DriverKind]),
    default=DriverKind.IPMI.value,
    show_default=True,
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="default: 623 ipmi, 443 redfish"
)
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@output_option
def add(
    name: str,
    address: str,
    username: str,
    password: str,
    driver: str,
    port: int | None,
    tags: tuple[str, ...],
    output: Output,
) -> None:
    """Register node NAME (admin token)."""
    body: dict[str, Any] = {
        "name": name,
        "driver": driver,
        "address": address,
        "username": username,
        "password": password,
        "tags": list(tags),
    }
    if port is not None:  # else the API's default for the driver
        body["port"] = port
    node = client().add_node(body)
    if output.fmt in ("table", "value"):
        click.echo(f"node {node['name']} added ({node['address']}:{node['port']}, {driver})")
    else:
        output.show(key_values(f"node {node['name']}", _fields(node)), node)


def _outstanding(node: dict[str, Any]) -> str:
    request = node.get("outstanding_request")
    return f"{request['action']} ({request['status']})" if request else ""


def maintenance_note(node: dict[str, Any]) -> str:
    """Why, by whom and since when a node is in maintenance ("" when it is not)."""
    if not node.get("maintenance"):
        return ""
    reason = node.get("maintenance_reason") or "no reason given"
    by = node.get("maintenance_by") or "?"
    return f"{reason} (by {by} since {node.get('maintenance_since') or '?'})"


@nodes.command("list")
@click.option("--tag", "tags", multiple=True, help="Only nodes with this tag (repeatable: all).")
@click.option("--power-state", type=click.Choice([state.value for state in PowerState],
              case_sensitive=False))  # fmt: skip
@click.option("--fault", is_flag=True, help="Only nodes in power_fault.")
@click.option("--maintenance/--no-maintenance", default=None,
              help="Only nodes in (or out of) maintenance.")  # fmt: skip
@output_option
def list_(
    tags: tuple[str, ...],
    power_state: str | None,
    fault: bool,
    maintenance: bool | None,
    output: Output,
) -> None:
    """List nodes with their observed and desired power, and maintenance."""
    found = client().nodes(
        tag=",".join(tags) or None,
        power_state=power_state,
        power_fault="true" if fault else None,
        maintenance=None if maintenance is None else str(maintenance).lower(),
    )
    rows = [
        (
            n["name"],
            n["driver"],
            f"{n['address']}:{n['port']}",
            n["power_state"],
            n["desired_power_state"] or "-",
            _outstanding(n),
            "FAULT" if n["power_fault"] else "",
            maintenance_note(n),
            ",".join(n["tags"]),
        )
        for n in found
    ]
    columns = ("NODE", "DRIVER", "BMC", "POWER", "DESIRED", "OUTSTANDING", "FAULT",
               "MAINTENANCE", "TAGS")  # fmt: skip
    output.show(table(f"{len(rows)} nodes", columns, rows), found)


_SHOWN = (
    "name", "driver", "address", "port", "username", "power_state", "power_state_at",
    "desired_power_state", "desired_power_state_at", "maintenance", "maintenance_reason",
    "maintenance_by", "maintenance_since", "power_fault", "power_fault_reason", "last_error",
    "last_checked_at", "tags",
)  # fmt: skip


def _fields(node: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(key, node.get(key)) for key in _SHOWN]


@nodes.command("show")
@click.argument("name")
@output_option
def show(name: str, output: Output) -> None:
    """Show node NAME: BMC, power, maintenance (who, why, since), faults, outstanding request."""
    node = client().node(name)
    output.show(key_values(f"node {node['name']}", _fields(node)), node)
    if node.get("outstanding_request") and output.fmt == "table":
        output.show(key_values("outstanding request", request_fields(node["outstanding_request"])))


@nodes.command("import")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--update", is_flag=True, help="Overwrite nodes that exist (default: skip them).")
@output_option
def import_(manifest: Path, update: bool, output: Output) -> None:
    """Import nodes from MANIFEST: a JSON list (or the sim fleet's manifest) or CSV
    (name,driver,address,port,username,password[,tags]). Exits 1 if a row was invalid."""
    data = manifest.read_bytes()
    is_csv = manifest.suffix.lower() == ".csv" or data.lstrip(b"\xef\xbb\xbf").startswith(b"name,")
    report = client().import_nodes(data, csv=is_csv, update=update)
    rows = [(r["row"], r["name"], r["outcome"], r["detail"]) for r in report["rows"]]
    summary = ", ".join(f"{count} {kind}" for kind, count in report["summary"].items())
    output.note(f"import: {summary}")
    output.show(table(None, ("ROW", "NODE", "OUTCOME", "DETAIL"), rows), report)
    invalid = report["summary"].get("invalid", 0)
    if invalid:
        raise PowerqError(f"{invalid} row(s) of {manifest} were invalid and not imported")


@nodes.command("validate")
@click.argument("names", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every node.")
@click.option("--timeout", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Give up waiting after this many seconds.")  # fmt: skip
@output_option
def validate(names: tuple[str, ...], every: bool, timeout: float, output: Output) -> None:
    """Check each node's BMC: log in through its lane and read the power state.

    Prints what is wrong in one line per node (unreachable, authentication
    refused, cipher suite, TLS, no such system); exits 1 if any node failed.
    """
    from powerq.clicmds.power import run_requests

    if every == bool(names):
        raise click.UsageError("give node names, or --all")
    api = client()
    if every:
        names = tuple(node["name"] for node in api.nodes())
    run_requests(api, names, api.validate, True, timeout, output)


@nodes.command("set")
@click.argument("name")
@click.option("--address", help="BMC host name or IP address.")
@click.option("--port", type=click.IntRange(1, 65535), help="BMC port.")
@click.option("--username", help="BMC user.")
@click.option("--password-stdin", is_flag=True,
              help="Read the new BMC password from the first line of stdin.")  # fmt: skip
@click.option("--tags", help="Replace the tags: comma-separated (an empty string clears them).")
@output_option
def set_(
    name: str,
    address: str | None,
    port: int | None,
    username: str | None,
    password_stdin: bool,
    tags: str | None,
    output: Output,
) -> None:
    """Change node NAME's BMC address, port, credentials or tags (admin token).

    Fields not given stay as they are; nothing changes when any part is refused.
    """
    body: dict[str, Any] = {"address": address, "port": port, "username": username}
    body = {key: value for key, value in body.items() if value is not None}
    if password_stdin:
        body["password"] = _password_from(sys.stdin)
    if tags is not None:
        body["tags"] = [tag.strip() for tag in tags.split(",") if tag.strip()]
    if not body:
        raise click.UsageError("nothing to change: give --address, --port, --username, "
                               "--password-stdin or --tags")  # fmt: skip
    node = client().change_node(name, body)
    if output.fmt in ("table", "value"):
        click.echo(f"node {node['name']} changed: {', '.join(sorted(body))}")
    else:
        output.show(key_values(f"node {node['name']}", _fields(node)), node)


def _password_from(stream: Any) -> str:
    """The first line of ``stream`` (without its line end).

    :raises click.UsageError: it is empty.
    """
    password = stream.readline().rstrip("\r\n")
    if not password:
        raise click.UsageError("--password-stdin: stdin held no password")
    return str(password)


def _each(
    api: Client, names: tuple[str, ...], change: Callable[[str], str], output: Output
) -> None:
    """Check every name, then ``change`` each node; print a row per node.

    :raises Exit: a name is unknown (exit 2; nothing changed).
    :raises PowerqError: the API refused some nodes (exit 1; the others changed).
    """
    check_names(api, names)
    rows = []
    for name in dict.fromkeys(names):
        try:
            rows.append((name, styled("succeeded"), change(name)))
        except ApiError as exc:
            if exc.status not in (404, 409, 422):
                raise
            rows.append((name, styled("failed"), str(exc)))
    document = [{"node": n, "result": str(r), "detail": d} for n, r, d in rows]
    output.show(table(None, ("NODE", "RESULT", "DETAIL"), rows), document)
    failed = sum(str(row[1]) == "failed" for row in rows)
    if failed:
        raise PowerqError(f"{failed} of {len(rows)} node(s) were not changed")


@nodes.command("delete")
@click.argument("names", nargs=-1, required=True)
@output_option
def delete(names: tuple[str, ...], output: Output) -> None:
    """Delete each node NAME (admin token); its requests and events are kept.

    A node with a request outstanding is refused (exit 1) and stays.
    """
    api = client()

    def remove(name: str) -> str:
        api.delete_node(name)
        return "deleted"

    _each(api, names, remove, output)


@nodes.command("maintenance")
@click.argument("state", type=click.Choice(["on", "off"], case_sensitive=False))
@click.argument("names", nargs=-1, required=True)
@click.option("--reason", help="Why (with on); shown with who and since when.")
@output_option
def maintenance(state: str, names: tuple[str, ...], reason: str | None, output: Output) -> None:
    """Put each node NAME in maintenance (on) or take it out (off) (admin token).

    A node in maintenance is left out of selector batches (--all, --tag,
    --glob) unless --include-maintenance; single requests on it still run, and
    the sweeper never corrects its power. `on` for a node already in
    maintenance changes only the reason.
    """
    if state == "off" and reason is not None:
        raise click.UsageError("--reason goes with on: taking a node out clears its reason")
    body: dict[str, Any] = {"maintenance": state == "on"}
    if reason is not None:
        body["maintenance_reason"] = reason
    api = client()

    def change(name: str) -> str:
        node = api.change_node(name, body)
        return maintenance_note(node) or "not in maintenance"

    _each(api, names, change, output)
