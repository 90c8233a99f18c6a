"""The Redfish personality's pieces without sockets: HTTP parsing, the responder, sessions."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from powerq.bmc.simfleet.cmdlog import CommandLog
from powerq.bmc.simfleet.executions import executed
from powerq.bmc.simfleet.faults import Faults
from powerq.bmc.simfleet.http11 import HttpError, Request, Response, parse_head
from powerq.bmc.simfleet.httpsessions import TokenTable
from powerq.bmc.simfleet.machine import Behaviour, Machine
from powerq.bmc.simfleet.redfishresponder import Credentials, RedfishResponder

SYSTEM = "/redfish/v1/Systems/sim-0001"
BASIC = "Basic " + base64.b64encode(b"admin:password").decode()


class _Timer:
    def __init__(self, delay: float, callback: Callable[[], object]) -> None:
        self.delay, self.callback, self.cancelled = delay, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class _Scheduler:
    """Runs nothing by itself: the test fires the timers."""

    def __init__(self) -> None:
        self.timers: list[_Timer] = []

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Timer:
        timer = _Timer(delay, callback)
        self.timers.append(timer)
        return timer

    def fire(self) -> None:
        timer = self.timers.pop(0)
        if not timer.cancelled:
            timer.callback()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scheduler() -> _Scheduler:
    return _Scheduler()


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def bmc(scheduler: _Scheduler, clock: _Clock) -> RedfishResponder:
    log = CommandLog()
    machine = Machine(scheduler, log, Behaviour(transition=2.0, soft_delay=None))
    return RedfishResponder(
        Credentials("admin", "password"),
        "sim-0001",
        "uuid",
        machine,
        Faults(),
        TokenTable(limit=2, idle_timeout=60.0),
        log,
        clock,
    )


def _request(method: str, path: str, body: object = None, **headers: str) -> Request:
    data = json.dumps(body).encode() if body is not None else b""
    names = {"authorization": BASIC, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return Request(method, path, "HTTP/1.1", {k: v for k, v in names.items() if v}, data)


def _reset(bmc: RedfishResponder, reset_type: str) -> Response:
    return bmc.handle(
        _request("POST", SYSTEM + "/Actions/ComputerSystem.Reset", {"ResetType": reset_type})
    )


def test_parse_head_and_keep_alive() -> None:
    request = parse_head(b"GET /redfish/v1/?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert (request.method, request.path, request.headers["host"]) == ("GET", "/redfish/v1/", "a")
    assert not request.keep_alive
    assert parse_head(b"GET / HTTP/1.1\r\n\r\n").keep_alive
    assert not parse_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    for bad in (b"GET /\r\n\r\n", b"GET / SPDY/3\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"):
        with pytest.raises(HttpError):
            parse_head(bad)


def test_render_has_length_and_odata_version() -> None:
    wire = Response(200, {"a": 1}, {"X-Auth-Token": "t"}).render(keep_alive=False)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 8" in head and b"OData-Version: 4.0" in head
    assert b"Connection: close" in head and b"X-Auth-Token: t" in head
    assert json.loads(body) == {"a": 1}


def test_power_states_follow_the_machine(bmc: RedfishResponder, scheduler: _Scheduler) -> None:
    def power() -> str:
        return str(bmc.handle(_request("GET", SYSTEM)).document["PowerState"])

    assert power() == "Off"
    assert _reset(bmc, "On").status == 204
    assert power() == "PoweringOn"
    scheduler.fire()
    assert power() == "On"
    assert _reset(bmc, "PowerCycle").status == 204
    assert power() == "PoweringOff"
    scheduler.fire()
    assert power() == "PoweringOn"
    scheduler.fire()
    assert power() == "On"
    actions = [e.action for e in bmc.log.entries() if e.command == "chassis_control"]
    assert actions == ["power_up", "power_cycle"]
    assert executed([e.to_json() for e in bmc.log.entries()]) == 2


def test_reset_types_map_to_the_ipmi_log_names(
    bmc: RedfishResponder, scheduler: _Scheduler
) -> None:
    bmc.machine.powered = True
    for reset_type in ("ForceRestart", "GracefulShutdown", "ForceOff"):
        assert _reset(bmc, reset_type).status == 204
    assert _reset(bmc, "Nmi").status == 400
    entries = [e for e in bmc.log.entries() if e.command == "chassis_control"]
    assert [(e.action, e.completion_code) for e in entries] == [
        ("hard_reset", 0),
        ("soft_shutdown", 0),  # soft_delay None: ignored by the OS, still executed
        ("power_down", 0),
        (None, 400),
    ]


def test_refusals_and_flaky(bmc: RedfishResponder) -> None:
    assert _reset(bmc, "ForceRestart").status == 409  # the machine is off
    assert bmc.handle(_request("GET", SYSTEM, authorization="")).status == 401
    assert bmc.handle(_request("GET", "/redfish/v1/Systems/other")).status == 404
    assert bmc.handle(_request("GET", "/redfish/v1/Chassis")).status == 404
    assert bmc.handle(_request("PUT", SYSTEM)).status == 405
    bmc.faults.set("flaky", {"every": 1})
    assert bmc.handle(_request("GET", SYSTEM)).status == 503
    codes = [e.completion_code for e in bmc.log.entries()]
    assert codes == [0xD5, 401, 404, 404, 405, 503]  # the HTTP status outside chassis_control


def test_sessions_are_bounded_and_expire(bmc: RedfishResponder, clock: _Clock) -> None:
    login = {"UserName": "admin", "Password": "password"}
    path = "/redfish/v1/SessionService/Sessions"
    first = bmc.handle(_request("POST", path, login, authorization=""))
    assert first.status == 201
    token = first.headers["X-Auth-Token"]
    assert bmc.handle(_request("GET", SYSTEM, authorization="", x_auth_token=token)).status == 200
    assert bmc.handle(_request("POST", path, login, authorization="")).status == 201
    assert bmc.handle(_request("POST", path, login, authorization="")).status == 503  # limit 2
    clock.now += 61
    assert bmc.handle(_request("GET", SYSTEM, authorization="", x_auth_token=token)).status == 401
    assert bmc.handle(_request("POST", path, login, authorization="")).status == 201
    bmc.faults.set("wrong_credentials", {})
    assert bmc.handle(_request("POST", path, login, authorization="")).status == 401


def test_boot_override_patch(bmc: RedfishResponder) -> None:
    def boot() -> dict[str, object]:
        return dict(bmc.handle(_request("GET", SYSTEM)).document["Boot"])

    assert boot()["BootSourceOverrideEnabled"] == "Disabled"
    assert (
        bmc.handle(_request("PATCH", SYSTEM, {"Boot": {"BootSourceOverrideTarget": "Pxe"}})).status
        == 200
    )
    assert (boot()["BootSourceOverrideTarget"], boot()["BootSourceOverrideEnabled"]) == (
        "Pxe",
        "Once",
    )
    patch = {"Boot": {"BootSourceOverrideEnabled": "Continuous"}}
    assert bmc.handle(_request("PATCH", SYSTEM, patch)).status == 200
    assert (boot()["BootSourceOverrideTarget"], boot()["BootSourceOverrideEnabled"]) == (
        "Pxe",
        "Continuous",
    )
    assert (
        bmc.handle(_request("PATCH", SYSTEM, {"Boot": {"BootSourceOverrideTarget": "Usb"}})).status
        == 400
    )
    assert bmc.handle(_request("PATCH", SYSTEM, {"AssetTag": "x"})).status == 400
    patch = {"Boot": {"BootSourceOverrideEnabled": "Disabled"}}
    assert bmc.handle(_request("PATCH", SYSTEM, patch)).status == 200
    assert boot()["BootSourceOverrideTarget"] == "None"
