"""POWERQ_DRIVERS: a comma-separated list of enabled BMC drivers (default ipmi,redfish)."""

from __future__ import annotations

import pytest

from powerq.config import load_settings
from powerq.errors import ConfigError
from powerq.states import DriverKind


def test_the_default_is_ipmi_and_redfish_never_sim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POWERQ_DRIVERS", raising=False)
    assert load_settings().drivers == (DriverKind.IPMI, DriverKind.REDFISH)


@pytest.mark.parametrize(
    ("value", "drivers"),
    [
        ("ipmi,sim", (DriverKind.IPMI, DriverKind.SIM)),
        (" sim , IPMI ,", (DriverKind.SIM, DriverKind.IPMI)),
        ("ipmi,ipmi", (DriverKind.IPMI,)),
        ("redfish", (DriverKind.REDFISH,)),
    ],
)
def test_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch, value: str, drivers: tuple[DriverKind, ...]
) -> None:
    monkeypatch.setenv("POWERQ_DRIVERS", value)
    assert load_settings().drivers == drivers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ipmi,telnet", "unknown driver 'telnet' (known: ipmi, redfish, sim)"),
        (" , ", "name at least one driver"),
    ],
)
def test_a_bad_list_stops_the_program_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("POWERQ_DRIVERS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "POWERQ_DRIVERS" in str(caught.value) and expected in str(caught.value)
