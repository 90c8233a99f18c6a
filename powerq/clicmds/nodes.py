"""``powerq nodes add|list|show|import``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from powerq.clicmds.output import client, echo_json, key_values, out, request_fields, table
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
@click.option("--json", "as_json", is_flag=True, help="Print the node as JSON.")
def add(
    name: str,
    address: str,
    username: str,
    password: str,
    driver: str,
    port: int | None,
    tags: tuple[str, ...],
    as_json: bool,
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
    if as_json:
        echo_json(node)
    else:
        click.echo(f"node {node['name']} added ({node['address']}:{node['port']}, {driver})")


def _outstanding(node: dict[str, Any]) -> str:
    request = node.get("outstanding_request")
    return f"{request['action']} ({request['status']})" if request else ""


@nodes.command("list")
@click.option("--tag", "tags", multiple=True, help="Only nodes with this tag (repeatable: all).")
@click.option("--power-state", type=click.Choice([state.value for state in PowerState]))
@click.option("--fault", is_flag=True, help="Only nodes in power_fault.")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON.")
def list_(tags: tuple[str, ...], power_state: str | None, fault: bool, as_json: bool) -> None:
    """List nodes with their observed and desired power."""
    found = client().nodes(
        tag=",".join(tags) or None, power_state=power_state, power_fault="true" if fault else None
    )
    if as_json:
        echo_json(found)
        return
    rows = [
        (
            n["name"],
            n["driver"],
            f"{n['address']}:{n['port']}",
            n["power_state"],
            n["desired_power_state"] or "-",
            _outstanding(n),
            "FAULT" if n["power_fault"] else "",
            ",".join(n["tags"]),
        )
        for n in found
    ]
    columns = ("NODE", "DRIVER", "BMC", "POWER", "DESIRED", "OUTSTANDING", "FAULT", "TAGS")
    out().print(table(f"{len(rows)} nodes", columns, rows))


@nodes.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the node as JSON.")
def show(name: str, as_json: bool) -> None:
    """Show node NAME: BMC, observed and desired power, faults, outstanding request."""
    node = client().node(name)
    if as_json:
        echo_json(node)
        return
    keys = (
        "name", "driver", "address", "port", "username", "power_state", "power_state_at",
        "desired_power_state", "desired_power_state_at", "maintenance", "power_fault",
        "power_fault_reason", "last_error", "last_checked_at", "tags",
    )  # fmt: skip
    console = out()
    console.print(key_values(f"node {node['name']}", [(key, node.get(key)) for key in keys]))
    if node.get("outstanding_request"):
        console.print(
            key_values("outstanding request", request_fields(node["outstanding_request"]))
        )


@nodes.command("import")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--update", is_flag=True, help="Overwrite nodes that exist (default: skip them).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def import_(manifest: Path, update: bool, as_json: bool) -> None:
    """Import nodes from MANIFEST: a JSON list (or the sim fleet's manifest) or CSV
    (name,driver,address,port,username,password[,tags]). Exits 1 if a row was invalid."""
    data = manifest.read_bytes()
    is_csv = manifest.suffix.lower() == ".csv" or data.lstrip(b"\xef\xbb\xbf").startswith(b"name,")
    report = client().import_nodes(data, csv=is_csv, update=update)
    if as_json:
        echo_json(report)
    else:
        rows = [(r["row"], r["name"], r["outcome"], r["detail"]) for r in report["rows"]]
        summary = ", ".join(f"{count} {kind}" for kind, count in report["summary"].items())
        out().print(table(f"import: {summary}", ("ROW", "NODE", "OUTCOME", "DETAIL"), rows))
    invalid = report["summary"].get("invalid", 0)
    if invalid:
        raise PowerqError(f"{invalid} row(s) of {manifest} were invalid and not imported")


@nodes.command("validate")
@click.argument("names", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every node.")
@click.option("--timeout", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Give up waiting after this many seconds.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def validate(names: tuple[str, ...], every: bool, timeout: float, as_json: bool) -> None:
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
    run_requests(api, names, api.validate, True, timeout, as_json)
