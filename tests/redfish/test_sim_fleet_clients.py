"""The sim fleet's Redfish personality as independent clients see it: curl and plain
``requests`` (no sushy, no powerq driver), and a 200-BMC fleet starting and answering.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from powerq.bmc.simfleet.executions import executed
from powerq.bmc.simfleet.launcher import SimFleetProcess

AUTH = ("admin", "password")
RESET = "/Actions/ComputerSystem.Reset"


@pytest.fixture(scope="module")
def fleet() -> Iterator[SimFleetProcess]:
    with SimFleetProcess(4, protocol="redfish", transition=0.2, soft_delay=0.3) as running:
        yield running


@pytest.fixture(scope="module")
def ca_file(fleet: SimFleetProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("redfish-sim-ca") / "ca.pem"
    path.write_text(fleet.manifest[0]["ca_bundle"])
    return str(path)


def _url(row: dict[str, Any], path: str = "") -> str:
    return f"https://{row['address']}:{row['port']}{path}"


def _get(row: dict[str, Any], path: str, ca: str, **kwargs: Any) -> requests.Response:
    return requests.get(_url(row, path), verify=ca, timeout=10, **kwargs)


def test_the_service_root_is_open_and_points_at_systems_and_sessions(
    fleet: SimFleetProcess, ca_file: str
) -> None:
    root = _get(fleet.manifest[0], "/redfish/v1/", ca_file)

    assert root.status_code == 200
    assert root.headers["OData-Version"] == "4.0"
    body = root.json()
    assert body["@odata.id"] == "/redfish/v1/"
    assert body["Systems"] == {"@odata.id": "/redfish/v1/Systems"}
    assert body["Links"]["Sessions"] == {"@odata.id": "/redfish/v1/SessionService/Sessions"}


def test_status_codes(fleet: SimFleetProcess, ca_file: str) -> None:
    row = fleet.manifest[0]
    assert _get(row, "/redfish/v1/Systems", ca_file).status_code == 401
    assert _get(row, "/redfish/v1/Systems", ca_file, auth=("admin", "nope")).status_code == 401
    assert _get(row, "/redfish/v1/Nothing", ca_file, auth=AUTH).status_code == 404
    assert _get(row, "/redfish/v1/Systems/other", ca_file, auth=AUTH).status_code == 404
    wrong_method = requests.delete(_url(row, row["system"]), verify=ca_file, auth=AUTH, timeout=10)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "GET, PATCH"
    bad_type = requests.post(
        _url(row, row["system"] + RESET),
        json={"ResetType": "Nmi"},
        verify=ca_file,
        auth=AUTH,
        timeout=10,
    )
    assert bad_type.status_code == 400
    assert "ResetType" in bad_type.json()["error"]["@Message.ExtendedInfo"][0]["Message"]


def test_a_session_logs_in_reads_and_logs_out(fleet: SimFleetProcess, ca_file: str) -> None:
    row = fleet.manifest[1]
    login = requests.post(
        _url(row, "/redfish/v1/SessionService/Sessions"),
        json={"UserName": "admin", "Password": "password"},
        verify=ca_file,
        timeout=10,
    )
    assert login.status_code == 201
    token, location = login.headers["X-Auth-Token"], login.headers["Location"]
    headers = {"X-Auth-Token": token}

    systems = _get(row, "/redfish/v1/Systems", ca_file, headers=headers).json()
    assert systems["Members"] == [{"@odata.id": row["system"]}]
    system = _get(row, row["system"], ca_file, headers=headers).json()
    assert system["PowerState"] in ("On", "Off")
    assert system["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"] == [
        "On",
        "ForceOff",
        "GracefulShutdown",
        "ForceRestart",
        "PowerCycle",
    ]

    logout = requests.delete(_url(row, location), headers=headers, verify=ca_file, timeout=10)
    assert logout.status_code == 204
    assert _get(row, row["system"], ca_file, headers=headers).status_code == 401
    assert fleet.control.bmc(row["name"])["sessions_opened"] == 1


def test_boot_override_is_patched_and_read(fleet: SimFleetProcess, ca_file: str) -> None:
    row = fleet.manifest[2]
    patch = requests.patch(
        _url(row, row["system"]),
        json={"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}},
        verify=ca_file,
        auth=AUTH,
        timeout=10,
    )

    assert patch.status_code == 200
    assert patch.json()["Boot"]["BootSourceOverrideTarget"] == "Cd"
    assert fleet.control.bmc(row["name"])["boot"] == {"device": "cdrom", "persistent": False}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_powers_on_and_the_log_counts_one_execution(
    fleet: SimFleetProcess, ca_file: str
) -> None:
    row = fleet.manifest[3]
    fleet.control.reset_logs()
    command = [
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca_file,
        "-u", "admin:password", "-H", "Content-Type: application/json",
        "-d", json.dumps({"ResetType": "On"}), _url(row, row["system"] + RESET),
    ]  # fmt: skip

    answer = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)

    assert answer.stdout == "204"
    deadline = time.monotonic() + 10
    while fleet.control.bmc(row["name"])["power"] != "on" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fleet.control.bmc(row["name"])["power"] == "on"
    log = fleet.control.log(row["name"])
    assert executed(log) == 1
    assert [e["action"] for e in log if e["command"] == "chassis_control"] == ["power_up"]
    assert fleet.control.overlaps()["total"] == 0


def test_plain_http_when_asked(tmp_path: Path) -> None:
    with SimFleetProcess(1, protocol="redfish", tls=False, workdir=tmp_path) as plain:
        row = plain.manifest[0]
        assert row["scheme"] == "http" and row["ca_bundle"] is None
        url = f"http://{row['address']}:{row['port']}{row['system']}"
        assert requests.get(url, auth=AUTH, timeout=10).json()["PowerState"] == "Off"


def test_a_fleet_of_200_starts_and_every_bmc_answers(tmp_path: Path) -> None:
    started = time.monotonic()
    with SimFleetProcess(200, protocol="redfish", start_timeout=60) as big:
        ca = tmp_path / "ca.pem"
        ca.write_text(big.manifest[0]["ca_bundle"])
        assert len({(r["address"], r["port"], r["system"]) for r in big.manifest}) == 200

        def power_state(row: dict[str, Any]) -> str:
            url = _url(row, row["system"])
            return str(
                requests.get(url, auth=AUTH, verify=str(ca), timeout=30).json()["PowerState"]
            )

        with ThreadPoolExecutor(8) as pool:
            states = list(pool.map(power_state, big.manifest))
        assert states == ["Off"] * 200
        assert big.control.health() == {"ok": True, "count": 200}
    assert time.monotonic() - started < 120
