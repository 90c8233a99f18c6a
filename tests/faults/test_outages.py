"""Fault injection: no outage loses a request, overlaps a BMC, or cycles a machine twice.

Every test runs real workers, beat and the control worker as subprocesses
against the simulated fleet, on throwaway services. Timeouts are hang guards.
"""

from __future__ import annotations

import random
import signal
import time
import uuid

import pytest
from sqlalchemy import select, update

from powerq.db import session_scope
from powerq.models import Node, PowerEvent
from powerq.states import Action, PowerState, RequestStatus
from tests.faults.conftest import FaultStack, StackFactory

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.ipmi]


def _submit_all(stack: FaultStack, action: Action) -> list[uuid.UUID]:
    return [stack.submit(row["name"], action) for row in stack.fleet.manifest]


def _mixed(stack: FaultStack) -> list[uuid.UUID]:
    actions = [Action.OFF, Action.CYCLE, Action.OFF, Action.RESET]
    return [
        stack.submit(row["name"], actions[i % len(actions)])
        for i, row in enumerate(stack.fleet.manifest)
    ]


def _assert_in_flight(stack: FaultStack, ids: list[uuid.UUID]) -> int:
    """The fault is about to hit work in flight: some requests are outstanding now.
    Returns how many (the test then proves none of them is lost)."""
    outstanding = [
        r for r in stack.requests(ids).values()
        if r.status in (RequestStatus.PENDING, RequestStatus.RUNNING)
    ]  # fmt: skip
    assert outstanding, "the fault would hit nothing: every request already finished"
    return len(outstanding)


def _all_succeeded(stack: FaultStack, ids: list[uuid.UUID], timeout: float = 240) -> None:
    finished = stack.wait_finished(ids, timeout=timeout)
    failed = [
        (r.node_id, r.error) for r in finished.values() if r.status != RequestStatus.SUCCEEDED
    ]
    assert not failed, failed[:5]
    stack.assert_clean_run(ids)


def test_flushall_with_200_requests_outstanding(fault_stack: StackFactory) -> None:
    stack = fault_stack(nodes=200)
    ids = _mixed(stack)
    _assert_in_flight(stack, ids)
    assert stack.redis.client().dbsize() > 0  # their messages are in Redis now ...
    stack.redis.flushall()  # ... and every queued, unacked and scheduled one is gone
    _all_succeeded(stack, ids)


def test_redis_killed_and_restarted_mid_run(fault_stack: StackFactory) -> None:
    stack = fault_stack(nodes=60)
    ids = _mixed(stack)
    time.sleep(1.5)
    _assert_in_flight(stack, ids)
    stack.redis.kill()
    time.sleep(3)
    stack.redis.start()  # same port, empty
    _all_succeeded(stack, ids)


def test_postgres_restarted_mid_run(fault_stack: StackFactory) -> None:
    stack = fault_stack(nodes=40, own_postgres=True)
    ids = _mixed(stack)
    time.sleep(1.5)
    assert stack.postgres is not None
    _assert_in_flight(stack, ids)
    stack.postgres.stop()
    time.sleep(3)
    stack.postgres.start()
    _all_succeeded(stack, ids)


def test_lane_worker_sigkilled_repeatedly(fault_stack: StackFactory) -> None:
    stack = fault_stack(nodes=40, transition=2.0)
    ids = _mixed(stack)
    kills_mid_request = 0
    for _ in range(3):
        time.sleep(random.uniform(0.5, 2.0))
        running = [r for r in stack.requests(ids).values() if r.status is RequestStatus.RUNNING]
        kills_mid_request += bool(running)
        for lane in range(stack.lanes):
            stack.processes.kill(f"lane{lane}", signal.SIGKILL)
            stack.start_worker(lane, wait=False)
    assert kills_mid_request, "no kill hit a running request: the test proved nothing"
    _all_succeeded(stack, ids)


def test_beat_stopped_for_a_while_then_restarted(fault_stack: StackFactory) -> None:
    # One BMC at a time per lane: most wake-ups wait in Redis, where the flush
    # drops them (what a lane worker already holds, it runs to the end).
    stack = fault_stack(nodes=12, transition=1.0, env={"POWERQ_LANE_FANOUT": "1"})
    stack.processes.stop("beat")
    ids = _mixed(stack)
    _assert_in_flight(stack, ids)
    stack.redis.flushall()  # only the sweeper can bring these back
    time.sleep(8)  # 8 sweep periods and 2 re-dispatch periods of this stack, without beat
    stuck = [
        r for r in stack.requests(ids).values()
        if r.status in (RequestStatus.PENDING, RequestStatus.RUNNING)
    ]  # fmt: skip
    assert stuck, "without beat nothing re-dispatches the messages the flush dropped"
    stack.start_beat()
    _all_succeeded(stack, ids)


def test_a_down_bmc_fails_unreachable_faults_and_recovers(fault_stack: StackFactory) -> None:
    stack = fault_stack(nodes=2)
    name = stack.fleet.manifest[0]["name"]
    stack.fleet.control.set_fault(name, "down")
    for _ in range(3):
        request_id = stack.submit(name, Action.ON, deadline_s=1)
        (request,) = stack.wait_finished([request_id], timeout=180).values()
        assert request.status is RequestStatus.FAILED
        assert "unreachable" in (request.error or "").lower()
    assert stack.node(name).power_fault

    stack.fleet.control.clear_fault(name)
    _wait_for(lambda: not stack.node(name).power_fault, "monitor clears the power fault")
    assert _events(name, "power_fault_cleared")


def test_drift_is_reported_corrected_and_left_alone_in_maintenance(
    fault_stack: StackFactory,
) -> None:
    stack = fault_stack(nodes=2, env={"POWERQ_ENFORCE_DESIRED": "true"})
    corrected, maintained = (row["name"] for row in stack.fleet.manifest)
    ids = [stack.submit(corrected, Action.ON), stack.submit(maintained, Action.ON)]
    _all_succeeded(stack, ids)
    with session_scope() as session:
        session.execute(update(Node).where(Node.name == maintained).values(maintenance=True))

    for name in (corrected, maintained):
        stack.fleet.control.set_power(name, "off")  # behind powerq's back

    _wait_for(lambda: _events(corrected, "drift") and _events(maintained, "drift"), "drift events")
    _wait_for(lambda: stack.node(corrected).power_state is PowerState.ON, "drift corrected")
    assert stack.fleet.control.bmc(corrected)["power"] == "on"
    time.sleep(5)  # several monitor periods
    assert stack.fleet.control.bmc(maintained)["power"] == "off"
    assert stack.node(maintained).power_state is PowerState.OFF


def _events(name: str, kind: str) -> list[str]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(PowerEvent.actor)
                .join(Node, Node.id == PowerEvent.node_id)
                .where(Node.name == name, PowerEvent.kind == kind)
            ).all()
        )


def _wait_for(condition: object, what: str, timeout: float = 120) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise TimeoutError(f"timed out waiting for: {what}")
