"""Rendezvous hashing: every lane has one owner, shares are even, and a join or a
leave moves only the lanes it must (pure logic)."""

from __future__ import annotations

import click
import pytest

from powerq.agent.cli import parse_lanes
from powerq.agent.placement import lanes_of, owner

AGENTS = ["host-a", "host-b", "host-c"]


def _shares(agents: list[str], lanes: int) -> dict[str, set[int]]:
    return {agent: lanes_of(agent, agents, lanes) for agent in agents}


def test_every_lane_has_exactly_one_owner() -> None:
    shares = _shares(AGENTS, 24)

    assert sorted(lane for share in shares.values() for lane in share) == list(range(24))


def test_shares_are_roughly_even_over_many_lanes() -> None:
    shares = _shares(AGENTS, 300)

    assert all(70 <= len(share) <= 130 for share in shares.values()), {
        agent: len(share) for agent, share in shares.items()
    }


def test_the_order_of_the_list_does_not_matter() -> None:
    assert _shares(AGENTS, 24) == _shares(list(reversed(AGENTS)), 24)


def test_a_leaving_agent_moves_only_its_own_lanes() -> None:
    before = _shares(AGENTS, 48)
    after = _shares(["host-a", "host-b"], 48)

    assert before["host-a"] <= after["host-a"]
    assert before["host-b"] <= after["host-b"]
    assert after["host-a"] | after["host-b"] == set(range(48))


def test_a_joining_agent_takes_lanes_and_no_lane_moves_between_the_others() -> None:
    before = _shares(["host-a", "host-b"], 48)
    after = _shares(AGENTS, 48)

    assert after["host-a"] <= before["host-a"]
    assert after["host-b"] <= before["host-b"]
    assert after["host-c"] == (before["host-a"] - after["host-a"]) | (
        before["host-b"] - after["host-b"]
    )
    assert after["host-c"]


def test_an_agent_not_yet_listed_counts_itself() -> None:
    assert lanes_of("host-d", AGENTS, 24) == _shares([*AGENTS, "host-d"], 24)["host-d"]


def test_no_live_agent_is_an_error() -> None:
    with pytest.raises(ValueError, match="no live agent"):
        owner(0, [])


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
