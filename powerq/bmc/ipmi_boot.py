"""IPMI boot flags (System Boot Options parameter 5), encoded and decoded in one place.

Used by the IPMI driver to set and read back the boot device, and by the
simulated fleet to answer the same commands, so both sides agree byte for
byte (IPMI v2.0 section 28.13, table 28-14).
"""

from __future__ import annotations

from powerq.states import BootDevice

NETFN_CHASSIS = 0x00
CMD_SET_SYSTEM_BOOT_OPTIONS = 0x08
CMD_GET_SYSTEM_BOOT_OPTIONS = 0x09
PARAM_BOOT_FLAGS = 0x05

_VALID = 0x80
_PERSISTENT = 0x40
_SELECTOR_MASK = 0x3C
# Boot device selector, bits 5:2 of data byte 2.
SELECTOR: dict[BootDevice, int] = {
    BootDevice.PXE: 0x04,
    BootDevice.DISK: 0x08,
    BootDevice.CDROM: 0x14,
    BootDevice.BIOS: 0x18,
}
_DEVICE_OF = {selector: device for device, selector in SELECTOR.items()}


def set_request(device: BootDevice, *, persistent: bool) -> list[int]:
    """The data of Set System Boot Options that selects ``device``."""
    flags = _VALID | (_PERSISTENT if persistent else 0)
    return [PARAM_BOOT_FLAGS, flags, SELECTOR[device], 0x00, 0x00, 0x00]


def get_request() -> list[int]:
    """The data of Get System Boot Options for the boot flags."""
    return [PARAM_BOOT_FLAGS, 0x00, 0x00]


def parse_flags(flags: bytes) -> tuple[BootDevice | None, bool]:
    """(device, persistent) from the five boot-flag bytes; device None when no
    override is set or the selector is not one powerq knows.

    :raises ValueError: fewer than two bytes.
    """
    if len(flags) < 2:
        raise ValueError(f"boot flags need at least 2 bytes, got {len(flags)}")
    if not flags[0] & _VALID:
        return None, False
    return _DEVICE_OF.get(flags[1] & _SELECTOR_MASK), bool(flags[0] & _PERSISTENT)


def parse_get_response(data: bytes) -> tuple[BootDevice | None, bool]:
    """(device, persistent) from a Get System Boot Options response's data
    (version byte, parameter byte, then the flags).

    :raises ValueError: the answer is too short or is not parameter 5.
    """
    if len(data) < 4 or data[1] & 0x7F != PARAM_BOOT_FLAGS:
        raise ValueError(f"unexpected boot options answer {data.hex()}")
    return parse_flags(data[2:])
