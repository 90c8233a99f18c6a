"""The power-driver interface: the only thing the executor knows about BMCs.

Two small abilities, as in bmclib's ``PowerStateGetter``/``PowerSetter``:
read the power state, and send an action *without waiting* for the hardware.
Vendor states and exceptions are mapped to these types at each driver's edge.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from powerq.states import Action, BootDevice, PowerState


class BmcError(Exception):
    """Base of every error a driver raises. ``transient`` says whether a retry may help."""

    transient: bool = False

    def __init__(self, message: str, *, address: str = "", port: int = 0) -> None:
        super().__init__(message)
        self.address = address
        self.port = port


class BmcUnreachable(BmcError):
    """The BMC did not answer in time (down, lossy link, overloaded). Transient."""

    transient = True


class BmcAckUnknown(BmcUnreachable):
    """A power command was transmitted once and no answer came: it may or may not
    have run. Never resend it blindly; read the power state to settle it."""


class BmcAuthError(BmcError):
    """The BMC refused the credentials. Permanent until the credentials change."""


class BmcProtocolError(BmcError):
    """The BMC answered, but not in a way the driver can use (unsupported cipher
    suite, malformed or unexpected messages). Permanent: retrying the same
    exchange gives the same answer; the node's options or firmware must change."""


class BmcCommandRejected(BmcError):
    """The BMC answered but refused the command (completion code, unsupported). Permanent."""


@dataclass(frozen=True)
class BmcTarget:
    """Where and how to reach one BMC. Secrets are never shown in a repr.

    The options after ``password`` matter to one protocol each: ``system``,
    ``verify_tls`` and ``ca_bundle`` (PEM text) to Redfish; ``cipher_suite``
    ("auto", "3", "17"), ``privilege`` ("operator", "administrator") and
    ``kg`` (the BMC key, None for none) to IPMI.
    """

    driver: str
    address: str
    port: int
    username: str
    password: str = field(repr=False)
    system: str | None = None
    verify_tls: bool = True
    ca_bundle: str | None = field(default=None, repr=False)
    cipher_suite: str = "auto"
    privilege: str = "administrator"
    kg: str | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """Human-readable ``address:port`` for messages (never the credentials)."""
        return f"{self.address}:{self.port}"


class PowerDriver(abc.ABC):
    """One BMC, as seen by the executor."""

    @abc.abstractmethod
    def get_power_state(self) -> PowerState:
        """Read the machine's power state (ON or OFF).

        :raises BmcUnreachable: no answer in time (transient).
        :raises BmcAuthError: credentials refused (permanent).
        :raises BmcCommandRejected: the BMC refused the request (permanent).
        :raises BmcProtocolError: the BMC's answers cannot be used (permanent).
        """

    @abc.abstractmethod
    def send_power_action(self, action: Action) -> None:
        """Send ``action`` (on, off, soft_off, cycle, reset) and return at once.

        Returns when the BMC has accepted the command, not when the hardware has
        reached the new state: callers verify with :meth:`get_power_state`. The
        command is transmitted at most once (a BMC may run a retransmission again).

        :raises BmcAckUnknown: the command went out but no answer came: maybe sent.
        :raises BmcUnreachable: no session could be set up, nothing was sent (transient).
        :raises BmcAuthError: credentials refused (permanent).
        :raises BmcCommandRejected: the BMC refused the command (permanent).
        :raises ValueError: ``action`` is ``query`` or otherwise not sendable.
        """

    def set_boot_device(self, device: BootDevice, *, persistent: bool) -> None:
        """Make the machine boot from ``device`` next (or always, ``persistent``).

        Safe to repeat: setting the same device twice changes nothing.

        :raises BmcUnreachable: no answer in time (transient).
        :raises BmcAuthError: credentials refused (permanent).
        :raises BmcCommandRejected: the BMC refused it or does not support it.
        """
        raise BmcCommandRejected(f"{type(self).__name__} cannot set a boot device")

    def get_boot_device(self) -> BootDevice | None:
        """The boot device the BMC reports now, or None when it cannot be read back.

        :raises BmcUnreachable: no answer in time (transient).
        :raises BmcAuthError: credentials refused (permanent).
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most drivers hold nothing
        """Release any session held with the BMC."""
