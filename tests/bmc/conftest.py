"""Fixtures for the BMC layer: one simulated fleet per test session, a fresh BMC per test."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from powerq.bmc.simfleet.launcher import SimFleetProcess
from tests.bmc.helpers import FLEET_SIZE, SOFT_DELAY, TRANSITION, SimBmc


class _Pool:
    """Hands out each BMC of the fleet once, so tests never share state."""

    def __init__(self, fleet: SimFleetProcess) -> None:
        self._rows = list(zip(fleet.manifest, fleet.targets(), strict=True))
        self._control = fleet.control
        self._lock = threading.Lock()

    def take(self) -> SimBmc:
        with self._lock:
            if not self._rows:
                raise RuntimeError(f"all {FLEET_SIZE} sim BMCs used: raise FLEET_SIZE")
            row, target = self._rows.pop(0)
        return SimBmc(row["name"], target, self._control)


@pytest.fixture(scope="session")
def fleet() -> Iterator[SimFleetProcess]:
    """A running simulated fleet (subprocess), shared by the whole session."""
    with SimFleetProcess(FLEET_SIZE, transition=TRANSITION, soft_delay=SOFT_DELAY) as running:
        yield running


@pytest.fixture(scope="session")
def pool(fleet: SimFleetProcess) -> _Pool:
    return _Pool(fleet)


@pytest.fixture
def bmc(pool: _Pool) -> SimBmc:
    """A BMC no other test touched: off, no faults, default delays."""
    return pool.take()


@pytest.fixture
def make_bmc(pool: _Pool) -> Callable[[], SimBmc]:
    """For tests that need several fresh BMCs."""
    return pool.take
