"""Finding free loopback ports for a fleet (UDP range) and its control API (TCP)."""

from __future__ import annotations

import random
import socket

# Below Linux's ephemeral range (32768-60999), so client sockets never take them later.
DEFAULT_LOW, DEFAULT_HIGH = 10000, 32700


def free_udp_range(
    count: int,
    address: str = "127.0.0.1",
    *,
    low: int = DEFAULT_LOW,
    high: int = DEFAULT_HIGH,
    attempts: int = 40,
) -> int:
    """The first port of ``count`` contiguous UDP ports free on ``address`` right now.

    Another process may take a port before the fleet binds it: callers retry
    with a fresh range when the fleet fails to start.

    :raises OSError: no free range found in ``attempts`` random tries.
    """
    if count > high - low:
        raise OSError(f"{count} ports do not fit between {low} and {high}")
    for _ in range(attempts):
        base = random.randrange(low, high - count + 1)
        if _udp_range_free(address, base, count):
            return base
    raise OSError(f"no {count} contiguous free UDP ports found on {address}")


def free_tcp_range(
    count: int,
    address: str = "127.0.0.1",
    *,
    low: int = DEFAULT_LOW,
    high: int = DEFAULT_HIGH,
    attempts: int = 40,
) -> int:
    """The first port of ``count`` contiguous TCP ports free on ``address`` right now
    (for a Redfish fleet; the same caveat as :func:`free_udp_range`).

    :raises OSError: no free range found in ``attempts`` random tries.
    """
    if count > high - low:
        raise OSError(f"{count} ports do not fit between {low} and {high}")
    for _ in range(attempts):
        base = random.randrange(low, high - count + 1)
        if all(_tcp_port_free(address, port) for port in range(base, base + count)):
            return base
    raise OSError(f"no {count} contiguous free TCP ports found on {address}")


def free_tcp_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` right now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _udp_range_free(address: str, base: int, count: int) -> bool:
    return all(_udp_port_free(address, port) for port in range(base, base + count))


def _udp_port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _tcp_port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the fleet binds
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True
