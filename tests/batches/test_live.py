"""Batches on real lane workers driving the sim fleet over IPMI: pacing holds.

No wall-clock limits: pacing is checked from the requests' own timestamps
(PostgreSQL's clock), timeouts are only hang guards.
"""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import timedelta

import pytest

from powerq.batches import BatchSpec, create_batch
from powerq.db import session_scope
from powerq.states import Action, PowerState, RequestStatus
from powerq.tasks.batch_pump import dispatch_releases
from powerq.tasks.sweeper import sweep_once
from tests.batches.helpers import requests_of
from tests.batches.live import control_paused, most_at_once, wait_batch
from tests.stack import Stack

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]


def _run(spec: BatchSpec) -> uuid.UUID:
    """Create the batch and publish its first releases, as the API does."""
    with session_scope() as session:
        created = create_batch(session, spec, actor="test")
        batch_id, releases = created.batch.id, created.releases
    dispatch_releases(releases)
    return batch_id


def test_max_in_flight_and_stagger_hold_on_real_workers(live: Stack) -> None:
    names = live.register_fleet(8)
    stagger = timedelta(seconds=0.3)
    batch_id = _run(BatchSpec(Action.OFF, nodes=tuple(names), max_in_flight=3, stagger_s=0.3))

    view = wait_batch(batch_id)

    assert view.counts["succeeded"] == 8, view.counts
    rows = requests_of(batch_id)
    assert all(r.started_at and r.not_before and r.started_at >= r.not_before for r in rows)
    starts = sorted(r.not_before for r in rows if r.not_before)
    assert all(later - earlier >= stagger for earlier, later in itertools.pairwise(starts))
    spans = [(r.started_at, r.finished_at) for r in rows if r.started_at and r.finished_at]
    assert most_at_once(spans) <= 3
    for name in names:
        assert [e["action"] for e in live.power_commands(name)] == ["power_down"]
        assert live.node(name).power_state is PowerState.OFF


def test_the_sim_log_shows_no_more_than_max_in_flight_transitions(live: Stack) -> None:
    names = live.register_fleet(6)
    batch_id = _run(BatchSpec(Action.OFF, nodes=tuple(names), max_in_flight=2))

    assert wait_batch(batch_id).counts["succeeded"] == 6

    # Each BMC's power_down starts its transition; no more than two BMCs may be
    # in transition at once (a request finishes only once its BMC reports off).
    spans = []
    for name in names:
        (entry,) = live.power_commands(name)
        spans.append((entry["transition_start"], entry["transition_end"]))
    assert most_at_once(spans) <= 2


def test_a_batch_goes_on_from_the_sweeper_when_no_pump_runs(live: Stack) -> None:
    names = live.register_fleet(3)
    with control_paused():  # nobody consumes powerq.batch_pump now
        batch_id = _run(BatchSpec(Action.OFF, nodes=tuple(names), max_in_flight=1))
        first = requests_of(batch_id)[0]
        live.wait_finished([first.id])
        time.sleep(1.0)
        assert [r.held for r in requests_of(batch_id)][1:] == [True, True]

        for _ in range(120):  # a sweep after every restart is all a batch needs
            sweep_once()
            if all(r.status is RequestStatus.SUCCEEDED for r in requests_of(batch_id)):
                break
            time.sleep(0.5)
    assert [r.status for r in requests_of(batch_id)] == [RequestStatus.SUCCEEDED] * 3
