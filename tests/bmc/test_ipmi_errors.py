"""pyghmi's failures, translated into powerq's three BMC exceptions (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest
from pyghmi.exceptions import IpmiException

from powerq.bmc import ipmi_errors
from powerq.bmc.base import (
    BmcAuthError,
    BmcCommandRejected,
    BmcError,
    BmcProtocolError,
    BmcTarget,
    BmcUnreachable,
)

pytestmark = pytest.mark.ipmi
TARGET = BmcTarget("ipmi", "127.0.0.9", 6230, "operator", "s3cret-value")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("Incorrect password provided", BmcAuthError),
        ("Unauthorized name in RAKP2", BmcAuthError),
        ("Invalid RAKP4 integrity code (wrong Kg?)", BmcAuthError),
        ("Insufficient privilege level while requesting privelege level 4 for b'x'", BmcAuthError),
        ("None", BmcUnreachable),  # pyghmi's login timeout
        ("Session no longer connected", BmcUnreachable),
        ("Unable to transmit to specified address", BmcUnreachable),
        # answered, but not usably: a retry gives the same answer
        ("Unrecognized RMCP code 17", BmcProtocolError),
        ("Invalid cipher suite proposed", BmcProtocolError),
    ],
)
def test_exceptions(message: str, error: type[BmcError]) -> None:
    mapped = ipmi_errors.from_exception(IpmiException(message), TARGET, "login")
    assert type(mapped) is error
    assert "127.0.0.9:6230" in str(mapped) and "login" in str(mapped)
    assert TARGET.password not in str(mapped)


@pytest.mark.parametrize(
    ("response", "error"),
    [
        ({"code": 0, "data": b"\x01"}, None),
        (None, BmcUnreachable),
        ({"code": 0xFFFF, "error": "timeout"}, BmcUnreachable),
        ({"code": 0xC0, "error": "Node busy"}, BmcUnreachable),
        ({"code": 0xD5, "error": "Command not supported in present state"}, BmcCommandRejected),
        ({"code": 0xC1, "error": "Invalid command"}, BmcCommandRejected),
        ({"code": 0xD4, "error": "Insufficient privilege level"}, BmcCommandRejected),
    ],
)
def test_responses(response: dict[str, Any] | None, error: type[BmcError] | None) -> None:
    mapped = ipmi_errors.from_response(response, TARGET, "chassis control")
    assert (type(mapped) if mapped is not None else None) is error
    if mapped is not None:
        assert (mapped.address, mapped.port) == ("127.0.0.9", 6230)
        assert mapped.transient is (error is BmcUnreachable)


def test_a_protocol_mismatch_is_permanent_and_named() -> None:
    """pyghmi's client against a BMC that answered suite 17 with suite 3 fails parsing
    the next login message: that is not 'unreachable' and retrying will not help."""
    import struct

    exc = struct.error("pack expected 32 items for packing (got 20)")
    mapped = ipmi_errors.from_exception(exc, TARGET, "login")
    assert type(mapped) is BmcProtocolError and not mapped.transient
    assert "protocol error" in str(mapped) and "pack expected 32 items" in str(mapped)


@pytest.mark.parametrize(
    ("suite", "reason", "advice"),
    [
        ("17", "it answered with algorithms 1/1/1", "set ipmi_cipher_suite to 3"),
        ("17", "it refused the proposal: RMCP+ status 0x11", "set ipmi_cipher_suite to 3"),
        ("3", "it refused the proposal: RMCP+ status 0x11", "set ipmi_cipher_suite to 17"),
    ],
)
def test_a_cipher_suite_the_bmc_did_not_accept_is_named(
    suite: str, reason: str, advice: str
) -> None:
    from powerq.bmc.pyghmi_patches import suite_refused_message

    exc = IpmiException(suite_refused_message(suite, reason))
    mapped = ipmi_errors.from_exception(exc, TARGET, "login")
    assert type(mapped) is BmcProtocolError and not mapped.transient
    message = str(mapped)
    assert f"the BMC did not accept cipher suite {suite}" in message
    assert f"{advice} or auto" in message and reason in message
    assert "protocol error (" not in message  # said as what it is, not wrapped
    assert "127.0.0.9:6230" in message


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("Invalid RAKP4 integrity code (wrong Kg?)", BmcAuthError),
        ("Unauthorized role or privilege level requested in RAKP2", BmcAuthError),
        ("Invalid role in RAKP2", BmcAuthError),
        ("Incorrect password provided", BmcAuthError),
    ],
)
def test_refused_credentials_are_never_unreachable(message: str, error: type[BmcError]) -> None:
    mapped = ipmi_errors.from_exception(IpmiException(message), TARGET, "login")
    assert type(mapped) is error and not mapped.transient
    assert "credentials refused" in str(mapped)


@pytest.mark.parametrize(
    ("response", "maybe"),
    [
        (None, True),  # no answer
        ({"code": 0xFFFF, "error": "timeout"}, True),
        ({"code": 0xC3, "error": "Timeout while processing command"}, True),
        ({"code": 0xCE, "error": "Response could not be provided"}, True),
        ({"code": 0xC0, "error": "Node busy"}, False),  # busy: it did not run
        ({"code": 0xD5, "error": "Not supported in present state"}, False),
    ],
)
def test_which_failed_answers_leave_a_power_command_maybe_run(
    response: dict[str, Any] | None, maybe: bool
) -> None:
    assert ipmi_errors.maybe_ran(response) is maybe
