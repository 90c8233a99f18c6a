"""Run a fleet until told to stop: bind, start the control API, write the manifest, wait."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from powerq.bmc.simfleet.control import ControlApi
from powerq.bmc.simfleet.fleet import Fleet, FleetConfig, raise_fd_limit, write_manifest
from powerq.bmc.simfleet.httpapi import ControlServer

_FDS_PER_PROCESS = 64  # stdio, control API threads, epoll, pipes: headroom beyond one per BMC


async def serve(
    config: FleetConfig,
    manifest: Path | None,
    control_port: int | None,
    *,
    stop_on_stdin_eof: bool = False,
    state: Path | None = None,
) -> None:
    """Serve ``config`` until SIGTERM or SIGINT (or stdin closes, if asked).

    The manifest is written (atomically) only once every BMC is listening.
    ``stop_on_stdin_eof`` lets a parent holding our stdin pipe take the fleet
    down with it, even when the parent dies without cleaning up. ``state`` is
    a JSON file of each BMC's power state: read at start (a restarted fleet
    keeps its machines' states), written every second while it changes and
    at the end.

    :raises OSError: a port is taken or the file-descriptor limit is too low.
    """
    raise_fd_limit(config.count + _FDS_PER_PROCESS)
    fleet = Fleet(config)
    await fleet.start()
    if state is not None:
        load_power_states(fleet, state)
    saver = asyncio.create_task(_keep_saving(fleet, state)) if state is not None else None
    control = _start_control(fleet, control_port)
    try:
        if manifest is not None:
            write_manifest(manifest, fleet.manifest())
        _announce(config, control)
        await _until_stopped(stop_on_stdin_eof)
    finally:
        if saver is not None:
            saver.cancel()
            save_power_states(fleet, state)  # type: ignore[arg-type]
        if control is not None:
            control.stop()
        fleet.close()


def power_states(fleet: Fleet) -> dict[str, bool]:
    """Each BMC's machine power state (where a transition is heading, if one is on)."""
    states = {}
    for name, bmc in fleet.bmcs.items():
        heading = bmc.machine.heading
        states[name] = bmc.machine.powered if heading is None else heading
    return states


def load_power_states(fleet: Fleet, path: Path) -> None:
    """Set the machines' power states from ``path`` (missing or unreadable: as they are)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for name, powered in saved.items():
        if name in fleet.bmcs and isinstance(powered, bool):
            fleet.bmcs[name].machine.powered = powered


def save_power_states(fleet: Fleet, path: Path) -> None:
    """Write the machines' power states to ``path`` (atomically)."""
    write_manifest(path, dict(power_states(fleet)))


async def _keep_saving(fleet: Fleet, path: Path) -> None:
    last: dict[str, bool] = {}
    while True:
        current = power_states(fleet)
        if current != last:
            save_power_states(fleet, path)
            last = current
        await asyncio.sleep(1.0)


def _start_control(fleet: Fleet, port: int | None) -> ControlServer | None:
    if port is None:
        return None
    control = ControlServer(ControlApi(fleet), asyncio.get_running_loop(), port)
    control.start()
    return control


def _announce(config: FleetConfig, control: ControlServer | None) -> None:
    last = config.base_port + config.count - 1
    where = f", control API on 127.0.0.1:{control.port}" if control is not None else ""
    kind = (
        "IPMI" if config.protocol == "ipmi" else ("Redfish " + ("HTTPS" if config.tls else "HTTP"))
    )
    print(
        f"sim-fleet: {config.count} {kind} BMCs on {config.address}:{config.base_port}-{last}"
        f"{where}",
        file=sys.stderr,
        flush=True,
    )


async def _until_stopped(watch_stdin: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if watch_stdin:
        loop.add_reader(sys.stdin.fileno(), _stop_at_eof, sys.stdin.fileno(), stop)
    await stop.wait()


def _stop_at_eof(fd: int, stop: asyncio.Event) -> None:
    if not os.read(fd, 4096):  # b"": the parent closed the pipe or died
        stop.set()
