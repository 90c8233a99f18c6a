"""powerq's power vocabulary and the pure rules that relate actions to states.

Nothing here touches the database, the broker or a BMC: these are the
table-driven rules every other module asks.
"""

from __future__ import annotations

import enum


class PowerState(enum.StrEnum):
    """What a BMC reports (observed state)."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class DesiredPowerState(enum.StrEnum):
    """What users asked for (desired state). Never inferred from anything else."""

    ON = "on"
    OFF = "off"


class Action(enum.StrEnum):
    """A power action a user may request."""

    ON = "on"
    OFF = "off"
    SOFT_OFF = "soft_off"
    CYCLE = "cycle"
    RESET = "reset"
    QUERY = "query"
    # Not power actions, but requests on the node's lane all the same (serialised
    # with its power actions): log in and read the state; set the boot device.
    VALIDATE = "validate"
    BOOT = "boot"


# What POST /v1/nodes/{name}/power (and a batch) may ask for.
POWER_ENDPOINT_ACTIONS: tuple[Action, ...] = (
    Action.ON,
    Action.OFF,
    Action.SOFT_OFF,
    Action.CYCLE,
    Action.RESET,
    Action.QUERY,
)


# Actions a boot device may be set before, in the same request.
BOOT_THEN_POWER_ACTIONS: tuple[Action, ...] = (Action.ON, Action.CYCLE, Action.RESET)


class BootDevice(enum.StrEnum):
    """Where a machine boots from next (IPMI boot flags / Redfish BootSourceOverrideTarget)."""

    PXE = "pxe"
    DISK = "disk"
    CDROM = "cdrom"
    BIOS = "bios"


class RequestStatus(enum.StrEnum):
    """Lifecycle of a power request: pending -> running -> succeeded | failed,
    or pending -> cancelled before any worker claimed it."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Evidence(enum.StrEnum):
    """What showed a finished request's outcome; a request reports no more than this."""

    # The BMC reported the target state after the command (on, off, soft_off).
    POWER_STATE = "power_state"
    # The BMC already reported the target state: nothing was sent.
    ALREADY = "already"
    # A cycle: the BMC reported off, then on (performed as off -> verified off ->
    # on -> verified on).
    OFF_THEN_ON = "off_then_on"
    # The BMC answered the command, but its effect cannot be read back (a reset:
    # the power state does not change). "Acknowledged, not observable."
    ACKNOWLEDGED = "acknowledged"
    # A query or validate: the state read is the outcome.
    READ = "read"
    # A boot device: the BMC reported the device that was set.
    BOOT_DEVICE = "boot_device"


OUTSTANDING_STATUSES: frozenset[RequestStatus] = frozenset(
    {RequestStatus.PENDING, RequestStatus.RUNNING}
)
FINISHED_STATUSES: frozenset[RequestStatus] = frozenset(
    {RequestStatus.SUCCEEDED, RequestStatus.FAILED, RequestStatus.CANCELLED}
)


class Step(enum.StrEnum):
    """The short steps one request is executed in (one task run each)."""

    QUERY = "query"
    SEND = "send"
    CHECK = "check"


class DriverKind(enum.StrEnum):
    """How powerq talks to a node's BMC."""

    IPMI = "ipmi"
    REDFISH = "redfish"
    SIM = "sim"


# Actions that change power and therefore must never overlap on one machine.
POWER_CHANGING_ACTIONS: frozenset[Action] = frozenset(
    {Action.ON, Action.OFF, Action.SOFT_OFF, Action.CYCLE, Action.RESET}
)

# Actions sent at most once per request (resending would hit the machine twice).
# A cycle is two converging phases (off, then on), each sent at most once.
SEND_ONCE_ACTIONS: frozenset[Action] = frozenset({Action.CYCLE, Action.RESET})

_DESIRED_AFTER: dict[Action, DesiredPowerState | None] = {
    Action.ON: DesiredPowerState.ON,
    Action.OFF: DesiredPowerState.OFF,
    Action.SOFT_OFF: DesiredPowerState.OFF,
    Action.CYCLE: DesiredPowerState.ON,
    Action.RESET: DesiredPowerState.ON,
    Action.QUERY: None,
    Action.VALIDATE: None,
    Action.BOOT: None,
}

_TARGET_OF: dict[Action, PowerState | None] = {
    Action.ON: PowerState.ON,
    Action.OFF: PowerState.OFF,
    Action.SOFT_OFF: PowerState.OFF,
    Action.CYCLE: PowerState.ON,
    Action.RESET: PowerState.ON,
    Action.QUERY: None,
    Action.VALIDATE: None,
    Action.BOOT: None,
}

DEFAULT_DEADLINE_S: dict[Action, float] = {
    Action.ON: 120.0,
    Action.OFF: 120.0,
    Action.SOFT_OFF: 600.0,
    Action.CYCLE: 120.0,
    Action.RESET: 120.0,
    Action.QUERY: 60.0,
    Action.VALIDATE: 60.0,
    Action.BOOT: 60.0,
}


def desired_after(action: Action) -> DesiredPowerState | None:
    """The desired power state a request for ``action`` records, or None to leave it."""
    return _DESIRED_AFTER[action]


def target_state(action: Action) -> PowerState | None:
    """The observed state that proves ``action`` succeeded (None: any answer does)."""
    return _TARGET_OF[action]


def needs_command(action: Action, observed: PowerState) -> bool:
    """Whether ``action`` must be sent to a machine observed in ``observed``.

    ``on``/``off``/``soft_off`` converge: nothing is sent when the machine is
    already there (so "on" never hard-cycles a running machine). ``cycle`` and
    ``reset`` always act; ``query`` never does.
    """
    if action in (Action.QUERY, Action.VALIDATE, Action.BOOT):
        return False
    if action in SEND_ONCE_ACTIONS:
        return True
    return observed is not _TARGET_OF[action]


def command_for(action: Action, observed_before: PowerState, *, off_verified: bool) -> Action:
    """The next command that carries out ``action`` on a machine seen ``observed_before``.

    A ``cycle`` is done as two converging phases, each sent at most once and
    each verified: hard off, then (once off was read back, ``off_verified``)
    on. A machine already off gets only the "on" phase: off was seen. A hard
    reset of a machine that is off is refused by IPMI; powering it on is the
    honest equivalent. Everything else is sent as asked.
    """
    if action is Action.CYCLE:
        already_off = off_verified or observed_before is PowerState.OFF
        return Action.ON if already_off else Action.OFF
    if action is Action.RESET and observed_before is PowerState.OFF:
        return Action.ON
    return action
