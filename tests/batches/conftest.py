"""Batch tests: the API tests' app, client and per-role token fixtures, and a live
stack (sim fleet, lane workers, control worker) shared by the package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.conftest import admin, app, client, headers, operator, reader  # noqa: F401
from tests.batches.live import live_stack, reset
from tests.stack import Stack

FLEET_SIZE = 10


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, services: object) -> Iterator[Stack]:
    """Real workers against the suite's PostgreSQL and Redis, and a fleet of sim BMCs."""
    with live_stack(tmp_path_factory.mktemp("batch-workers"), FLEET_SIZE) as running:
        yield running


@pytest.fixture
def live(stack: Stack, db: None) -> Stack:
    """The stack with an empty database and every BMC healthy and on."""
    return reset(stack)
