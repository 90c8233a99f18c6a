"""Run a fleet until told to stop: bind, start the control API, write the manifest, wait."""

from __future__ import annotations

import asyncio
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
) -> None:
    """Serve ``config`` until SIGTERM or SIGINT (or stdin closes, if asked).

    The manifest is written (atomically) only once every BMC is listening.
    ``stop_on_stdin_eof`` lets a parent holding our stdin pipe take the fleet
    down with it, even when the parent dies without cleaning up.

    :raises OSError: a port is taken or the file-descriptor limit is too low.
    """
    raise_fd_limit(config.count + _FDS_PER_PROCESS)
    fleet = Fleet(config)
    await fleet.start()
    control = _start_control(fleet, control_port)
    try:
        if manifest is not None:
            write_manifest(manifest, fleet.manifest())
        _announce(config, control)
        await _until_stopped(stop_on_stdin_eof)
    finally:
        if control is not None:
            control.stop()
        fleet.close()


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
