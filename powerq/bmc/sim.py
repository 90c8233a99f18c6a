"""An in-process simulated power driver, for unit tests of pure logic (no sockets).

It follows the same rules as the simulated IPMI fleet (:mod:`powerq.bmc.simfleet`):
on/off take ``transition`` seconds, soft-off ``soft_delay`` (None: never),
cycle is off then on, reset is instantaneous, cycle/reset of a machine that
is off are refused, and a power action arriving during a transition is
counted in :attr:`SimPowerDriver.overlaps`. Time comes from an injectable
clock (:class:`ManualClock` in tests). Faults:

==================  ==========================================================
``down``            every call raises :class:`BmcUnreachable`
``lossy`` (p)       each call raises :class:`BmcUnreachable` with probability p
``wrong_credentials``  every call raises :class:`BmcAuthError`
``reject``          power actions raise :class:`BmcCommandRejected`
``flaky`` (every)   every ``every``-th call raises :class:`BmcUnreachable`
``stuck``           actions are accepted but never change the state
==================  ==========================================================
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

from powerq.bmc.base import (
    BmcAuthError,
    BmcCommandRejected,
    BmcTarget,
    BmcUnreachable,
    PowerDriver,
)
from powerq.states import Action, BootDevice, PowerState

FAULT_KINDS = frozenset({"down", "lossy", "wrong_credentials", "reject", "flaky", "stuck"})
_SENDABLE = frozenset({Action.ON, Action.OFF, Action.SOFT_OFF, Action.CYCLE, Action.RESET})


class ManualClock:
    """A clock that moves only when told to (``clock.advance(2.0)``)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds


