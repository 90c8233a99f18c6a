"""Fault injection for one simulated BMC, switchable at run time.

=====================  =========================================================
kind (params)          effect
=====================  =========================================================
down                   every datagram is dropped: the BMC never answers
slow (delay)           every reply is sent ``delay`` seconds late
lossy (fraction)       each inbound datagram is dropped with that probability
wrong_credentials      the BMC holds a different password: RAKP 2 does not verify
flaky (every, code)    every ``every``-th chassis command fails with ``code``
                       (default 0xC0, "node busy")
stuck                  Chassis Control is accepted but the state never changes
executes_retransmissions  every request received is run, a client's retransmission
                       of an unanswered one included (no rqSeq de-duplication),
                       as some real BMCs do: with ``slow`` this is the BMC that
                       runs a retransmitted power cycle twice
suite3_only_accepts_any  answers every Open Session proposal, suite 17 included,
                       with suite 3's algorithms and no error, as pyghmi's BMC
                       server (VirtualBMC) does: a client must read the answer
=====================  =========================================================
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Any

CC_NODE_BUSY = 0xC0


class FaultKind(enum.StrEnum):
    """The fault modes a BMC can be put in."""

    DOWN = "down"
    SLOW = "slow"
    LOSSY = "lossy"
    WRONG_CREDENTIALS = "wrong_credentials"
    FLAKY = "flaky"
    STUCK = "stuck"
    EXECUTES_RETRANSMISSIONS = "executes_retransmissions"
    SUITE3_ONLY_ACCEPTS_ANY = "suite3_only_accepts_any"


@dataclass
class Faults:
    """The active faults of one BMC; several kinds may be active at once."""

    down: bool = False
    slow_delay: float = 0.0
    loss: float = 0.0
    wrong_credentials: bool = False
    flaky_every: int = 0
    flaky_code: int = CC_NODE_BUSY
    stuck: bool = False
    executes_retransmissions: bool = False
    suite3_only_accepts_any: bool = False
    _flaky_count: int = 0

    def set(self, kind: str, params: dict[str, Any]) -> None:
        """Activate ``kind`` with ``params``.

        :raises ValueError: unknown kind or a parameter out of range.
        """
        fault = FaultKind(kind)
        if fault is FaultKind.SLOW:
            self.slow_delay = _bounded(params.get("delay", 1.0), 0.0, 3600.0, "delay")
        elif fault is FaultKind.LOSSY:
            self.loss = _bounded(params.get("fraction", 0.5), 0.0, 1.0, "fraction")
        elif fault is FaultKind.FLAKY:
            self.flaky_every = int(_bounded(params.get("every", 2), 1, 1_000_000, "every"))
            self.flaky_code = int(_bounded(params.get("code", CC_NODE_BUSY), 1, 0xFF, "code"))
            self._flaky_count = 0
        else:
            setattr(self, fault.value, True)

    def clear(self, kind: str | None = None) -> None:
        """Deactivate ``kind``, or every fault when ``kind`` is None.

        :raises ValueError: unknown kind.
        """
        kinds = list(FaultKind) if kind is None else [FaultKind(kind)]
        fresh = Faults()
        for fault in kinds:
            for name in _FIELDS[fault]:
                setattr(self, name, getattr(fresh, name))

    def active(self) -> dict[str, dict[str, Any]]:
        """The active faults and their parameters, JSON-ready."""
        found: dict[str, dict[str, Any]] = {}
        for kind, on, params in (
            (FaultKind.DOWN, self.down, {}),
            (FaultKind.SLOW, self.slow_delay > 0, {"delay": self.slow_delay}),
            (FaultKind.LOSSY, self.loss > 0, {"fraction": self.loss}),
            (FaultKind.WRONG_CREDENTIALS, self.wrong_credentials, {}),
            (
                FaultKind.FLAKY,
                self.flaky_every > 0,
                {"every": self.flaky_every, "code": self.flaky_code},
            ),
            (FaultKind.STUCK, self.stuck, {}),
            (FaultKind.EXECUTES_RETRANSMISSIONS, self.executes_retransmissions, {}),
            (FaultKind.SUITE3_ONLY_ACCEPTS_ANY, self.suite3_only_accepts_any, {}),
        ):
            if on:
                found[kind.value] = params
        return found

    def drops(self, rng: random.Random) -> bool:
        """Whether to drop the datagram just received (down, or lost)."""
        return self.down or (self.loss > 0 and rng.random() < self.loss)

    def flaky_failure(self) -> int:
        """Count one chassis command; the completion code to fail it with, or 0."""
        if not self.flaky_every:
            return 0
        self._flaky_count += 1
        return self.flaky_code if self._flaky_count % self.flaky_every == 0 else 0


_FIELDS: dict[FaultKind, tuple[str, ...]] = {
    FaultKind.DOWN: ("down",),
    FaultKind.SLOW: ("slow_delay",),
    FaultKind.LOSSY: ("loss",),
    FaultKind.WRONG_CREDENTIALS: ("wrong_credentials",),
    FaultKind.FLAKY: ("flaky_every", "flaky_code", "_flaky_count"),
    FaultKind.STUCK: ("stuck",),
    FaultKind.EXECUTES_RETRANSMISSIONS: ("executes_retransmissions",),
    FaultKind.SUITE3_ONLY_ACCEPTS_ANY: ("suite3_only_accepts_any",),
}


def _bounded(value: Any, low: float, high: float, name: str) -> float:
    number = float(value)
    if not low <= number <= high:
        raise ValueError(f"{name}={value!r} is outside [{low}, {high}]")
    return number
