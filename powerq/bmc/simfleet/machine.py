"""The simulated machine behind one BMC: power state, delayed transitions, overlaps.

Rules (documented in README.md):

- power up / power down change the state after ``transition`` seconds;
- soft shutdown powers off after ``soft_delay`` seconds, or never when
  ``soft_delay`` is ``None`` (an OS that ignores ACPI: nothing is scheduled);
- power cycle powers off after ``transition`` and on again ``transition``
  later; both halves are one operation;
- hard reset is instantaneous (logged, state stays on);
- power cycle and hard reset of a machine that is off are refused with
  completion code 0xD5 ("not supported in present state");
- any chassis control command arriving while an earlier one is still in its
  transition is an *overlap*: it is counted, flagged in the log, and the new
  command supersedes the old transition (as on real hardware).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from powerq.bmc.simfleet.cmdlog import CommandLog, LogEntry

CC_OK = 0x00
CC_INVALID_DATA = 0xCC
CC_NOT_IN_PRESENT_STATE = 0xD5


class Cancellable(Protocol):
    """A scheduled callback (``asyncio.TimerHandle`` fits)."""

    def cancel(self) -> None:
        """Stop the callback from running."""


class Scheduler(Protocol):
    """What the machine needs from an event loop (``asyncio`` loops fit)."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:
        """Run ``callback`` after ``delay`` seconds."""
        ...


class ChassisControl(enum.IntEnum):
    """Chassis Control request byte (IPMI v2.0 table 28-4)."""

    POWER_DOWN = 0
    POWER_UP = 1
    POWER_CYCLE = 2
    HARD_RESET = 3
    PULSE_DIAGNOSTIC = 4
    SOFT_SHUTDOWN = 5


_SUPPORTED = frozenset(c.value for c in ChassisControl) - {ChassisControl.PULSE_DIAGNOSTIC}


@dataclass
class Behaviour:
    """How slowly this machine reacts. ``soft_delay=None``: soft shutdown is ignored."""

    transition: float = 2.0
    soft_delay: float | None = 5.0


@dataclass
class _Transition:
    """An operation in progress: the log entry that started it and its remaining steps."""

    entry: LogEntry
    steps: list[tuple[float, bool]]
    handle: Cancellable | None = None


@dataclass
class Machine:
    """Power state of one simulated machine, driven by Chassis Control commands."""

    scheduler: Scheduler
    log: CommandLog
    behaviour: Behaviour = field(default_factory=Behaviour)
    powered: bool = False
    overlaps: int = 0
    resets: int = 0
    # System Boot Options parameter 5 (boot flags), as last set by a client.
    boot_flags: bytes = bytes(5)
    _transition: _Transition | None = None

    @property
    def transitioning(self) -> bool:
        """Whether an operation is still in its transition."""
        return self._transition is not None

    @property
    def heading(self) -> bool | None:
        """The power state the operation in progress reaches next (None: no operation)."""
        transition = self._transition
        return transition.steps[0][1] if transition is not None and transition.steps else None

    def chassis_control(self, command: int, entry: LogEntry, *, stuck: bool = False) -> int:
        """Apply one Chassis Control command logged as ``entry``; return its completion code.

        ``stuck`` accepts the command without ever changing state.
        """
        if command not in _SUPPORTED:
            return CC_INVALID_DATA
        self._detect_overlap(entry)
        if self._refused_in_present_state(command):
            return CC_NOT_IN_PRESENT_STATE
        if stuck:
            entry.detail = "stuck: accepted, ignored"
            return CC_OK
        self._supersede()
        self._apply(ChassisControl(command), entry)
        return CC_OK

    def set_power(self, on: bool) -> None:
        """Change state at once, "behind the BMC client's back" (control API)."""
        self._supersede()
        self.powered = on
        self.log.record("control_set_power", action="on" if on else "off")

    def _detect_overlap(self, entry: LogEntry) -> None:
        if self._transition is not None:
            self.overlaps += 1
            entry.overlapped = True

    def _refused_in_present_state(self, command: int) -> bool:
        """Cycle and reset need a machine that is on."""
        needs_power = (ChassisControl.POWER_CYCLE, ChassisControl.HARD_RESET)
        return command in needs_power and not self.powered

    def _apply(self, command: ChassisControl, entry: LogEntry) -> None:
        entry.action = command.name.lower()
        delay = self.behaviour.transition
        if command is ChassisControl.HARD_RESET:
            self._reset(entry)
        elif command is ChassisControl.POWER_CYCLE:
            self._start(entry, [(delay, False), (delay, True)])
        elif command is ChassisControl.SOFT_SHUTDOWN:
            self._soft_shutdown(entry)
        else:
            self._converge(command is ChassisControl.POWER_UP, entry, delay)

    def _reset(self, entry: LogEntry) -> None:
        self.resets += 1
        entry.transition_start = entry.transition_end = self.log.wall()

    def _soft_shutdown(self, entry: LogEntry) -> None:
        delay = self.behaviour.soft_delay
        if not self.powered:
            entry.detail = "already off"
        elif delay is None:
            entry.detail = "ignored: the OS does not honour ACPI shutdown"
        else:
            self._start(entry, [(delay, False)])

    def _converge(self, on: bool, entry: LogEntry, delay: float) -> None:
        if self.powered == on:
            entry.detail = f"already {'on' if on else 'off'}"
        else:
            self._start(entry, [(delay, on)])

    def _start(self, entry: LogEntry, steps: list[tuple[float, bool]]) -> None:
        entry.transition_start = self.log.wall()
        self._transition = _Transition(entry, steps)
        self._schedule_next()

    def _schedule_next(self) -> None:
        transition = self._transition
        assert transition is not None
        delay, _ = transition.steps[0]
        transition.handle = self.scheduler.call_later(delay, self._step)

    def _step(self) -> None:
        transition = self._transition
        if transition is None:
            return
        _, target = transition.steps.pop(0)
        self.powered = target
        if transition.steps:
            self._schedule_next()
        else:
            transition.entry.transition_end = self.log.wall()
            self._transition = None

    def _supersede(self) -> None:
        transition = self._transition
        if transition is None:
            return
        if transition.handle is not None:
            transition.handle.cancel()
        transition.entry.superseded = True
        transition.entry.transition_end = self.log.wall()
        self._transition = None
