"""A node's protocol options: which apply to which driver, what values they take,
and how they are stored.

======================  ========  ==================================================
option                  driver    values
======================  ========  ==================================================
``system``              redfish   a path under ``/redfish/v1/Systems/``; unset: the
                                  single member of ``/redfish/v1/Systems``
``verify_tls``          redfish   true (default) or false
``ca_bundle``           redfish   PEM certificate(s) to verify the BMC with; shown only
                                  as ``ca_bundle_set``
``ipmi_cipher_suite``   ipmi      ``auto`` (default), ``3`` or ``17``
``ipmi_privilege``      ipmi      ``administrator`` (default) or ``operator``
``ipmi_kg``             ipmi      the BMC key: ``0x`` + hex digits (as ``ipmitool -y``)
                                  or text (as ``ipmitool -k``), at most 20 bytes;
                                  write-only, stored encrypted, shown as ``ipmi_kg_set``
======================  ========  ==================================================

An option given for a driver it does not apply to is refused; when a node's
driver changes, the other protocol's options go back to their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from powerq.errors import InvalidInput
from powerq.models import Node
from powerq.secrets import encrypt_password
from powerq.states import DriverKind

SYSTEM_PREFIX = "/redfish/v1/Systems/"
CIPHER_SUITES = ("auto", "3", "17")
PRIVILEGES = ("operator", "administrator")
KG_MAX_BYTES = 20
CA_BUNDLE_MAX_CHARS = 65536
DEFAULT_PORTS: dict[DriverKind, int] = {
    DriverKind.IPMI: 623,
    DriverKind.REDFISH: 443,
    DriverKind.SIM: 623,
}
OPTIONS_OF: dict[DriverKind, tuple[str, ...]] = {
    DriverKind.REDFISH: ("system", "verify_tls", "ca_bundle"),
    DriverKind.IPMI: ("ipmi_cipher_suite", "ipmi_privilege", "ipmi_kg"),
    DriverKind.SIM: (),
}
ALL_OPTIONS: tuple[str, ...] = (*OPTIONS_OF[DriverKind.REDFISH], *OPTIONS_OF[DriverKind.IPMI])
# Options whose value may be withdrawn (null in a PATCH).
CLEARABLE: frozenset[str] = frozenset({"system", "ca_bundle", "ipmi_kg"})


def default_port(driver: DriverKind) -> int:
    """The BMC port a node gets when none is given: 443 for Redfish, 623 for IPMI."""
    return DEFAULT_PORTS[driver]


@dataclass(frozen=True)
class NodeOptions:
    """Options given in a registration or a change; None means "not given".

    ``cleared`` names clearable options given as null (a PATCH withdrawing them).
    Secrets (``ca_bundle`` is not secret, but long; ``ipmi_kg`` is) never show
    in a repr.
    """

    system: str | None = None
    verify_tls: bool | None = None
    ca_bundle: str | None = field(default=None, repr=False)
    ipmi_cipher_suite: str | None = None
    ipmi_privilege: str | None = None
    ipmi_kg: str | None = field(default=None, repr=False)
    cleared: frozenset[str] = frozenset()

    def given(self) -> list[str]:
        """The options this carries (set or cleared), in table order."""
        return [
            name for name in ALL_OPTIONS if getattr(self, name) is not None or name in self.cleared
        ]


def check(options: NodeOptions, driver: DriverKind) -> None:
    """Accept ``options`` for a node with ``driver``.

    :raises InvalidInput: an option that does not apply to the driver, or a
        value out of range (a system path outside /redfish/v1/Systems/, a CA
        bundle that is not PEM certificates, a malformed Kg, ...).
    """
    foreign = [name for name in options.given() if name not in OPTIONS_OF[driver]]
    if foreign:
        applies = ", ".join(OPTIONS_OF[driver]) or "none"
        raise InvalidInput(
            f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to a "
            f"{driver.value} node (options of {driver.value} nodes: {applies})"
        )
    if options.system is not None:
        check_system(options.system)
    if options.ca_bundle is not None:
        check_ca_bundle(options.ca_bundle)
    if options.ipmi_cipher_suite is not None and options.ipmi_cipher_suite not in CIPHER_SUITES:
        raise InvalidInput(f"ipmi_cipher_suite must be one of {', '.join(CIPHER_SUITES)}")
    if options.ipmi_privilege is not None and options.ipmi_privilege not in PRIVILEGES:
        raise InvalidInput(f"ipmi_privilege must be one of {', '.join(PRIVILEGES)}")
    if options.ipmi_kg is not None:
        check_kg(options.ipmi_kg)


def check_system(path: str) -> None:
    """:raises InvalidInput: not a member path under /redfish/v1/Systems/."""
    member = path.removeprefix(SYSTEM_PREFIX)
    if (
        not path.startswith(SYSTEM_PREFIX)
        or not member
        or len(path) > 255
        or any(c.isspace() or c in "?#" for c in path)
    ):
        raise InvalidInput(
            f"system must be a Redfish system path starting with {SYSTEM_PREFIX} "
            "(e.g. /redfish/v1/Systems/1), at most 255 characters, without spaces"
        )


def check_ca_bundle(pem: str) -> None:
    """:raises InvalidInput: not one or more PEM certificates (parsed with cryptography)."""
    if len(pem) > CA_BUNDLE_MAX_CHARS:
        raise InvalidInput(f"ca_bundle is longer than {CA_BUNDLE_MAX_CHARS} characters")
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode("utf-8"))
    except (ValueError, UnicodeEncodeError):
        certificates = []
    if not certificates:
        raise InvalidInput(
            "ca_bundle must be one or more PEM certificates "
            "(-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)"
        )


def kg_bytes(kg: str) -> bytes:
    """The key bytes of a Kg: ``0x`` + an even number of hex digits, else the text.

    :raises InvalidInput: empty, odd hex, not ASCII text, or longer than 20 bytes
        (the value itself is never repeated).
    """
    digits = kg[2:]
    if kg[:2].lower() == "0x" and digits and all(c in "0123456789abcdefABCDEF" for c in digits):
        if len(digits) % 2:
            raise InvalidInput("ipmi_kg: a hex key needs an even number of digits after 0x")
        key = bytes.fromhex(digits)
    else:
        if not kg.isascii() or not kg.isprintable():
            raise InvalidInput("ipmi_kg: a text key must be printable ASCII (or give it as 0x hex)")
        key = kg.encode()
    if not key:
        raise InvalidInput("ipmi_kg is empty (leave it out, or null it, when the BMC has no key)")
    if len(key) > KG_MAX_BYTES:
        raise InvalidInput(f"ipmi_kg is {len(key)} bytes; IPMI keys have at most {KG_MAX_BYTES}")
    return key


def check_kg(kg: str) -> None:
    """:raises InvalidInput: see :func:`kg_bytes`."""
    kg_bytes(kg)


def apply(node: Node, options: NodeOptions) -> list[str]:
    """Store ``options`` (already checked) on ``node``; return the options that changed
    (the Kg is re-encrypted whenever given, and reported as changed)."""
    changed: list[str] = []
    for name, column in (
        ("system", "bmc_system"),
        ("verify_tls", "verify_tls"),
        ("ca_bundle", "ca_bundle"),
        ("ipmi_cipher_suite", "ipmi_cipher_suite"),
        ("ipmi_privilege", "ipmi_privilege"),
    ):
        value = getattr(options, name)
        if name in options.cleared:
            value = None
        elif value is None:
            continue
        if getattr(node, column) != value:
            setattr(node, column, value)
            changed.append(name)
    if "ipmi_kg" in options.cleared:
        if node.ipmi_kg_encrypted is not None:
            node.ipmi_kg_encrypted = None
            changed.append("ipmi_kg")
    elif options.ipmi_kg is not None:
        node.ipmi_kg_encrypted = encrypt_password(options.ipmi_kg)
        changed.append("ipmi_kg")
    return changed


def reset_foreign(node: Node, driver: DriverKind) -> list[str]:
    """Put the options that do not apply to ``driver`` back to their defaults; return
    the ones that were not at their default."""
    defaults = NodeOptions(
        verify_tls=True,
        ipmi_cipher_suite="auto",
        ipmi_privilege="administrator",
        cleared=frozenset(CLEARABLE),
    )
    foreign = [name for name in ALL_OPTIONS if name not in OPTIONS_OF[driver]]
    keep = frozenset(foreign)
    subset = NodeOptions(
        **{name: getattr(defaults, name) for name in foreign if name not in CLEARABLE},
        cleared=defaults.cleared & keep,
    )
    return apply(node, subset)


def system_of(options: NodeOptions, current: str | None) -> str | None:
    """The system path a node will have once ``options`` are applied."""
    if "system" in options.cleared:
        return None
    return options.system if options.system is not None else current
