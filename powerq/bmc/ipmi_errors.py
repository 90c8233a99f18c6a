"""Mapping pyghmi's failures to powerq's BMC exceptions (the only place that reads them).

pyghmi reports most failures as ``IpmiException`` with an English message, or
as a response dict with an IPMI completion code; both are translated here
into :class:`BmcUnreachable`, :class:`BmcAuthError`, :class:`BmcProtocolError`
or :class:`BmcCommandRejected` with a message naming the BMC, the user and
what was being attempted.
"""

from __future__ import annotations

from typing import Any

from powerq.bmc.base import (
    BmcAuthError,
    BmcCommandRejected,
    BmcError,
    BmcProtocolError,
    BmcTarget,
    BmcUnreachable,
)

# Completion codes meaning "not now" rather than "never": retrying may help.
TRANSIENT_CODES: dict[int, str] = {
    0xC0: "node busy",
    0xC3: "timeout while processing the command",
    0xCE: "response could not be provided",
    0xD2: "BMC initialisation in progress",
}
PYGHMI_TIMEOUT_CODE = 0xFFFF

# pyghmi login messages that mean the credentials (or privilege) were refused.
_AUTH_MARKERS = (
    "incorrect password",
    "unauthorized name",
    "unauthorized role",
    "invalid role",
    "unauthorized guid",
    "invalid integrity check value",
    "wrong kg",
    "privelege level",  # sic, pyghmi's spelling
    "privilege level",
    "invalid username",
)


# pyghmi messages that mean "no (usable) answer in time": worth a later retry.
# Anything else it raises is a protocol mismatch that a retry repeats.
_SILENCE_MARKERS = (
    "timed out",
    "timeout",
    "no longer connected",
    "unable to transmit",
    "unable to establish",
    "logout",
)


def _error(kind: type[BmcError], target: BmcTarget, what: str, detail: str) -> BmcError:
    message = f"IPMI {what} at {target.label} as user {target.username!r}: {detail}"
    return kind(message, address=target.address, port=target.port)


# A login that failed on the cipher suite (see pyghmi_patches.suite_refused_message).
_SUITE_MARKER = "did not accept cipher suite"


def from_exception(exc: BaseException, target: BmcTarget, what: str) -> BmcError:
    """Translate an exception raised inside pyghmi while doing ``what``.

    Refused credentials (password, user name, privilege, Kg) are
    :class:`BmcAuthError`; a cipher suite the BMC did not accept and any
    other answer that cannot be used are :class:`BmcProtocolError` (both
    permanent); silence is :class:`BmcUnreachable`.
    """
    reason = str(exc)
    if reason in ("", "None"):  # pyghmi's login timeout carries no message
        reason = "timed out after retries"
    if _SUITE_MARKER in reason:
        return _error(BmcProtocolError, target, what, f"{reason}; not retried")
    if any(marker in reason.lower() for marker in _AUTH_MARKERS):
        return _error(BmcAuthError, target, what, f"credentials refused ({reason})")
    if any(marker in reason.lower() for marker in _SILENCE_MARKERS):
        return _error(BmcUnreachable, target, what, f"no usable answer ({reason})")
    detail = f"protocol error ({type(exc).__name__}: {reason}); not retried"
    return _error(BmcProtocolError, target, what, detail)


def from_response(response: dict[str, Any] | None, target: BmcTarget, what: str) -> BmcError | None:
    """The error a pyghmi response dict carries, or None when it succeeded."""
    if response is None:
        return _error(BmcUnreachable, target, what, "no answer (session lost)")
    code = int(response.get("code", 0))
    if code == 0 and "error" not in response:
        return None
    text = response.get("error") or f"completion code {code:#04x}"
    if code == PYGHMI_TIMEOUT_CODE:
        return _error(BmcUnreachable, target, what, f"no answer after retries ({text})")
    if code in TRANSIENT_CODES:
        detail = f"BMC answered {code:#04x} ({TRANSIENT_CODES[code]}); retry later"
        return _error(BmcUnreachable, target, what, detail)
    return _error(BmcCommandRejected, target, what, f"refused with {code:#04x} ({text})")


# Completion codes after which a command may already have run (the BMC timed out,
# or could not produce its answer): for a power command that is "maybe sent".
AMBIGUOUS_CODES = frozenset({0xC3, 0xCE})


def maybe_ran(response: dict[str, Any] | None) -> bool:
    """Whether a command answered with ``response`` (None: no answer) may have run
    although it did not succeed: no answer, or an ambiguous completion code."""
    if session_lost(response):
        return True
    assert response is not None
    return int(response.get("code", 0)) in AMBIGUOUS_CODES


def session_lost(response: dict[str, Any] | None) -> bool:
    """Whether pyghmi gave up on the session (no answer after its retries)."""
    return response is None or int(response.get("code", 0)) == PYGHMI_TIMEOUT_CODE
