"""``powerq batch ACTION …`` (one action on many nodes, paced by the server) and
``powerq batches list|show|cancel``.

A batch is submitted with an ``Idempotency-Key`` and sent again with the same
key when the submit timed out, so a slow server makes neither a false failure
nor a second batch. Its report is one summary line (counts, skipped nodes in
maintenance) and a row for each node that did not succeed (every node with
``-v``). ``--wait`` that gives up says the batch is still running and how to
follow it, and exits 4, never 1: nothing failed.
"""

from __future__ import annotations

import json
from typing import IO, Any

import click

from powerq.clicmds.exits import USAGE, Exit, parse_uuid
from powerq.clicmds.output import Output, client, output_option, progress, styled, table
from powerq.clicmds.power import ACTION
from powerq.client import ApiError, Client, WaitTimeout, poll
from powerq.errors import PowerqError

BAD_STATES = ("failed", "cancelled", "refused")
# A node in one of these states is going well: not listed without -v.
GOING_WELL = ("succeeded", "held", "pending", "running")


def read_node_file(handle: IO[str]) -> list[str]:
    """Node names from a file: one per line (``#`` comments), a JSON list of names,
    or a JSON manifest (objects with ``name``, optionally under ``"nodes"``).

    :raises Exit: (usage, exit 2) the file names no node, or its JSON has no names.
    """
    text = handle.read()
    try:
        document = json.loads(text)
    except ValueError:
        names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        names = [name for name in names if name]
    else:
        if isinstance(document, dict):
            document = document.get("nodes")
        if not isinstance(document, list):
            raise Exit(f"{handle.name}: expected a JSON list of node names or objects", USAGE)
        names = [item["name"] if isinstance(item, dict) else item for item in document]
        if not all(isinstance(name, str) for name in names):
            raise Exit(f"{handle.name}: every entry needs a node name", USAGE)
    if not names:
        raise Exit(f"{handle.name} names no node; nothing was queued", USAGE)
    return names


def _target(
    nodes: tuple[str, ...],
    all_nodes: bool,
    tags: tuple[str, ...],
    name_glob: str | None,
    node_file: IO[str] | None,
) -> dict[str, Any]:
    """The ``nodes`` or ``selector`` member of the batch, from exactly one way of naming them."""
    ways = [bool(nodes), all_nodes, bool(tags or name_glob), node_file is not None]
    if sum(ways) != 1:
        raise click.UsageError("name the nodes one way: NODE..., --all, --tag/--glob, or --file")
    if nodes:
        return {"nodes": list(nodes)}
    if node_file is not None:
        return {"nodes": read_node_file(node_file)}
    if all_nodes:
        return {"selector": {"all": True}}
    selector: dict[str, Any] = {"tags": list(tags)} if tags else {}
    if name_glob:
        selector["name_glob"] = name_glob
    return {"selector": selector}


@click.command("batch")
@click.argument("action", type=ACTION)
@click.argument("nodes", nargs=-1)
@click.option("--all", "all_nodes", is_flag=True, help="Every node.")
@click.option("--tag", "tags", multiple=True, help="Nodes with this tag (repeatable: all of them).")
@click.option("--glob", "name_glob", help="Nodes whose name matches (* and ?).")
@click.option("--file", "node_file", type=click.File("r"), help="Node names, one per line.")
@click.option("--stagger", type=click.FloatRange(0, 3600), default=0.0, show_default=True,
              help="Least seconds between two starts.")  # fmt: skip
@click.option("--max-in-flight", type=click.IntRange(1), help="Most requests running at once.")
@click.option("--deadline", type=click.FloatRange(1, 86400), help="Seconds each action may take.")
@click.option("--batch-deadline", type=click.FloatRange(1, 7 * 86400),
              help="Seconds until requests not started yet fail.")  # fmt: skip
@click.option("--name", help="A label for the batch.")
@click.option("--include-maintenance", is_flag=True,
              help="--all/--tag/--glob: nodes in maintenance too.")  # fmt: skip
@click.option("--wait", is_flag=True, help="Wait for the batch to finish (progress bar).")
@click.option("--timeout", type=click.FloatRange(1), default=3600.0, show_default=True,
              help="With --wait: give up waiting after this many seconds (exit 4).")  # fmt: skip
@click.option("-v", "--verbose", is_flag=True, help="List every node, not only the ones "
              "that did not succeed.")  # fmt: skip