class SimPowerDriver(PowerDriver):
    """A machine and its BMC in memory. Thread-safe."""

    def __init__(
        self,
        target: BmcTarget | None = None,
        *,
        power: PowerState = PowerState.OFF,
        transition: float = 0.0,
        soft_delay: float | None = 0.0,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        self.target = target or BmcTarget("sim", "sim", 0, "admin", "")
        self.transition = transition
        self.soft_delay = soft_delay
        self.faults: dict[str, dict[str, Any]] = {}
        self.sent: list[tuple[float, Action]] = []  # accepted actions, with the clock's time
        self.overlaps = 0
        self.boot: tuple[BootDevice, bool] | None = None
        self.boot_sets: list[tuple[float, BootDevice]] = []  # every set, with the clock's time
        self._clock = clock
        self._power = power
        self._steps: list[tuple[float, PowerState]] = []  # (when, state) still to happen
        self._calls = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def get_power_state(self) -> PowerState:
        """The state now, after any transition step that is due.

        :raises BmcUnreachable: ``down``, ``lossy`` or ``flaky`` fault.
        :raises BmcAuthError: ``wrong_credentials`` fault.
        """
        with self._lock:
            self._check_faults("power status read")
            self._settle()
            return self._power

    def send_power_action(self, action: Action) -> None:
        """Accept ``action`` and start its transition.

        :raises BmcUnreachable: ``down``, ``lossy`` or ``flaky`` fault.
        :raises BmcAuthError: ``wrong_credentials`` fault.
        :raises BmcCommandRejected: ``reject`` fault, or cycle/reset while off.
        :raises ValueError: ``action`` is ``query``.
        """
        if action not in _SENDABLE:
            raise ValueError(f"{action!r} is not a power action a BMC can be sent")
        with self._lock:
            self._check_faults(f"power action {action.value}")
            self._settle()
            self._count_overlap()
            self._refuse_if_needed(action)
            self.sent.append((self._clock(), action))
            if "stuck" not in self.faults:
                self._steps = self._plan(action)

    def set_boot_device(self, device: BootDevice, *, persistent: bool) -> None:
        """Remember the boot device (recorded in :attr:`boot_sets`).

        :raises BmcUnreachable: ``down``, ``lossy`` or ``flaky`` fault.
        :raises BmcAuthError: ``wrong_credentials`` fault.
        """
        with self._lock:
            self._check_faults("set boot device")
            self.boot = (device, persistent)
            self.boot_sets.append((self._clock(), device))

    def get_boot_device(self) -> BootDevice | None:
        """The boot device set last (None: none).

        :raises BmcUnreachable: ``down``, ``lossy`` or ``flaky`` fault.
        :raises BmcAuthError: ``wrong_credentials`` fault.
        """
        with self._lock:
            self._check_faults("get boot device")
            return self.boot[0] if self.boot else None

    def set_fault(self, kind: str, **params: Any) -> None:
        """Activate a fault (see the module docstring).

        :raises ValueError: unknown kind.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown sim fault {kind!r}; known: {sorted(FAULT_KINDS)}")
        with self._lock:
            self.faults[kind] = dict(params)

    def clear_fault(self, kind: str | None = None) -> None:
        """Clear one fault, or all of them."""
        with self._lock:
            if kind is None:
                self.faults.clear()
            else:
                self.faults.pop(kind, None)

    def set_power(self, state: PowerState) -> None:
        """Change the state at once, behind the driver's back (drift tests)."""
        with self._lock:
            self._steps = []
            self._power = state

    @property
    def transitioning(self) -> bool:
        """Whether a transition step is still due."""
        with self._lock:
            self._settle()
            return bool(self._steps)

    def _check_faults(self, what: str) -> None:
        self._calls += 1
        where = f"sim BMC {self.target.label}: {what}"
        if "down" in self.faults or self._lost() or self._flaky():
            raise BmcUnreachable(
                f"{where}: no answer", address=self.target.address, port=self.target.port
            )
        if "wrong_credentials" in self.faults:
            raise BmcAuthError(
                f"{where}: credentials refused", address=self.target.address, port=self.target.port
            )
        if "reject" in self.faults and what.startswith("power action"):
            raise BmcCommandRejected(
                f"{where}: refused", address=self.target.address, port=self.target.port
            )

    def _lost(self) -> bool:
        fraction = float(self.faults.get("lossy", {}).get("fraction", 0.0))
        return "lossy" in self.faults and self._rng.random() < fraction

    def _flaky(self) -> bool:
        every = int(self.faults.get("flaky", {}).get("every", 2))
        return "flaky" in self.faults and self._calls % every == 0

    def _refuse_if_needed(self, action: Action) -> None:
        if action in (Action.CYCLE, Action.RESET) and self._power is PowerState.OFF:
            raise BmcCommandRejected(
                f"sim BMC {self.target.label}: {action.value} refused while off "
                "(0xd5, not supported in present state)",
                address=self.target.address,
                port=self.target.port,
            )

    def _count_overlap(self) -> None:
        if self._steps:
            self.overlaps += 1

    def _plan(self, action: Action) -> list[tuple[float, PowerState]]:
        now, delay = self._clock(), self.transition
        if action is Action.CYCLE:
            return [(now + delay, PowerState.OFF), (now + 2 * delay, PowerState.ON)]
        if action is Action.SOFT_OFF:
            if self.soft_delay is None or self._power is PowerState.OFF:
                return []
            return [(now + self.soft_delay, PowerState.OFF)]
        target = {Action.ON: PowerState.ON, Action.OFF: PowerState.OFF}.get(action)
        if target is None or target is self._power:
            return []  # reset (instantaneous) or already there
        return [(now + delay, target)]

    def _settle(self) -> None:
        now = self._clock()
        while self._steps and self._steps[0][0] <= now:  # bounded: pops one step each turn
            self._power = self._steps.pop(0)[1]


class SimRegistry:
    """In-process sim drivers by (address, port), so tests can reach the one in use."""

    def __init__(self) -> None:
        self._drivers: dict[tuple[str, int], SimPowerDriver] = {}
        self._lock = threading.Lock()

    def get(self, target: BmcTarget) -> SimPowerDriver:
        """The driver for ``target``, created (off, instantaneous) on first use."""
        with self._lock:
            key = (target.address, target.port)
            if key not in self._drivers:
                self._drivers[key] = SimPowerDriver(target)
            return self._drivers[key]

    def put(self, driver: SimPowerDriver) -> SimPowerDriver:
        """Register a configured driver under its target; returns it."""
        with self._lock:
            self._drivers[(driver.target.address, driver.target.port)] = driver
        return driver

    def clear(self) -> None:
        """Forget every driver."""
        with self._lock:
            self._drivers.clear()


REGISTRY = SimRegistry()
