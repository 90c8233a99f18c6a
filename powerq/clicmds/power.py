"""``powerq power``, ``powerq requests show`` and ``powerq status``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import click

from powerq.clicmds.output import (
    FINISHED,
    client,
    echo_json,
    key_values,
    out,
    progress,
    request_fields,
    styled,
    table,
)
from powerq.client import ApiError, Client, poll
from powerq.errors import PowerqError
from powerq.states import POWER_ENDPOINT_ACTIONS, BootDevice

ACTION = click.Choice([action.value for action in POWER_ENDPOINT_ACTIONS])
BOOT_DEVICE = click.Choice([device.value for device in BootDevice])
Send = Callable[[str], dict[str, Any]]
# Answers that concern one node only: reported in its row, the others go on.
_PER_NODE_STATUSES = (404, 409, 422)


def _ask(send: Send, name: str) -> dict[str, Any]:
    """Send the request for one node; a refusal or unknown node is a row, not an abort."""
    try:
        answer = send(name)
    except ApiError as exc:
        if exc.status not in _PER_NODE_STATUSES:
            raise
        outcome = "refused" if exc.status == 409 else "error"
        return {"node": name, "outcome": outcome, "request": exc.problem_body.get("outstanding"),
                "error": exc.detail}  # fmt: skip
    outcome = "created" if answer["created"] else "existing"
    return {"node": name, "outcome": outcome, "request": answer["request"], "error": None}


def _state(row: dict[str, Any]) -> str:
    if row["outcome"] in ("refused", "error"):
        return str(row["outcome"])
    return str(row["request"]["status"])


def _wait_requests(api: Client, rows: list[dict[str, Any]], timeout: float, quiet: bool) -> None:
    """Poll the rows' requests until they all finished; update the rows in place."""
    waiting = [row for row in rows if row["outcome"] in ("created", "existing")]

    def fetch() -> list[dict[str, Any]]:
        for row in waiting:
            if row["request"]["status"] not in FINISHED:
                row["request"] = api.request(row["request"]["id"])
        return waiting

    def done(current: list[dict[str, Any]]) -> bool:
        return all(row["request"]["status"] in FINISHED for row in current)

    if quiet or not waiting:
        poll(fetch, done, timeout=timeout)
        return
    with progress("power") as bar:
        task = bar.add_task("power", total=len(waiting))

        def show(current: list[dict[str, Any]]) -> None:
            finished = sum(row["request"]["status"] in FINISHED for row in current)
            bar.update(task, completed=finished)

        poll(fetch, done, timeout=timeout, on_update=show)


@click.command("power")
@click.argument("nodes", nargs=-1, required=True)
@click.argument("action", type=ACTION)
@click.option("--wait", is_flag=True, help="Wait until every request has finished.")
@click.option("--deadline", type=click.FloatRange(1, 86400), help="Seconds each action may take.")
@click.option("--soft-fallback", is_flag=True, help="soft_off: hard off at the deadline.")
@click.option("--timeout", type=click.FloatRange(1), default=900.0, show_default=True,
              help="With --wait: give up waiting after this many seconds.")  # fmt: skip
