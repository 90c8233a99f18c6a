"""An agent loads what its workers need before it announces itself.

The first heartbeat makes the other agents hand it lanes; from then on it
must heartbeat every tick. Importing the lane workers' modules and drivers
takes seconds on a loaded host (13 s was seen, with a 4 s lease): done after
registering, the others handed lanes over, took them back when its heartbeat
expired, and handed them over again.
"""

from __future__ import annotations

import pytest

from powerq.agent.run import Agent, AgentOptions


def test_preload_comes_before_the_first_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    agent = Agent(AgentOptions(name="starting"))

    def register() -> None:
        calls.append("register")
        agent.stopping = True  # as a SIGTERM would: end the run here

    monkeypatch.setattr(agent, "_preload", lambda: calls.append("preload"))
    monkeypatch.setattr(agent, "_register", register)
    monkeypatch.setattr(agent, "stop", lambda: None)

    assert agent.run() == 0
    assert calls == ["preload", "register"]


def test_a_lane_whose_worker_cannot_start_is_given_back(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.agent.agents import holders

    agent = Agent(AgentOptions(name="no-fork", settle=False))

    def cannot_fork(lane: int, fence: int) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(agent, "_fork_worker", cannot_fork)
    agent._register()
    agent.tick()

    assert agent.held == {}
    assert holders() == {}  # not kept with no worker: free for the next try, or another agent
