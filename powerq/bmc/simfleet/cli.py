"""``powerq sim-fleet``: run N simulated IPMI or Redfish BMCs until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from powerq.bmc.simfleet.fleet import FleetConfig
from powerq.bmc.simfleet.server import serve


@click.command("sim-fleet")
@click.option("--count", type=click.IntRange(1, 60000), required=True, help="Number of BMCs.")
@click.option(
    "--base-port",
    type=click.IntRange(1, 65535),
    required=True,
    help="Port of the first BMC (UDP for ipmi, TCP for redfish); the others follow.",
)
@click.option(
    "--protocol",
    type=click.Choice(["ipmi", "redfish"]),
    default="ipmi",
    show_default=True,
    help="ipmi: IPMI v2.0 over LAN (RMCP+); redfish: Redfish over HTTPS, one system per BMC.",
)
@click.option(
    "--http",
    "plain_http",
    is_flag=True,
    help="redfish only: plain HTTP instead of HTTPS with a self-signed certificate.",
)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Loopback address to bind (127.0.0.0/8).",
)
@click.option(
    "--transition",
    type=click.FloatRange(0),
    default=2.0,
    show_default=True,
    help="Seconds a power up/down takes.",
)
@click.option(
    "--soft-delay",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Seconds a soft shutdown takes.",
)
@click.option(
    "--soft-never", is_flag=True, help="Soft shutdown never happens (an OS ignoring ACPI)."
)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the JSON manifest here once every BMC listens.",
)
@click.option(
    "--control-port",
    type=click.IntRange(0, 65535),
    help="Serve the JSON control API on 127.0.0.1:PORT.",
)
@click.option("--username", default="admin", show_default=True)
@click.option("--password", default="password", show_default=True)
@click.option(
    "--state",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON file of the machines' power states: read at start, kept up to date.",
)
@click.option(
    "--stop-on-stdin-eof",
    is_flag=True,
    help="Also stop when stdin closes (a parent holding the pipe died or let go).",
)
def sim_fleet(
    count: int,
    base_port: int,
    protocol: str,
    plain_http: bool,
    address: str,
    transition: float,
    soft_delay: float,
    soft_never: bool,
    manifest: Path | None,
    control_port: int | None,
    username: str,
    password: str,
    stop_on_stdin_eof: bool,
    state: Path | None,
) -> None:
    """Run COUNT simulated BMCs, one loopback port each: IPMI v2.0 (RMCP+) over UDP, or
    Redfish over HTTPS (--protocol redfish)."""
    if not address.startswith("127."):
        raise click.BadParameter("only loopback addresses (127.0.0.0/8)", param_hint="--address")
    config = FleetConfig(
        count,
        base_port,
        address,
        transition,
        None if soft_never else soft_delay,
        username,
        password,
        protocol,
        tls=not plain_http,
    )
    try:
        asyncio.run(
            serve(config, manifest, control_port, stop_on_stdin_eof=stop_on_stdin_eof, state=state)
        )
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
