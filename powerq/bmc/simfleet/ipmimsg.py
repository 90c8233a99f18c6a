"""IPMI LAN message framing (IPMI v2.0 figure 13-4): requests in, responses out."""

from __future__ import annotations

from dataclasses import dataclass

BMC_ADDRESS = 0x20
_MIN_REQUEST_LEN = 7  # rsSA netFn/LUN chk rqSA rqSeq/LUN cmd chk


class MessageError(ValueError):
    """An IPMI message too short to answer."""


@dataclass(frozen=True)
class Request:
    """One IPMI request addressed to the BMC."""

    netfn: int
    cmd: int
    rq_addr: int
    rq_seq_lun: int  # rqSeq << 2 | rqLUN, echoed back
    rs_lun: int
    data: bytes


def checksum(data: bytes) -> int:
    """Two's-complement checksum: ``sum(data) + checksum == 0 (mod 256)``."""
    return -sum(data) & 0xFF


def parse_request(message: bytes) -> Request:
    """Decode an IPMI request (checksums are not verified: LAN integrity covers them).

    :raises MessageError: the message is too short.
    """
    if len(message) < _MIN_REQUEST_LEN:
        raise MessageError(f"IPMI message of {len(message)} bytes is too short")
    return Request(
        netfn=message[1] >> 2,
        cmd=message[5],
        rq_addr=message[3],
        rq_seq_lun=message[4],
        rs_lun=message[1] & 0x3,
        data=message[6:-1],
    )


def build_response(request: Request, completion_code: int, data: bytes = b"") -> bytes:
    """Encode the response to ``request`` with ``completion_code`` and ``data``."""
    rq_lun = request.rq_seq_lun & 0x3
    header = bytes((request.rq_addr, ((request.netfn + 1) << 2) | rq_lun))
    body = (
        bytes(
            (
                BMC_ADDRESS,
                (request.rq_seq_lun & 0xFC) | request.rs_lun,
                request.cmd,
                completion_code,
            )
        )
        + data
    )
    return header + bytes((checksum(header),)) + body + bytes((checksum(body),))
