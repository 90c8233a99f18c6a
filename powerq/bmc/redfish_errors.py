"""Mapping sushy's and requests' failures to powerq's BMC exceptions (the only place
that reads them).

What matters most is whether a request *may have reached* the BMC: a refused
connection, a failed DNS look-up or a connect timeout sent nothing
(:class:`BmcUnreachable`); a read timeout or a connection dropped after the
request was written may have run (:class:`BmcAckUnknown` for a power command).
sushy wraps transport errors in its own ``ConnectionError`` without chaining
them explicitly; the original is its ``__context__``.
"""

from __future__ import annotations

from typing import Any

import requests
import urllib3.exceptions
from sushy import exceptions as sushy_exc

from powerq.bmc.base import (
    BmcAckUnknown,
    BmcAuthError,
    BmcCommandRejected,
    BmcError,
    BmcProtocolError,
    BmcTarget,
    BmcUnreachable,
)

TLS_ADVICE = (
    "give the node the CA certificate that signed the BMC's certificate (its "
    "ca_bundle option, PEM) or, on a network you trust, set its verify_tls option to false"
)


def _error(kind: type[BmcError], target: BmcTarget, what: str, detail: str) -> BmcError:
    message = f"Redfish {what} at {target.label} as user {target.username!r}: {detail}"
    return kind(message, address=target.address, port=target.port)


def bmc_message(exc: sushy_exc.HTTPError) -> str:
    """The BMC's own words for an HTTP error: @Message.ExtendedInfo's message, else
    the error body's message, else the status code."""
    info = exc.extended_info
    if isinstance(info, list):
        for item in info:
            if isinstance(item, dict) and item.get("Message"):
                return str(item["Message"])
    elif isinstance(info, dict) and info.get("Message"):
        return str(info["Message"])
    return str(exc.detail or f"HTTP {exc.status_code}")


def _transport_cause(exc: BaseException) -> BaseException:
    """The requests exception under a sushy ConnectionError (or ``exc`` itself)."""
    context: BaseException | None = exc.__context__
    if isinstance(exc, sushy_exc.ConnectionError) and context is not None:
        return context
    return exc


def _nothing_sent(exc: BaseException) -> bool:
    """True when the failure happened before the request could be written:
    connection refused, no route, DNS failure, connect timeout."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason: Any = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the cause
    return isinstance(reason, urllib3.exceptions.NewConnectionError | ConnectionRefusedError)


def from_transport(exc: BaseException, target: BmcTarget, what: str, *, sent: bool) -> BmcError:
    """Map a transport failure (requests' or sushy's ConnectionError).

    ``sent``: the request was a power command: if it may have gone out, say
    "maybe sent" (:class:`BmcAckUnknown`) instead of plain unreachable.
    """
    cause = _transport_cause(exc)
    if isinstance(cause, requests.exceptions.SSLError):
        return _error(BmcProtocolError, target, what, f"TLS failed ({_short(cause)}); {TLS_ADVICE}")
    if _nothing_sent(cause):
        return _error(BmcUnreachable, target, what, f"cannot connect ({_short(cause)})")
    if sent:
        return _error(
            BmcAckUnknown,
            target,
            what,
            f"sent once and not answered ({_short(cause)}): it may or may not have run",
        )
    return _error(BmcUnreachable, target, what, f"no answer ({_short(cause)})")


def from_http(exc: sushy_exc.HTTPError, target: BmcTarget, what: str, *, sent: bool) -> BmcError:
    """Map an HTTP error status.

    401/403: credentials refused; 404: no such resource (the system path);
    other 4xx: the BMC refused, in its own words; 5xx: the BMC failed: a read
    may be retried, a power command may or may not have run.
    """
    status = exc.status_code or 0
    said = bmc_message(exc)
    if status in (401, 403):
        return _error(BmcAuthError, target, what, f"authentication refused (HTTP {status}: {said})")
    if status == 404:
        return _error(BmcProtocolError, target, what, f"no such resource (HTTP 404: {said})")
    if status >= 500:
        if sent:
            return _error(
                BmcAckUnknown,
                target,
                what,
                f"the BMC failed (HTTP {status}: {said}): it may or may not have run",
            )
        return _error(BmcUnreachable, target, what, f"the BMC failed (HTTP {status}: {said})")
    return _error(BmcCommandRejected, target, what, f"refused (HTTP {status}: {said})")


def from_exception(exc: BaseException, target: BmcTarget, what: str, *, sent: bool) -> BmcError:
    """Map anything sushy, requests or the JSON decoder raised to a :class:`BmcError`."""
    if isinstance(exc, BmcError):
        return exc
    if isinstance(exc, sushy_exc.HTTPError):
        return from_http(exc, target, what, sent=sent)
    if isinstance(exc, sushy_exc.ConnectionError | requests.RequestException):
        return from_transport(exc, target, what, sent=sent)
    if isinstance(exc, ValueError | KeyError | TypeError | sushy_exc.SushyError):
        return _error(BmcProtocolError, target, what, f"unusable answer ({_short(exc)})")
    return _error(BmcProtocolError, target, what, f"unexpected failure ({_short(exc)})")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
