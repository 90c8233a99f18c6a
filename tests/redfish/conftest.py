"""sushy-tools' emulator as the Redfish BMC under test (see emulator.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from powerq.bmc.base import BmcTarget
from powerq.bmc.redfish import RedfishSession, connect, disconnect, http_sessions
from powerq.bmc.redfish_sessions import SessionCache
from tests.redfish.emulator import PASSWORD, USERNAME, Emulator


@pytest.fixture(scope="module")
def bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One emulated BMC serving one system, over plain HTTP."""
    with Emulator(tmp_path_factory.mktemp("redfish-bmc")) as running:
        yield running


@pytest.fixture(scope="module")
def tls_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One emulated BMC over HTTPS, with a self-signed certificate for 127.0.0.1."""
    with Emulator(tmp_path_factory.mktemp("redfish-tls"), tls=True) as running:
        yield running


@pytest.fixture
def sessions() -> Iterator[SessionCache[RedfishSession]]:
    """A plain-HTTP session cache of this test's own, logged out at the end."""
    cache = http_sessions()
    yield cache
    cache.close_all()


@pytest.fixture
def tls_sessions() -> Iterator[SessionCache[RedfishSession]]:
    """An HTTPS session cache of this test's own (the production one's connect)."""
    cache: SessionCache[RedfishSession] = SessionCache(connect, disconnect)
    yield cache
    cache.close_all()


def target_of(bmc: Emulator, **options: object) -> BmcTarget:
    """A Redfish target on the emulator with the right credentials (unless overridden)."""
    fields: dict[str, object] = {
        "driver": "redfish",
        "address": "127.0.0.1",
        "port": bmc.port,
        "username": USERNAME,
        "password": PASSWORD,
    }
    fields.update(options)
    return BmcTarget(**fields)  # type: ignore[arg-type]
