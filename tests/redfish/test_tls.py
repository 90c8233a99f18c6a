"""TLS: verified by default, a per-node CA bundle, or verification off."""

from __future__ import annotations

import stat

import pytest

from powerq.bmc.base import BmcProtocolError
from powerq.bmc.redfish import RedfishDriver, RedfishSession
from powerq.bmc.redfish_sessions import SessionCache
from powerq.bmc.redfish_tls import ca_bundle_path
from powerq.states import PowerState
from tests.redfish.conftest import target_of
from tests.redfish.emulator import Emulator

Sessions = SessionCache[RedfishSession]


def test_the_node_ca_bundle_verifies_the_bmc(tls_bmc: Emulator, tls_sessions: Sessions) -> None:
    driver = RedfishDriver(target_of(tls_bmc, ca_bundle=tls_bmc.ca_pem), tls_sessions)
    assert driver.get_power_state() in (PowerState.ON, PowerState.OFF)


def test_without_the_ca_bundle_tls_fails_saying_how_to_fix_it(
    tls_bmc: Emulator, tls_sessions: Sessions
) -> None:
    driver = RedfishDriver(target_of(tls_bmc), tls_sessions)

    with pytest.raises(BmcProtocolError) as caught:
        driver.get_power_state()

    message = str(caught.value)
    assert "TLS failed" in message and "ca_bundle" in message and "verify_tls" in message
    assert not caught.value.transient


def test_verification_can_be_turned_off(tls_bmc: Emulator, tls_sessions: Sessions) -> None:
    driver = RedfishDriver(target_of(tls_bmc, verify_tls=False), tls_sessions)
    assert driver.get_power_state() in (PowerState.ON, PowerState.OFF)


def test_a_ca_bundle_is_written_once_to_a_private_file(tmp_path: object) -> None:
    from pathlib import Path

    directory = Path(str(tmp_path)) / "ca"
    first = ca_bundle_path("PEM TEXT", directory)
    again = ca_bundle_path("PEM TEXT", directory)

    assert first == again and first.read_text() == "PEM TEXT"
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert ca_bundle_path("OTHER", directory) != first