@output_option
def batch(
    action: str,
    nodes: tuple[str, ...],
    all_nodes: bool,
    tags: tuple[str, ...],
    name_glob: str | None,
    node_file: IO[str] | None,
    stagger: float,
    max_in_flight: int | None,
    deadline: float | None,
    batch_deadline: float | None,
    name: str | None,
    include_maintenance: bool,
    wait: bool,
    timeout: float,
    verbose: bool,
    output: Output,
) -> None:
    """Run ACTION (on, off, soft_off, cycle, reset, query) on many nodes.

    The server enforces --max-in-flight and --stagger (across restarts). A node
    whose identical request is outstanding reuses it; one with another action
    outstanding is refused. --all/--tag/--glob leave out nodes in maintenance
    (reported as skipped) unless --include-maintenance; named nodes always run.
    Requests not started by the batch's deadline fail (--batch-deadline;
    `powerq batches cancel ID` cancels them at once). Exits 1 if any node was
    refused or failed, 2 if a named node is unknown (nothing queued), 4 if
    --wait gave up (the batch goes on).

    \b
    powerq batch off --all --wait
    powerq batch on --tag rack1 --stagger 2 --max-in-flight 4 --wait
    """
    body: dict[str, Any] = {"action": action, "stagger_s": stagger,
                            **_target(nodes, all_nodes, tags, name_glob, node_file)}  # fmt: skip
    options = {"max_in_flight": max_in_flight, "deadline_s": deadline,
               "batch_deadline_s": batch_deadline, "name": name}  # fmt: skip
    body.update({key: value for key, value in options.items() if value is not None})
    if include_maintenance:
        body["include_maintenance"] = True
    api = client()
    created = submit(api, body)
    if wait:
        result = wait_for(api, created, timeout, quiet=output.fmt != "table")
    elif len(created["nodes"] or []) < created["total"]:
        result = api.batch(str(created["id"]))  # the answer holds one page of results
    else:
        result = created
    report(result, output, verbose=verbose)


def submit(api: Client, body: dict[str, Any]) -> dict[str, Any]:
    """Create the batch (with an Idempotency-Key, retried on a timeout).

    :raises Exit: a named node is unknown, or no node is left to run on (exit 2).
    :raises ApiError: the API refused the batch otherwise.
    """
    try:
        return api.create_batch(body)
    except ApiError as exc:
        if exc.status == 404:
            raise Exit(f"{exc.detail}; nothing was queued", USAGE) from None
        raise


def wait_for(api: Client, created: dict[str, Any], timeout: float, quiet: bool) -> dict[str, Any]:
    """Poll the batch until it has finished (progress bar unless ``quiet``); return it
    with every node's result (all pages).

    :raises WaitTimeout: not finished after ``timeout`` seconds.
    """
    batch_id = str(created["id"])
    try:
        return _wait(api, created, batch_id, timeout, quiet)
    except WaitTimeout:
        raise WaitTimeout(
            f"batch {batch_id} is still running after {timeout:.0f}s: nothing failed, it goes "
            f"on in the server; follow it with `powerq batches show {batch_id} --wait`"
        ) from None


def _wait(
    api: Client, created: dict[str, Any], batch_id: str, timeout: float, quiet: bool
) -> dict[str, Any]:
    def fetch() -> dict[str, Any]:
        return api.batch(batch_id, results=False)

    def finished(current: dict[str, Any]) -> bool:
        return bool(current["finished"])

    if quiet:
        poll(fetch, finished, timeout=timeout)
    else:
        with progress(created["action"]) as bar:
            task = bar.add_task(created["action"], total=_workload(created))

            def show(current: dict[str, Any]) -> None:
                counts = current["counts"]
                done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
                busy = ", ".join(
                    f"{counts[state]} {state}"
                    for state in ("running", "pending", "held", "failed")
                    if counts[state]
                )
                description = f"{current['action']} {busy}".strip()
                bar.update(task, completed=done, total=_workload(current), description=description)

            poll(fetch, finished, timeout=timeout, on_update=show)
    return api.batch(batch_id)


def _workload(batch: dict[str, Any]) -> int:
    return int(batch["total"]) - int(batch["counts"]["refused"])


def report(batch: dict[str, Any], output: Output, *, verbose: bool = False) -> None:
    """Print the batch: a summary line and the nodes that did not succeed (every
    node with ``verbose``), or the whole batch as JSON.

    :raises PowerqError: a node failed, was cancelled or was refused (exit 1).
    """
    output.note(summary_line(batch))
    shown = [node for node in batch["nodes"] or []
             if verbose or node["state"] not in GOING_WELL]  # fmt: skip
    rows = [
        (
            node["node"],
            styled(node["state"]),
            "reused" if node["outcome"] == "existing" else node["outcome"],
            (node["request"] or node["outstanding"] or {}).get("id"),
            node["error"],
        )
        for node in shown
    ]
    if verbose:
        rows += [(s["node"], styled("skipped"), "skipped", None, s["reason"])
                 for s in batch.get("skipped") or []]  # fmt: skip
    if rows or output.json:
        output.show(table(None, ("NODE", "RESULT", "OUTCOME", "REQUEST", "REASON"), rows), batch)
    counts = batch["counts"]
    bad = {state: counts[state] for state in BAD_STATES if counts[state]}
    if bad:
        parts = ", ".join(f"{count} {state}" for state, count in bad.items())
        raise PowerqError(f"batch {batch['id']}: {parts} of {batch['total']} node(s)")


