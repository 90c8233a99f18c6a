"""Rendezvous hashing with bounded load: every lane has one owner, shares differ
by one lane at most, and a join or a leave moves few lanes besides its own
(pure logic)."""

from __future__ import annotations

import click
import pytest

from powerq.agent.cli import parse_lanes
from powerq.agent.placement import assignment, lanes_of

AGENTS = ["host-a", "host-b", "host-c"]


def _shares(agents: list[str], lanes: int) -> dict[str, set[int]]:
    return {agent: lanes_of(agent, agents, lanes) for agent in agents}


def test_every_lane_has_exactly_one_owner() -> None:
    shares = _shares(AGENTS, 24)

    assert sorted(lane for share in shares.values() for lane in share) == list(range(24))


@pytest.mark.parametrize("lanes", [2, 4, 5, 8, 24, 100])
@pytest.mark.parametrize("agents", [2, 3, 4, 7])
def test_shares_differ_by_one_lane_at_most(lanes: int, agents: int) -> None:
    names = [f"host-{n}" for n in range(agents)]
    sizes = sorted(len(share) for share in _shares(names, lanes).values())

    assert sizes[-1] - sizes[0] <= 1
    assert sum(sizes) == lanes


def test_the_order_of_the_list_does_not_matter() -> None:
    assert _shares(AGENTS, 24) == _shares(list(reversed(AGENTS)), 24)


@pytest.mark.parametrize(("lanes", "agents"), [(4, 3), (8, 3), (24, 3), (24, 4), (48, 4)])
def test_a_leave_moves_the_leavers_lanes_and_few_others(lanes: int, agents: int) -> None:
    names = [f"host-{n}" for n in range(agents)]
    before = assignment(names, lanes)
    after = assignment(names[:-1], lanes)  # the last one left (a join is the reverse)

    leavers = [lane for lane, owner in before.items() if owner == names[-1]]
    moved_between_others = [
        lane for lane in range(lanes) if before[lane] != after[lane] and lane not in leavers
    ]
    assert len(moved_between_others) <= max(1, len(leavers) // 3)


def test_an_agent_not_yet_listed_counts_itself() -> None:
    assert lanes_of("host-d", AGENTS, 24) == _shares([*AGENTS, "host-d"], 24)["host-d"]


def test_no_live_agent_is_an_error() -> None:
    with pytest.raises(ValueError, match="no live agent"):
        assignment([], 4)


@pytest.mark.parametrize(
    ("text", "lanes"),
    [("auto", None), ("AUTO", None), ("3", {3}), ("0,2,4-6", {0, 2, 4, 5, 6}), ("1-1", {1})],
)
def test_lane_lists(text: str, lanes: set[int] | None) -> None:
    assert parse_lanes(text) == (None if lanes is None else frozenset(lanes))


@pytest.mark.parametrize("text", ["", "x", "1,,2", "a-b", "3-", "5-2", "-1"])
def test_bad_lane_lists_name_the_input(text: str) -> None:
    with pytest.raises(click.BadParameter, match="auto or lane numbers"):
        parse_lanes(text)
