"""A small typed client for the fleet's HTTP control API (stdlib only)."""

from __future__ import annotations

import enum
import json
import urllib.error
import urllib.request
from typing import Any, TypedDict, cast

DEFAULT_TIMEOUT = 30.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


class ControlClientError(RuntimeError):
    """The control API refused a request or could not be reached."""


class BmcStatus(TypedDict):
    """One BMC as ``GET /bmcs`` reports it."""

    name: str
    address: str
    port: int
    power: str
    transitioning: bool
    behaviour: dict[str, float | None]
    faults: dict[str, dict[str, Any]]
    sessions_active: int
    sessions_opened: int
    overlaps: int
    resets: int
    packets_received: int
    packets_dropped: int


class LogRecord(TypedDict):
    """One command-log entry (times are wall-clock ``time.time()`` seconds)."""

    seq: int
    received_at: float
    command: str
    session_id: int | None
    action: str | None
    completion_code: int
    detail: str
    transition_start: float | None
    transition_end: float | None
    overlapped: bool
    superseded: bool


class Overlaps(TypedDict):
    """Overlap counts: the fleet total and every BMC with at least one."""

    total: int
    per_bmc: dict[str, int]


class Keep(enum.Enum):
    """Marker for "leave this setting as it is"."""

    KEEP = "keep"


class ControlClient:
    """Calls ``http://127.0.0.1:PORT`` of a running ``powerq sim-fleet``."""

    def __init__(
        self, port: int, address: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.base_url = f"http://{address}:{port}"
        self.timeout = timeout

    def health(self) -> dict[str, Any]:
        """``{"ok": true, "count": N}``.

        :raises ControlClientError: not reachable or refused.
        """
        return cast(dict[str, Any], self._call("GET", "/health"))

    def bmcs(self) -> list[BmcStatus]:
        """Status of every BMC.

        :raises ControlClientError: not reachable or refused.
        """
        return cast(list[BmcStatus], self._call("GET", "/bmcs"))

    def bmc(self, name: str) -> BmcStatus:
        """Status of one BMC.

        :raises ControlClientError: unknown BMC, not reachable or refused.
        """
        return cast(BmcStatus, self._call("GET", f"/bmcs/{name}"))

    def log(self, name: str) -> list[LogRecord]:
        """The command log of one BMC, oldest first.

        :raises ControlClientError: unknown BMC, not reachable or refused.
        """
        return cast(list[LogRecord], self._call("GET", f"/bmcs/{name}/log")["entries"])

    def set_fault(self, name: str, kind: str, **params: float) -> BmcStatus:
        """Activate a fault, e.g. ``set_fault("sim-0001", "slow", delay=2.0)``.

        :raises ControlClientError: unknown BMC or kind, bad parameter, not reachable.
        """
        return cast(BmcStatus, self._call("POST", f"/bmcs/{name}/fault", {"kind": kind, **params}))

    def clear_fault(self, name: str, kind: str | None = None) -> BmcStatus:
        """Clear one fault kind, or all faults when ``kind`` is None.

        :raises ControlClientError: unknown BMC or kind, not reachable.
        """
        suffix = f"/{kind}" if kind else ""
        return cast(BmcStatus, self._call("DELETE", f"/bmcs/{name}/fault{suffix}"))

    def set_behaviour(
        self,
        name: str,
        *,
        transition: float | None = None,
        soft_delay: float | Keep | None = Keep.KEEP,
    ) -> BmcStatus:
        """Change delays; ``soft_delay=None`` makes soft shutdown never happen.

        :raises ControlClientError: unknown BMC, bad value, not reachable.
        """
        body: dict[str, Any] = {}
        if transition is not None:
            body["transition"] = transition
        if soft_delay is not Keep.KEEP:
            body["soft_delay"] = soft_delay
        return cast(BmcStatus, self._call("POST", f"/bmcs/{name}/behaviour", body))

    def set_power(self, name: str, state: str) -> BmcStatus:
        """Set power "on"/"off" at once, behind any client's back (drift tests).

        :raises ControlClientError: unknown BMC, bad state, not reachable.
        """
        return cast(BmcStatus, self._call("POST", f"/bmcs/{name}/power", {"state": state}))

    def overlaps(self) -> Overlaps:
        """Overlap counts, total and per BMC.

        :raises ControlClientError: not reachable or refused.
        """
        return cast(Overlaps, self._call("GET", "/overlaps"))

    def reset_logs(self) -> None:
        """Clear every log and counter in the fleet.

        :raises ControlClientError: not reachable or refused.
        """
        self._call("POST", "/reset-logs")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ControlClientError(f"{method} {path}: HTTP {exc.code} {detail}") from exc
        except (OSError, ValueError) as exc:
            raise ControlClientError(f"{method} {path} at {self.base_url}: {exc}") from exc
