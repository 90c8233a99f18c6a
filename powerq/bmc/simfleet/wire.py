"""RMCP / RMCP+ datagram framing (IPMI v2.0 section 13), for the simulated BMCs.

Only the framing lives here: headers, the integrity trailer layout and the
payload type byte. Keys and algorithms are in :mod:`.crypto`; what the
payloads mean is in :mod:`.handshake` and :mod:`.ipmimsg`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

RMCP_HEADER = b"\x06\x00\xff\x07"  # RMCP v1.0, no ACK, class IPMI
AUTHTYPE_NONE = 0x00
AUTHTYPE_RMCP_PLUS = 0x06
NEXT_HEADER = 0x07
_ENCRYPTED = 0x80
_AUTHENTICATED = 0x40
_V2_HEADER_LEN = 16  # RMCP(4) authtype(1) ptype(1) sid(4) seq(4) len(2)
_V15_HEADER_LEN = 14  # RMCP(4) authtype(1) seq(4) sid(4) len(1)


class WireError(ValueError):
    """A datagram that is not well-formed RMCP/RMCP+ (it is dropped, never answered)."""


class PayloadType(enum.IntEnum):
    """RMCP+ payload types (IPMI v2.0 table 13-16)."""

    IPMI = 0x00
    OPEN_SESSION_REQUEST = 0x10
    OPEN_SESSION_RESPONSE = 0x11
    RAKP1 = 0x12
    RAKP2 = 0x13
    RAKP3 = 0x14
    RAKP4 = 0x15


@dataclass(frozen=True)
class Datagram:
    """One parsed inbound datagram.

    ``payload`` is still encrypted when ``encrypted`` is set; ``signed`` is the
    byte range the integrity code covers (authtype through next header) and
    ``auth_code`` the code itself (empty when not authenticated).
    """

    v2: bool
    payload_type: int
    encrypted: bool
    authenticated: bool
    session_id: int
    sequence: int
    payload: bytes
    signed: bytes = b""
    auth_code: bytes = b""


def parse(data: bytes) -> Datagram:
    """Split one RMCP datagram into header fields and payload.

    :raises WireError: not an IPMI-class RMCP datagram, or truncated.
    """
    if len(data) < _V15_HEADER_LEN or data[:4] != RMCP_HEADER:
        raise WireError("not an RMCP IPMI datagram")
    if data[4] == AUTHTYPE_RMCP_PLUS:
        return _parse_v2(data)
    if data[4] == AUTHTYPE_NONE:
        return _parse_v15(data)
    raise WireError(f"unsupported session auth type {data[4]:#x}")


def _parse_v15(data: bytes) -> Datagram:
    sequence, session_id, length = struct.unpack_from("<IIB", data, 5)
    payload = data[_V15_HEADER_LEN : _V15_HEADER_LEN + length]
    if len(payload) != length:
        raise WireError("truncated IPMI 1.5 message")
    return Datagram(False, PayloadType.IPMI, False, False, session_id, sequence, payload)


def _parse_v2(data: bytes) -> Datagram:
    if len(data) < _V2_HEADER_LEN:
        raise WireError("truncated RMCP+ header")
    ptype = data[5]
    session_id, sequence, length = struct.unpack_from("<IIH", data, 6)
    end = _V2_HEADER_LEN + length
    payload = data[_V2_HEADER_LEN:end]
    if len(payload) != length:
        raise WireError("truncated RMCP+ payload")
    if not ptype & _AUTHENTICATED:
        return Datagram(
            True, ptype & 0x3F, bool(ptype & _ENCRYPTED), False, session_id, sequence, payload
        )
    trailer_end = end + _integrity_pad_len(end - 4) + 2
    if len(data) <= trailer_end or data[trailer_end - 1] != NEXT_HEADER:
        raise WireError("malformed RMCP+ integrity trailer")
    return Datagram(
        True,
        ptype & 0x3F,
        bool(ptype & _ENCRYPTED),
        True,
        session_id,
        sequence,
        payload,
        data[4:trailer_end],
        data[trailer_end:],
    )


def _integrity_pad_len(covered_so_far: int) -> int:
    """Pad bytes so that the covered range plus pad length and next header is DWORD-aligned."""
    return -(covered_so_far + 2) % 4


def build_v2(
    payload_type: int,
    session_id: int,
    sequence: int,
    payload: bytes,
    *,
    encrypted: bool = False,
    authenticated: bool = False,
) -> bytes:
    """Frame an RMCP+ datagram, without the integrity code.

    With ``authenticated`` the pad, pad length and next-header bytes are
    appended; the caller appends the code over ``result[4:]``.
    """
    flags = (_ENCRYPTED if encrypted else 0) | (_AUTHENTICATED if authenticated else 0)
    head = RMCP_HEADER + struct.pack(
        "<BBIIH", AUTHTYPE_RMCP_PLUS, payload_type | flags, session_id, sequence, len(payload)
    )
    body = head + payload
    if not authenticated:
        return body
    pad = _integrity_pad_len(len(body) - 4)
    return body + b"\xff" * pad + bytes((pad, NEXT_HEADER))


def build_v15(payload: bytes) -> bytes:
    """Frame a session-less IPMI 1.5 datagram (auth type none, session 0)."""
    return RMCP_HEADER + struct.pack("<BIIB", AUTHTYPE_NONE, 0, 0, len(payload)) + payload
