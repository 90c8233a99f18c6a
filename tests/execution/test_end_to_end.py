"""Real lane workers drive the simulated fleet over real IPMI; PostgreSQL records it all.

No wall-clock limits: ordering is compared by timestamps, and timeouts are
only hang guards.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from sqlalchemy import select

from powerq.db import session_scope
from powerq.models import PowerEvent
from powerq.states import Action, DesiredPowerState, PowerState, RequestStatus
from powerq.tasks.routing import lane_for, lane_queue
from powerq.tasks.sweeper import sweep_once
from tests.bmc.helpers import wait_until
from tests.stack import Stack

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]


def _actions(stack: Stack, name: str) -> list[str]:
    return [str(entry["action"]) for entry in stack.power_commands(name)]


def test_off_for_twenty_nodes_sends_one_power_down_each(live: Stack) -> None:
    names = live.register_fleet(20)
    ids = [live.submit(name, Action.OFF) for name in names]

    finished = live.wait_finished(ids)

    assert {r.status for r in finished.values()} == {RequestStatus.SUCCEEDED}
    for name in names:
        assert _actions(live, name) == ["power_down"]
        node = live.node(name)
        assert node.power_state is PowerState.OFF
        assert node.desired_power_state is DesiredPowerState.OFF


def test_on_for_a_node_already_on_sends_nothing(live: Stack) -> None:
    (name,) = live.register_fleet(1)
    finished = live.wait_finished([live.submit(name, Action.ON)])

    (request,) = finished.values()
    assert request.status is RequestStatus.SUCCEEDED
    assert request.command_sent_at is None
    assert _actions(live, name) == []
    assert live.node(name).power_state is PowerState.ON


def test_a_long_soft_off_does_not_hold_up_its_lane(live: Stack) -> None:
    names = live.register_fleet()
    slow, quick = live.same_lane_pair(names)
    live.fleet.control.set_behaviour(slow, soft_delay=8.0)  # far longer than the quick off

    slow_id = live.submit(slow, Action.SOFT_OFF)
    quick_id = live.submit(quick, Action.OFF)
    finished = live.wait_finished([slow_id, quick_id], timeout=180)

    assert finished[slow_id].status is RequestStatus.SUCCEEDED
    assert finished[quick_id].status is RequestStatus.SUCCEEDED
    assert finished[quick_id].finished_at < finished[slow_id].finished_at  # type: ignore[operator]
    assert _actions(live, slow) == ["soft_shutdown"]


def test_a_worker_killed_after_a_cycle_was_sent_executes_each_phase_once(live: Stack) -> None:
    names = live.register_fleet()
    name = names[0]
    lane = lane_for(name, live.lanes)
    live.fleet.control.set_behaviour(name, transition=3.0)
    request_id = live.submit(name, Action.CYCLE)
    _wait_until_sent(live, request_id)

    live.processes.kill(f"lane{lane}")  # SIGKILL the whole worker, mid-request
    live.start_worker(lane)
    finished = _finish_with_sweeper(live, [request_id])

    assert finished[request_id].status is RequestStatus.SUCCEEDED
    assert finished[request_id].evidence == "off_then_on"
    assert _actions(live, name) == ["power_down", "power_up"]  # a cycle: off, then on


def test_the_same_request_delivered_five_times_sends_one_command(live: Stack) -> None:
    from powerq.tasks.dispatch import send_step

    (name,) = live.register_fleet(1)
    request_id = live.submit(name, Action.CYCLE)
    for _ in range(5):
        send_step(request_id, name)

    finished = live.wait_finished([request_id])

    assert finished[request_id].status is RequestStatus.SUCCEEDED
    assert _actions(live, name) == ["power_down", "power_up"]


def test_a_slow_bmc_that_executes_retransmissions_runs_each_command_once(live: Stack) -> None:
    names = live.register_fleet(3)
    for name in names:  # answers after pyghmi would have retransmitted; runs every copy
        live.fleet.control.set_fault(name, "executes_retransmissions")
        live.fleet.control.set_fault(name, "slow", delay=0.8)
    ids = {
        live.submit(names[0], Action.CYCLE): ["power_down", "power_up"],
        live.submit(names[1], Action.RESET): ["hard_reset"],
        live.submit(names[2], Action.OFF): ["power_down"],
    }
    finished = live.wait_finished(list(ids), timeout=120)

    for (request_id, expected), name in zip(ids.items(), names, strict=True):
        assert finished[request_id].status is RequestStatus.SUCCEEDED, finished[request_id].error
        assert _actions(live, name) == expected  # what the BMC executed, from its own log


def test_a_stopping_lane_worker_logs_out_of_its_bmcs(live: Stack) -> None:
    name = live.register_fleet()[-1]  # a BMC no other test (or killed worker) talked to
    lane = lane_for(name, live.lanes)
    request_id = live.submit(name, Action.QUERY)
    live.wait_finished([request_id])
    assert live.fleet.control.bmc(name)["sessions_active"] == 1  # kept warm for reuse

    live.processes.stop(f"lane{lane}")  # SIGTERM: a normal stop
    try:
        wait_until(
            lambda: live.fleet.control.bmc(name)["sessions_active"] == 0,
            timeout=15,
            what="the worker to log out (the BMC itself expires idle sessions after 60 s)",
        )
    finally:
        live.start_worker(lane)


def test_a_stuck_bmc_fails_at_the_deadline_with_a_clear_message(live: Stack) -> None:
    (name,) = live.register_fleet(1)
    live.fleet.control.set_fault(name, "stuck")

    finished = live.wait_finished([live.submit(name, Action.OFF, deadline_s=3)])

    (request,) = finished.values()
    assert request.status is RequestStatus.FAILED
    assert "not verified within 3s" in (request.error or "")
    assert "still reports on" in (request.error or "")
    assert live.node(name).last_error == request.error


def test_a_down_bmc_fails_unreachable_then_faults_then_recovers(live: Stack) -> None:
    (name,) = live.register_fleet(1)
    live.fleet.control.set_fault(name, "down")
    for _ in range(3):
        request_id = live.submit(name, Action.OFF, deadline_s=1)
        (request,) = live.wait_finished([request_id], timeout=180).values()
        assert request.status is RequestStatus.FAILED
        assert "unreachable" in (request.error or "").lower()
    node = live.node(name)
    assert node.power_fault
    assert "3 consecutive failed" in (node.power_fault_reason or "")

    live.fleet.control.clear_fault(name)
    (request,) = live.wait_finished([live.submit(name, Action.OFF)]).values()
    assert request.status is RequestStatus.SUCCEEDED
    assert not live.node(name).power_fault


def test_soft_off_ignored_by_the_os_falls_back_to_hard_off_when_asked(live: Stack) -> None:
    ignoring, refusing = live.register_fleet(2)
    for name in (ignoring, refusing):
        live.fleet.control.set_behaviour(name, soft_delay=None)

    with_fallback = live.submit(ignoring, Action.SOFT_OFF, deadline_s=2, soft_fallback=True)
    without = live.submit(refusing, Action.SOFT_OFF, deadline_s=2)
    finished = live.wait_finished([with_fallback, without])

    assert finished[with_fallback].status is RequestStatus.SUCCEEDED
    assert _actions(live, ignoring) == ["soft_shutdown", "power_down"]
    assert finished[without].status is RequestStatus.FAILED
    assert "soft_off not verified within 2s" in (finished[without].error or "")
    assert _actions(live, refusing) == ["soft_shutdown"]


def test_every_transition_is_audited(live: Stack) -> None:
    (name,) = live.register_fleet(1)
    request_id = live.submit(name, Action.OFF)
    live.wait_finished([request_id])

    with session_scope() as session:
        kinds = session.scalars(
            select(PowerEvent.kind)
            .where(PowerEvent.request_id == request_id)
            .order_by(PowerEvent.id)
        ).all()
    assert kinds == ["requested", "started", "command_sent", "succeeded"]


def test_a_task_message_carries_only_the_request_id(stack: Stack, db: None) -> None:
    from powerq.tasks.dispatch import send_step

    name = stack.fleet.manifest[0]["name"]
    stack.register_fleet(1)
    queue = lane_queue(lane_for(name, stack.lanes))
    stack.processes.stop(f"lane{lane_for(name, stack.lanes)}")  # nobody consumes the lane
    try:
        client = redis.Redis.from_url(stack_broker())
        client.delete(queue)
        request_id = live_request(stack, name)
        send_step(request_id, name)
        raw = client.lrange(queue, 0, -1)
    finally:
        stack.start_worker(lane_for(name, stack.lanes))

    assert raw, "the message waits in the lane's Redis list"
    message = json.loads(raw[-1])
    import base64

    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [str(request_id)] and kwargs == {}
    row = stack.fleet.manifest[0]
    text = raw[-1].decode()
    for secret in (row["password"], row["username"], f'"{row["port"]}"', row["address"]):
        assert secret not in text
    # The node's name is shown (Flower, worker logs), never used: only in kwargsrepr.
    assert message["headers"]["kwargsrepr"] == repr({"node": name})
    assert text.count(name) == 1


def stack_broker() -> str:
    from powerq.config import get_settings

    url = get_settings().broker_url
    assert url
    return url


def live_request(stack: Stack, name: str) -> object:
    from powerq.intents import find_node, request_power

    with session_scope() as session:
        node = find_node(session, name)
        return request_power(session, node, Action.QUERY, actor="test").request.id


def _wait_until_sent(stack: Stack, request_id: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (request,) = stack.requests([request_id]).values()  # type: ignore[list-item]
        if request.command_sent_at is not None:
            return
        time.sleep(0.05)
    raise TimeoutError("the command was never sent")


def _finish_with_sweeper(stack: Stack, ids: list, timeout: float = 120) -> dict:  # type: ignore[type-arg]
    """Run the sweeper (as beat would) until the requests finish."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep_once()
        try:
            return stack.wait_finished(ids, timeout=1)
        except TimeoutError:
            continue
    return stack.wait_finished(ids, timeout=1)
