"""``powerq power``, ``powerq boot``, ``powerq requests show|list|cancel`` and
``powerq status``.

Every node named is checked before anything is queued: one unknown name ends
the command with exit 2 and one line naming the unknown ones, and nothing was
asked of the others. Without ``--wait`` a request the API accepted (new or the
identical outstanding one) is a success; with ``--wait`` only a succeeded one
is.

Each node's request carries an ``Idempotency-Key`` of its own for this
invocation (:func:`keyed`) and is sent again with it when its answer was lost
(:meth:`powerq.client.Client.submit`), so a slow API never makes a node run an
action twice. A node that still cannot be submitted ends the command (exit 3)
after the rows of the nodes already handled are printed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import click

from powerq.clicmds.exits import USAGE, Exit, code_for
from powerq.clicmds.output import (
    FINISHED,
    Output,
    client,
    key_values,
    output_option,
    progress,
    styled,
    table,
)
from powerq.client import (
    ApiError,
    ApiUnreachable,
    Client,
    WaitTimeout,
    new_key,
    node_key,
    poll,
)
from powerq.errors import PowerqError
from powerq.states import POWER_ENDPOINT_ACTIONS, BootDevice

# Actions and devices in any case (`ON` is `on`); the API itself stays strict.
ACTION = click.Choice([action.value for action in POWER_ENDPOINT_ACTIONS], case_sensitive=False)
BOOT_DEVICE = click.Choice([device.value for device in BootDevice], case_sensitive=False)
Send = Callable[[str], dict[str, Any]]
# Submits one node's request with its Idempotency-Key: (node name, key) -> the answer.
KeyedSend = Callable[[str, str], dict[str, Any]]
# Answers that concern one node only: reported in its row, the others go on.
_PER_NODE_STATUSES = (404, 409, 422)
# A row that counts as done without --wait: the API accepted the request.
_ACCEPTED = ("pending", "running", "succeeded")


def keyed(submit: KeyedSend) -> Send:
    """``submit`` as a :data:`Send` that gives each node an ``Idempotency-Key`` of its
    own for this command invocation (:func:`~powerq.client.node_key`): a retry
    within it is answered with what the first try recorded, a new invocation is
    a new request."""
    invocation = new_key()
    return lambda name: submit(name, node_key(invocation, name))


def _ask(send: Send, name: str, *, alone: bool = False) -> dict[str, Any]:
    """Send the request for one node; a refusal (or a node deleted since the
    names were checked) is a row, not an abort.

    :raises Exit: ``alone`` (the only node named) and unknown (exit 2).
    :raises ApiError: the API failed otherwise.
    :raises ApiUnreachable: the API could not be reached (after the retries).
    """
    try:
        answer = send(name)
    except ApiError as exc:
        if exc.status == 404 and alone:
            raise Exit(f"no node named {name!r}; nothing was queued", USAGE) from None
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
@output_option
def power(
    nodes: tuple[str, ...],
    action: str,
    wait: bool,
    deadline: float | None,
    soft_fallback: bool,
    timeout: float,
    boot_device: str | None,
    persistent_boot: bool,
    output: Output,
) -> None:  # fmt: skip
    """Request ACTION (on, off, soft_off, cycle, reset, query) on each NODE.

    Every NODE is checked first: an unknown one queues nothing (exit 2). A node
    whose identical request is outstanding gets that request; one with another
    action outstanding is refused. `query --wait` prints each node's power
    state. Exits 1 if any node was refused or (with --wait) did not succeed.
    """
    api = client()
    body: dict[str, Any] = {"action": action}
    if deadline is not None:
        body["deadline_s"] = deadline
    if soft_fallback:
        body["soft_fallback"] = True
    if boot_device is not None:
        body.update(boot_device=boot_device, boot_persistent=persistent_boot)
    shows_state = action == "query" and wait
    send = keyed(lambda name, key: api.power(name, body, key))
    run_requests(api, nodes, send, wait, timeout, output, shows_state=shows_state)


def check_names(api: Client, nodes: tuple[str, ...]) -> None:
    """Make sure every name is a node before anything is asked of any.

    One name needs no look-up: its own request answers 404 and queues nothing.

    :raises Exit: some names are unknown (exit 2), naming them.
    """
    if len(set(nodes)) < 2:
        return
    missing = api.unknown_nodes(nodes)
    if missing:
        shown = ", ".join(repr(name) for name in missing)
        raise Exit(f"no node named {shown}; nothing was queued", USAGE)


def run_requests(
    api: Client,
    nodes: tuple[str, ...],
    send: Send,
    wait: bool,
    timeout: float,
    output: Output,
    *,
    shows_state: bool = False,
) -> None:
    """Check the names, send one request per node, optionally wait, print the rows.

    :raises Exit: a node is unknown (exit 2; nothing was queued), or one could
        not be submitted (its exit code; the rows of those before are printed).
    :raises PowerqError: a node was refused, or (with ``wait``) did not succeed.
    :raises WaitTimeout: ``wait`` gave up (exit 4; the requests go on).
    """
    check_names(api, nodes)
    names = list(dict.fromkeys(nodes))
    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            rows.append(_ask(send, name, alone=len(names) == 1))
        except PowerqError as exc:
            if not rows and getattr(exc, "tries", 1) == 1:
                raise  # one failure, before anything was queued: its own line
            if rows:
                _print_rows(rows, output)  # what was queued before the failure
            raise _stopped_at(exc, name, len(names) - len(rows) - 1, bool(rows)) from None
    try:
        if wait:
            _wait_requests(api, rows, timeout, quiet=output.fmt != "table")
    except WaitTimeout:
        _print_rows(rows, output)  # where each stands now
        unfinished = sum(_state(row) in ("pending", "running") for row in rows)
        raise WaitTimeout(
            f"{unfinished} request(s) still unfinished after {timeout:.0f}s: nothing failed, "
            "they go on in the server; follow one with `powerq requests show ID`"
        ) from None
    if shows_state:
        _print_states(rows, output)
    else:
        _print_rows(rows, output)
    done = ("succeeded",) if wait else _ACCEPTED
    counts = Counter(_state(row) for row in rows if _state(row) not in done)
    if counts:
        raise PowerqError(_tally(counts, len(rows)))


@click.command("boot")
@click.argument("nodes", nargs=-1, required=True)
@click.argument("device", type=BOOT_DEVICE)
@click.option("--persistent", is_flag=True, help="For every boot, not only the next one.")
@click.option("--wait", is_flag=True, help="Wait until every request has finished.")
@click.option("--timeout", type=click.FloatRange(1), default=900.0, show_default=True,
              help="With --wait: give up waiting after this many seconds.")  # fmt: skip
@output_option
def boot(
    nodes: tuple[str, ...], device: str, persistent: bool, wait: bool, timeout: float,
    output: Output,
) -> None:  # fmt: skip
    """Set the boot DEVICE (pxe, disk, cdrom, bios) of each NODE.

    Each is a request on the node's lane, like a power action (refused while
    another request is outstanding). To set it and cycle in one request:
    `powerq power NODE cycle --boot-device pxe`.
    """
    api = client()
    body = {"device": device, "persistent": persistent}
    send = keyed(lambda name, key: api.boot_device(name, body, key))
    run_requests(api, nodes, send, wait, timeout, output)


def _stopped_at(exc: PowerqError, name: str, after: int, handled_any: bool) -> Exit:
    """The failure that stopped the requests at node ``name`` (``after``: the nodes
    not asked yet), with its exit code, once the rows before it were printed."""
    count = getattr(exc, "tries", 1)
    tries = f" ({count} tries)" if count > 1 else ""
    if getattr(exc, "maybe_sent", False):  # a try timed out or lost its connection
        fate = "may have been queued"
    elif isinstance(exc, ApiUnreachable) or (isinstance(exc, ApiError) and exc.status == 503):
        fate = "was not queued"  # refused connections, 503s: nothing was recorded
    else:
        fate = "failed"
    rest = f", {after} node(s) after it were not asked" if after else ""
    handled = "; the rows printed above were handled" if handled_any else ""
    return Exit(f"{exc}{tries}: stopped at {name!r}, which {fate}{rest}{handled}", code_for(exc))


def _reason(row: dict[str, Any]) -> Any:
    return row["error"] or (row["request"] or {}).get("error")


def _print_rows(rows: list[dict[str, Any]], output: Output) -> None:
    table_rows = [
        (row["node"], row["outcome"], styled(_state(row)), (row["request"] or {}).get("id"),
         _reason(row))
        for row in rows
    ]  # fmt: skip
    columns = ("NODE", "OUTCOME", "STATUS", "REQUEST", "REASON")
    output.show(table(None, columns, table_rows), rows)


def _print_states(rows: list[dict[str, Any]], output: Output) -> None:
    """What a waited query read: ``NODE  POWER`` (the reason when it failed)."""
    table_rows = []
    for row in rows:
        request = row["request"] or {}
        read = request.get("observed_after") if _state(row) == "succeeded" else None
        table_rows.append((row["node"], styled(read or _state(row)), _reason(row)))
    output.show(table(None, ("NODE", "POWER", "REASON"), table_rows), rows)


def _tally(counts: Counter[str], total: int) -> str:
    parts = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    return f"{sum(counts.values())} of {total} node(s) did not succeed: {parts}"


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


def _lanes_line(lanes: dict[str, int] | None) -> str:
    """``8 of 8 held by 2 agents``; ``unknown`` from an API that does not say."""
    if not lanes:
        return "unknown"
    agents = lanes["agents"]
    return f"{lanes['held']} of {lanes['total']} held by {agents} agent{'' if agents == 1 else 's'}"


@click.command("status")
@output_option
def status(output: Output) -> None:
    """Fleet summary: observed vs desired power, outstanding requests, faults."""
    api = client()
    health = api.health()
    summary = {
        "api": api.base_url,
        "health": health.get("status"),
        "lanes": health.get("lanes"),
        **summarise(api.nodes()),
    }
    outstanding = summary["outstanding"]
    pairs = [
        ("api", f"{summary['api']} ({summary['health']})"),
        ("nodes", f"{summary['nodes']} (maintenance {summary['maintenance']})"),
        ("observed", _line(summary["observed"])),
        ("desired", _line(summary["desired"])),
        ("sync", _line(summary["in_sync"])),
        ("outstanding", f"{sum(outstanding.values())}: {_line(outstanding)}"),
        ("lanes", _lanes_line(summary["lanes"])),
        ("faults", len(summary["faults"])),
    ]
    output.show(key_values("powerq status", pairs), summary)
    if summary["faults"] and not output.json:
        rows = [(fault["node"], fault["reason"]) for fault in summary["faults"]]
        output.show(table("nodes in power_fault", ("NODE", "REASON"), rows))