def _label(batch: dict[str, Any]) -> str:
    """``batch ID`` with its name, if it has one."""
    name = f" {batch['name']!r}" if batch.get("name") else ""
    return f"batch {batch['id']}{name}"


def summary_line(batch: dict[str, Any]) -> str:
    """One line: the batch, its counts, what was skipped, and its deadline or cancel."""
    counts = {state: count for state, count in batch["counts"].items() if count}
    summary = ", ".join(f"{count} {state}" for state, count in counts.items()) or "no node"
    total = batch["total"]
    nodes = f"{total} node" + ("" if total == 1 else "s")
    line = f"{_label(batch)} ({batch['action']}, {nodes}): {summary}"
    skipped = [item["node"] for item in batch.get("skipped") or []]
    if skipped:
        names = ", ".join(skipped[:10]) + (
            f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        )
        line += f"; {len(skipped)} skipped (maintenance): {names}"
    if batch.get("cancelled_at"):
        line += f"; cancelled {batch['cancelled_at']}"
    elif batch.get("deadline_at") and not batch["finished"]:
        line += f"; unstarted requests fail at {batch['deadline_at']}"
    return line


@click.group("batches")
def batches() -> None:
    """Batches made earlier (through the API)."""


@batches.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@output_option
def list_(limit: int, output: Output) -> None:
    """The most recent batches with their counts."""
    page = client().batches(limit=limit)
    rows = [
        (
            item["id"],
            item.get("name"),
            item["created_at"],
            item["action"],
            item["total"],
            _batch_state(item),
            ", ".join(f"{n} {state}" for state, n in item["counts"].items() if n),
            item.get("deadline_at"),
            item["requested_by"],
        )
        for item in page["items"]
    ]
    columns = ("BATCH", "NAME", "CREATED", "ACTION", "NODES", "STATE", "COUNTS", "DEADLINE", "BY")
    output.show(table(f"{page['total']} batches", columns, rows), page)


def _batch_state(batch: dict[str, Any]) -> str:
    if batch.get("cancelled_at"):
        return "cancelled" if batch["finished"] else "cancelled, finishing"
    return "finished" if batch["finished"] else "running"


@batches.command("show")
@click.argument("batch_id")
@click.option("--wait", is_flag=True, help="Wait for the batch to finish.")
@click.option("--timeout", type=click.FloatRange(1), default=3600.0, show_default=True,
              help="With --wait: give up waiting after this many seconds (exit 4).")  # fmt: skip
@click.option("-v", "--verbose", is_flag=True, help="List every node.")
@output_option
def show(batch_id: str, wait: bool, timeout: float, verbose: bool, output: Output) -> None:
    """Show batch BATCH_ID: a summary and the nodes that did not succeed (every node
    with -v). Exits 1 if any failed or was refused."""
    api = client()
    current = api.batch(parse_uuid(batch_id, "batch"))
    if wait and not current["finished"]:
        current = wait_for(api, current, timeout, quiet=output.fmt != "table")
    report(current, output, verbose=verbose)


@batches.command("cancel")
@click.argument("batch_id")
@output_option
def cancel(batch_id: str, output: Output) -> None:
    """Cancel every request of batch BATCH_ID not started yet (running ones finish).

    Each node's desired power state goes back to what it was before. Cancelling
    twice is harmless.
    """
    result = client().cancel_batch(parse_uuid(batch_id, "batch"))
    if output.fmt in ("table", "value"):
        click.echo(cancel_line(result))
        return
    rows = [(e["node"], "cancelled", e["request_id"]) for e in result["cancelled"]]
    rows += [(e["node"], "running", e["request_id"]) for e in result["running"]]
    output.note(cancel_line(result))
    output.show(table(None, ("NODE", "RESULT", "REQUEST"), rows), result)


def cancel_line(result: dict[str, Any]) -> str:
    """One line saying what cancelling a batch did."""
    counts = result["counts"]
    done = (
        f"cancelled {counts['cancelled']} request(s) not started yet"
        if counts["cancelled"]
        else "nothing left to cancel"
    )
    running = f"; {counts['running']} running will finish" if counts["running"] else ""
    return f"batch {result['id']}: {done}{running}"