@click.option(
    "--boot-device",
    type=BOOT_DEVICE,
    help="on/cycle/reset: set this boot device first, in the same request.",
)
@click.option("--persistent-boot", is_flag=True, help="With --boot-device: for every boot.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def power(
    nodes: tuple[str, ...],
    action: str,
    wait: bool,
    deadline: float | None,
    soft_fallback: bool,
    timeout: float,
    boot_device: str | None,
    persistent_boot: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """Request ACTION (on, off, soft_off, cycle, reset, query) on each NODE.

    A node whose identical request is outstanding gets that request; one with
    another action outstanding is refused. Exits 1 if any node was refused or
    (with --wait) did not succeed.
    """
    api = client()
    body: dict[str, Any] = {"action": action}
    if deadline is not None:
        body["deadline_s"] = deadline
    if soft_fallback:
        body["soft_fallback"] = True
    if boot_device is not None:
        body.update(boot_device=boot_device, boot_persistent=persistent_boot)
    run_requests(api, nodes, lambda name: api.power(name, body), wait, timeout, as_json)


def run_requests(
    api: Client, nodes: tuple[str, ...], send: Send, wait: bool, timeout: float, as_json: bool
) -> None:
    """Send one request per node, optionally wait, print the rows.

    :raises PowerqError: a node was refused or unknown, or (with ``wait``) did
        not succeed.
    """
    rows = [_ask(send, name) for name in dict.fromkeys(nodes)]
    if wait:
        _wait_requests(api, rows, timeout, quiet=as_json)
    if as_json:
        echo_json(rows)
    else:
        _print_rows(rows)
    bad = [row for row in rows if _state(row) not in ("succeeded", "pending", "running")]
    if bad or (wait and any(_state(row) != "succeeded" for row in rows)):
        counts = Counter(_state(row) for row in rows if _state(row) != "succeeded")
        raise PowerqError(_tally(counts, len(rows)))


@click.command("boot")
@click.argument("nodes", nargs=-1, required=True)
@click.argument("device", type=BOOT_DEVICE)
@click.option("--persistent", is_flag=True, help="For every boot, not only the next one.")
@click.option("--wait", is_flag=True, help="Wait until every request has finished.")
@click.option("--timeout", type=click.FloatRange(1), default=900.0, show_default=True,
              help="With --wait: give up waiting after this many seconds.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def boot(
    nodes: tuple[str, ...], device: str, persistent: bool, wait: bool, timeout: float,
    as_json: bool,
) -> None:  # fmt: skip
    """Set the boot DEVICE (pxe, disk, cdrom, bios) of each NODE.

    Each is a request on the node's lane, like a power action (refused while
    another request is outstanding). To set it and cycle in one request:
    `powerq power NODE cycle --boot-device pxe`.
    """
    api = client()
    body = {"device": device, "persistent": persistent}
    run_requests(api, nodes, lambda name: api.boot_device(name, body), wait, timeout, as_json)


def _print_rows(rows: list[dict[str, Any]]) -> None:
    table_rows = [
        (
            row["node"],
            row["outcome"],
            styled(_state(row)),
            (row["request"] or {}).get("id"),
            row["error"] or (row["request"] or {}).get("error"),
        )
        for row in rows
    ]
    columns = ("NODE", "OUTCOME", "STATUS", "REQUEST", "REASON")
    out().print(table(None, columns, table_rows))


def _tally(counts: Counter[str], total: int) -> str:
    parts = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    return f"{sum(counts.values())} of {total} node(s) did not succeed: {parts}"


@click.group("requests")
def requests_group() -> None:
    """Power requests (through the API)."""


@requests_group.command("show")
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="Print the request as JSON.")
def show(request_id: str, as_json: bool) -> None:
    """Show power request REQUEST_ID and how its execution went."""
    request = client().request(request_id)
    if as_json:
        echo_json(request)
    else:
        out().print(key_values(f"request {request['id']}", request_fields(request)))


def summarise(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of observed vs desired power, outstanding work and faults."""
    observed = Counter(node["power_state"] for node in nodes)
    desired = Counter(node["desired_power_state"] or "none" for node in nodes)
    sync = Counter(_sync(node) for node in nodes)
    outstanding = Counter(
        node["outstanding_request"]["status"] for node in nodes if node["outstanding_request"]
    )
    faults = [
        {"node": node["name"], "reason": node["power_fault_reason"] or node["last_error"]}
        for node in nodes
        if node["power_fault"]
    ]
    return {
        "nodes": len(nodes),
        "maintenance": sum(bool(node["maintenance"]) for node in nodes),
        "observed": {key: observed[key] for key in ("on", "off", "unknown")},
        "desired": {key: desired[key] for key in ("on", "off", "none")},
        "in_sync": {key: sync[key] for key in ("in_sync", "drifted", "unknown")},
        "outstanding": {key: outstanding[key] for key in ("pending", "running")},
        "faults": faults,
    }


def _sync(node: dict[str, Any]) -> str:
    desired, observed = node["desired_power_state"], node["power_state"]
    if desired is None or observed == "unknown":
        return "unknown"
    return "in_sync" if desired == observed else "drifted"


def _line(counts: dict[str, int]) -> str:
    return " · ".join(f"{value} {key.replace('_', ' ')}" for key, value in counts.items())


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def status(as_json: bool) -> None:
    """Fleet summary: observed vs desired power, outstanding requests, faults."""
    api = client()
    health = api.health()
    summary = {"api": api.base_url, "health": health.get("status"), **summarise(api.nodes())}
    if as_json:
        echo_json(summary)
        return
    outstanding = summary["outstanding"]
    pairs = [
        ("api", f"{summary['api']} ({summary['health']})"),
        ("nodes", f"{summary['nodes']} (maintenance {summary['maintenance']})"),
        ("observed", _line(summary["observed"])),
        ("desired", _line(summary["desired"])),
        ("sync", _line(summary["in_sync"])),
        ("outstanding", f"{sum(outstanding.values())}: {_line(outstanding)}"),
        ("faults", len(summary["faults"])),
    ]
    console = out()
    console.print(key_values("powerq status", pairs))
    if summary["faults"]:
        rows = [(fault["node"], fault["reason"]) for fault in summary["faults"]]
        console.print(table("nodes in power_fault", ("NODE", "REASON"), rows))
