"""The POST hot path writes a new request's JSON from its row without pydantic
(powerq.api.rowjson): it must be exactly what the models dump."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy.orm import Session

from powerq.api.rowjson import converters, request_json
from powerq.api.serializers import PowerRequestOut
from powerq.db import session_scope
from powerq.intents import record_new
from powerq.models import PowerRequest
from powerq.states import Action, BootDevice, Evidence, PowerState, RequestStatus, Step
from tests.api.test_record_new import CASES
from tests.factories import make_node


def _pydantic(row: dict[str, Any], node: str) -> dict[str, Any]:
    fields = {name: row[name] for name in PowerRequestOut.model_fields if name != "node"}
    return PowerRequestOut(node=node, **fields).model_dump(mode="json")


@pytest.mark.parametrize("options", CASES, ids=[str(c["action"]) for c in CASES])
def test_a_recorded_row_is_written_as_the_model_dumps_it(
    session: Session, options: dict[str, Any]
) -> None:
    make_node(session, "node-1")
    with session_scope() as s:
        row = record_new(s, "node-1", actor="alice", **options)
    assert row is not None

    assert request_json(row, "node-1") == _pydantic(row, "node-1")


def test_every_kind_of_value_is_written_as_the_model_dumps_it() -> None:
    plus_two = timezone(timedelta(hours=2))
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "action": Action.CYCLE,
        "status": "running",  # a plain string where the model has an enum
        "attempt": 2,
        "next_step": Step.CHECK,
        "checks": 3,
        "deadline_s": 60,  # an int where the model has a float: 60.0
        "deadline_at": datetime(2030, 1, 2, 3, 4, 5, tzinfo=plus_two),
        "soft_fallback": False,
        "not_before": None,
        "dispatched_at": datetime(2030, 1, 2, 3, 4, 5, 100000, tzinfo=UTC),
        "dispatch_count": 1,
        "lease_expires_at": datetime(2030, 1, 2, 3, 4, 5, 1, tzinfo=UTC),
        "command_sent": Action.OFF,
        "command_sent_at": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        "command_acked_at": None,
        "transition_seen_at": None,
        "evidence": Evidence.OFF_THEN_ON,
        "start_by": None,
        "started_at": datetime(2030, 1, 2, 3, 4, tzinfo=UTC),
        "finished_at": None,
        "observed_before": PowerState.ON,
        "observed_after": None,
        "error": 'ünïcode "quoted"',
        "requested_by": "alice",
        "batch_id": uuid.uuid4(),
        "idempotency_key": "k-1",
        "created_at": datetime(2030, 1, 2, tzinfo=UTC),
        "updated_at": datetime(2030, 1, 2, tzinfo=UTC),
    }
    assert set(row) | {"node"} == set(PowerRequestOut.model_fields)
    assert set(row) <= {c.name for c in PowerRequest.__table__.c}
    assert RequestStatus(row["status"]) is RequestStatus.RUNNING

    assert request_json(row, "node-1") == _pydantic(row, "node-1")
    assert request_json(row, "node-1")["deadline_s"] == 60.0


def test_a_field_of_an_unknown_kind_is_refused_when_the_module_loads() -> None:
    class Odd(BaseModel):
        tags: list[str]

    with pytest.raises(ValueError, match="no converter"):
        converters(Odd)


def test_boot_device_rows_too(session: Session) -> None:
    make_node(session, "node-2")
    with session_scope() as s:
        row = record_new(
            s, "node-2", Action.ON, actor="bob", boot_device=BootDevice.DISK, deadline_s=120
        )
    assert row is not None

    assert request_json(row, "node-2") == _pydantic(row, "node-2")
