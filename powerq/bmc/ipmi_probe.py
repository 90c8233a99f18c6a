"""Is anything answering IPMI at an address? One session-less exchange, bounded.

Before a login, powerq asks the BMC for its channel authentication
capabilities (IPMI v1.5 framing, no session: every BMC answers it, and it is
the first packet ``ipmitool`` and pyghmi send). No answer within
:data:`PROBE_TIMEOUT_S` means unreachable, in well under a second, instead of
a login that retries for seconds while the lane waits behind it.
"""

from __future__ import annotations

import socket
import time

from powerq.bmc.base import BmcTarget, BmcUnreachable

PROBE_TIMEOUT_S = 0.45  # per try; a healthy BMC answers in milliseconds, a slow one late:
# an answer to the first try still counts while waiting on the second
PROBE_TRIES = 2  # a single lost datagram is not a dead BMC


def channel_auth_capabilities_request() -> bytes:
    """Get Channel Authentication Capabilities (App 0x38), IPMI v1.5 framing, no session."""
    rmcp = bytes([0x06, 0x00, 0xFF, 0x07])  # RMCP v1.0, no ack, class IPMI
    session = bytes([0x00]) + bytes(4) + bytes(4)  # auth none, sequence 0, session 0
    header = [0x20, 0x06 << 2]  # BMC responder address; netFn App, LUN 0
    body = [0x81, 0x00, 0x38, 0x8E, 0x04]  # requester, rqSeq, cmd, channel (v2 bit), admin
    message = bytes([*header, _checksum(header), *body, _checksum(body)])
    return rmcp + session + bytes([len(message)]) + message


def _checksum(data: list[int]) -> int:
    return -sum(data) & 0xFF


def ensure_answering(target: BmcTarget) -> None:
    """Return once the BMC answers a probe; it is retried once.

    :raises BmcUnreachable: no answer within ``PROBE_TRIES x PROBE_TIMEOUT_S``
        (or the address cannot be resolved or reached at all).
    """
    packet = channel_auth_capabilities_request()
    started = time.monotonic()
    try:
        family = socket.getaddrinfo(target.address, target.port, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(PROBE_TIMEOUT_S)
            sock.connect((target.address, target.port))
            for _ in range(PROBE_TRIES):
                sock.send(packet)
                try:
                    if sock.recv(512):
                        return
                except (TimeoutError, ConnectionRefusedError):
                    continue
    except OSError as exc:
        raise _unreachable(target, f"cannot reach it ({exc})") from exc
    waited = time.monotonic() - started
    raise _unreachable(target, f"no answer to an IPMI probe within {waited:.1f}s")


def _unreachable(target: BmcTarget, detail: str) -> BmcUnreachable:
    return BmcUnreachable(
        f"IPMI BMC {target.label}: {detail}", address=target.address, port=target.port
    )
