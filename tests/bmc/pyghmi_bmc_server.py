"""pyghmi's own BMC server (the engine of VirtualBMC) as a test BMC, one per process.

Run as ``python -m tests.bmc.pyghmi_bmc_server --user U --password P [options]``.
It binds 127.0.0.1 on a free UDP port, prints ``READY <port>``, then one JSON
line per event on stdout:

* ``{"event": "power_off", "t": ..., "state": "off"}`` for every power
  command it *executed* (power_off, power_on, power_cycle, power_reset,
  power_shutdown), with the wall-clock time and the state afterwards;
* ``{"event": "open_session", "t": ...}`` for every RMCP+ Open Session
  Request it answered, and ``{"event": "rakp1", "role": N, "t": ...}`` for
  every RAKP 1 (N is the privilege level the client asked for).

It stops when its stdin reaches end of file (the test process went away)
or after ``--max-seconds``. One BMC per process: pyghmi's server sessions
are class-level state, and two servers in one process share them.

pyghmi's server is used as it is: it answers every Open Session with cipher
suite 3 and no error, whatever was proposed, which is the behaviour powerq's
IPMI driver has to negotiate with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as serversession

CC_NOT_IN_PRESENT_STATE = 0xD5
_out_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout, flushed at once (the test reads it live)."""
    line = json.dumps({"event": event, "t": time.time(), **fields})
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class RecordingBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    """Power state in memory; every executed power command is reported."""

    def __init__(self, authdata: dict[str, str], *, state: str, delay: float) -> None:
        super().__init__(authdata, port=0, address="127.0.0.1")
        # pyghmi routes a client's packets by the port the server socket is bound to
        self.port = int(self.serversocket.getsockname()[1])
        self.state = state
        self.delay = delay

    def handle_raw_request(self, request: dict[str, Any], session: Any) -> Any:
        if self.delay:
            time.sleep(self.delay)  # the answer is late; the command still runs once
        return super().handle_raw_request(request, session)

    def get_power_state(self) -> str:
        return self.state

    def power_off(self) -> int:
        return self._set("power_off", "off")

    def power_on(self) -> int:
        return self._set("power_on", "on")

    def power_shutdown(self) -> int:
        return self._set("power_shutdown", "off")

    def power_cycle(self) -> int:
        return self._while_on("power_cycle")

    def power_reset(self) -> int:
        return self._while_on("power_reset")

    def _set(self, event: str, state: str) -> int:
        self.state = state
        emit(event, state=state)
        return 0

    def _while_on(self, event: str) -> int:
        if self.state != "on":
            return CC_NOT_IN_PRESENT_STATE
        emit(event, state=self.state)
        return 0


def _record_handshake() -> None:
    """Report Open Session and RAKP 1 as the server answers them (nothing else changes)."""
    session_class = serversession.ServerSession
    open_response = session_class.create_open_session_response
    got_rakp1 = session_class._got_rakp1

    def create_open_session_response(self: Any, request: Any) -> Any:
        emit("open_session")
        return open_response(self, request)

    def rakp1(self: Any, data: Any) -> Any:
        emit("rakp1", role=int(data[24]) & 0x0F)
        return got_rakp1(self, data)

    session_class.create_open_session_response = create_open_session_response
    session_class._got_rakp1 = rakp1


def _stop_on_stdin_eof() -> None:
    sys.stdin.read()
    os._exit(0)


def _stop_after(seconds: float) -> None:
    time.sleep(seconds)
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--kg", help="BMC key as text")
    parser.add_argument("--kg-hex", help="BMC key as hex digits")
    parser.add_argument("--state", choices=["on", "off"], default="off")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    threading.Thread(target=_stop_on_stdin_eof, daemon=True).start()
    threading.Thread(target=_stop_after, args=(args.max_seconds,), daemon=True).start()
    _record_handshake()
    bmc = RecordingBmc({args.user: args.password}, state=args.state, delay=args.delay)
    if args.kg is not None:
        bmc.set_kg(args.kg)
    elif args.kg_hex is not None:
        bmc.set_kg(bytes.fromhex(args.kg_hex))
    emit("ready", port=bmc.port)
    bmc.listen()


if __name__ == "__main__":
    main()
