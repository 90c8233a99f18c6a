"""``powerq agent``: run this host's lanes (all of its share, or a given list)."""

from __future__ import annotations

import click

from powerq.config import get_settings


def parse_lanes(text: str) -> frozenset[int] | None:
    """``auto`` (None) or a list such as ``0,1,4-7``.

    :raises click.BadParameter: anything else.
    """
    if text.strip().lower() == "auto":
        return None
    lanes: set[int] = set()
    for part in text.split(","):
        lanes.update(_lane_range(part.strip(), text))
    return frozenset(lanes)


def _lane_range(part: str, text: str) -> range:
    """``K`` or ``K-M`` (M ≥ K) as a range.

    :raises click.BadParameter: anything else (``text`` is named).
    """
    first, dash, last = part.partition("-")
    try:
        start, end = int(first), int(last if dash else first)
    except ValueError:
        raise click.BadParameter(f"{text!r}: give auto or lane numbers such as 0,1,4-7") from None
    if start < 0 or end < start:
        raise click.BadParameter(f"{text!r}: give auto or lane numbers such as 0,1,4-7")
    return range(start, end + 1)


@click.command("agent")
@click.option(
    "--lanes",
    "lanes_text",
    default="auto",
    show_default=True,
    help="auto: share all lanes with the other auto agents (rendezvous hashing); or a list "
    "such as 0-3,6.",
)
@click.option(
    "--name",
    default=None,
    help="This agent's name, unique in the installation [default: the host name].",
)
def agent(lanes_text: str, name: str | None) -> None:
    """Run this host's lane workers under leases in PostgreSQL (one agent per host)."""
    from powerq.agent.run import AgentOptions, default_name, main

    lanes = parse_lanes(lanes_text)
    limit = get_settings().lanes
    if lanes is not None and max(lanes) >= limit:
        message = f"lanes must be 0 … {limit - 1} (POWERQ_LANES={limit})"
        raise click.BadParameter(message, param_hint="--lanes")
    raise SystemExit(main(AgentOptions(name=name or default_name(), lanes=lanes)))
