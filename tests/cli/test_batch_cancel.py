"""``powerq batches cancel`` and batch deadlines against the live API (no workers:
the batch is recorded directly, so no lane is told about its released request)."""

from __future__ import annotations

import json
import uuid

from sqlalchemy.orm import Session

from powerq.states import Action
from tests.batches.helpers import create, requests_of, spec
from tests.cli.conftest import Cli, error_line
from tests.factories import make_node


def _fleet_locking_batch(session: Session, count: int = 3) -> str:
    names = [f"c{i}" for i in range(1, count + 1)]
    for name in names:
        make_node(session, name)
    created = create(session, spec(Action.OFF, names, stagger_s=3600.0, max_in_flight=1))
    return str(created.batch.id)


def test_cancel_says_what_it_cancelled_in_one_line(session: Session, cli: Cli) -> None:
    batch_id = _fleet_locking_batch(session)

    first = cli("batches", "cancel", batch_id, role="operator")
    second = cli("batches", "cancel", batch_id, "--json", role="operator")
    shown = cli("batches", "show", batch_id, "-o", "table", role="reader")
    listed = cli("batches", "list", "-o", "table", role="reader")

    assert first.exit_code == 0, first.output
    assert first.stdout == f"batch {batch_id}: cancelled 3 request(s) not started yet\n"
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["counts"] == {"cancelled": 0, "running": 0}
    assert all(r.status.value == "cancelled" for r in requests_of(uuid.UUID(batch_id)))
    assert "3 cancelled" in shown.stdout and "; cancelled 20" in shown.stdout
    assert "cancelled" in listed.stdout and "DEADLINE" in listed.stdout
    again = cli("batches", "cancel", batch_id, role="operator")
    assert again.stdout == f"batch {batch_id}: nothing left to cancel\n"


def test_cancel_of_an_unknown_batch_or_by_a_reader_fails_with_one_line(
    session: Session, cli: Cli
) -> None:
    batch_id = _fleet_locking_batch(session, 1)

    unknown = cli("batches", "cancel", str(uuid.uuid4()), role="operator")
    malformed = cli("batches", "cancel", "not-a-batch", role="operator")
    by_reader = cli("batches", "cancel", batch_id, role="reader")

    assert "no batch" in error_line(unknown, code=2)
    assert "(HTTP 404)" in error_line(unknown, code=2)
    assert error_line(malformed, code=2) == (
        "Error: no batch 'not-a-batch': batch ids are UUIDs"
    )  # in words, not "nothing at /v1/batches/not-a-batch"
    assert "needs a token with the operator role" in error_line(by_reader, code=2)


def test_a_batch_deadline_too_short_for_the_stagger_is_refused(session: Session, cli: Cli) -> None:
    for name in ("d1", "d2", "d3"):
        make_node(session, name)

    result = cli(
        "batch", "on", "d1", "d2", "d3", "--stagger", "60", "--batch-deadline", "100",
        role="operator",
    )  # fmt: skip

    line = error_line(result, code=2)  # refused as given: a usage error, nothing queued
    assert "need 120s to start the last one" in line and "(HTTP 422)" in line
