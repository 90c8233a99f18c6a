"""The status page on a live stack: real lane workers drive the simulated IPMI
fleet, the app serves the page and the API over real HTTP, and Chromium clicks.

No wall-clock assertions: "at once" is shown by the desired state changing
while the machine is still on (its power-down takes several seconds), and
every timeout is only a hang guard.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import select

from powerq.bmc.simfleet.launcher import SimFleetProcess
from powerq.db import session_scope
from powerq.models import Node, PowerRequest
from powerq.states import FINISHED_STATUSES, Action, PowerState
from tests.stack import Stack
from tests.ui.conftest import Ui, close_ui, open_ui
from tests.ui.helpers import message, row

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]

FLEET_SIZE = 4
TRANSITION_S = 1.0
# The node clicked off takes this long to power down, so a second click lands
# while its request is still outstanding.
SLOW_TRANSITION_S = 10.0
FOLLOW_TIMEOUT_MS = 90_000
NOTHING = "\u2013"  # what an empty cell shows (an en dash)


@pytest.fixture(scope="module")
def fleet() -> Iterator[SimFleetProcess]:
    """Simulated BMCs over real IPMI; no two power operations may overlap on any."""
    with SimFleetProcess(count=FLEET_SIZE, transition=TRANSITION_S, soft_delay=2.0) as running:
        yield running
        overlaps = running.control.overlaps()
    assert overlaps["total"] == 0, f"power operations overlapped: {overlaps}"


@pytest.fixture(scope="module")
def stack(
    fleet: SimFleetProcess, tmp_path_factory: pytest.TempPathFactory, services: object
) -> Iterator[Stack]:
    """One real lane worker per lane (subprocesses) on the suite's PostgreSQL and Redis."""
    live = Stack(fleet, tmp_path_factory.mktemp("ui-workers"))
    live.start_workers()
    yield live
    live.stop()


@pytest.fixture
def live(stack: Stack, db: None) -> Stack:
    """The stack with an empty database and every machine on, its state known."""
    for bmc in stack.fleet.manifest:
        stack.fleet.control.clear_fault(bmc["name"])
        stack.fleet.control.set_behaviour(bmc["name"], transition=TRANSITION_S, soft_delay=2.0)
        stack.fleet.control.set_power(bmc["name"], "on")
    stack.fleet.control.reset_logs()
    names = stack.register_fleet()
    finished = stack.wait_finished([stack.submit(name, Action.QUERY) for name in names])
    assert all(r.observed_after is PowerState.ON for r in finished.values())
    return stack


def test_an_operator_powers_a_node_off_and_watches_it_happen(
    live: Stack, ui: Ui, browser: Browser, tokens: dict[str, str]
) -> None:
    target = live.fleet.manifest[1]["name"]
    live.fleet.control.set_behaviour(target, transition=SLOW_TRANSITION_S)
    page = ui.sign_in(tokens["operator"])
    expect(page.locator("#nodes tbody tr")).to_have_count(FLEET_SIZE)
    expect(page.locator('#counts [data-count="on"] .count-n')).to_have_text(str(FLEET_SIZE))
    watcher = open_ui(browser, ui.base)  # a reader watching the same fleet
    try:
        reader = watcher.sign_in(tokens["reader"])
        expect(reader.locator("#nodes tbody tr")).to_have_count(FLEET_SIZE)
        assert reader.locator("button[data-action]").count() == 0

        node = row(page, target)
        expect(node.locator(".c-observed .badge")).to_have_text("on")
        node.locator('button[data-action="off"]').click()
        page.click("#confirm-ok")
        expect(message(page, "success")).to_contain_text(f"{target}: Power off requested")

        # The desired state changes at once: while the machine is still on.
        expect(node.locator(".c-desired .badge")).to_have_text("off")
        expect(node.locator(".c-observed .badge")).to_have_text("on")
        expect(node).to_have_attribute("data-condition", "busy")

        # A conflicting click while the power-down is in flight is refused.
        node.locator('button[data-action="cycle"]').click()
        page.click("#confirm-ok")
        expect(message(page, "error")).to_contain_text("refused (409 conflict)")
        expect(message(page, "error")).to_contain_text("busy with a power off request")
        (request,) = live.requests([_only_request(target)]).values()
        assert request.action is Action.OFF

        # The observed state follows once the BMC reports it, on both tabs.
        for tab in (page, reader):
            expect(row(tab, target).locator(".c-observed .badge")).to_have_text(
                "off", timeout=FOLLOW_TIMEOUT_MS
            )
            expect(row(tab, target)).to_have_attribute("data-condition", "ok")
        expect(node.locator(".c-request")).to_have_text(NOTHING)
        expect(page.locator('#counts [data-count="off"] .count-n')).to_have_text("1")
    finally:
        close_ui(watcher)

    (request,) = live.requests([request.id]).values()
    assert request.status in FINISHED_STATUSES and request.observed_after is PowerState.OFF
    actions = [entry["action"] for entry in live.power_commands(target)]
    assert actions == ["power_down"]  # the refused cycle never reached the BMC

    node.locator(".c-name a").click()  # the node page tells the story
    history = page.locator("#history tbody tr")
    expect(history.first).to_contain_text("verified off")
    expect(history.first.locator(".badge")).to_have_text("succeeded")
    kinds = page.locator("#events tbody tr").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert {"requested", "started", "command_sent", "succeeded"} <= set(kinds)


def _only_request(name: str) -> uuid.UUID:
    """The id of the one power request on ``name`` besides the setup query."""
    with session_scope() as session:
        ids = session.scalars(
            select(PowerRequest.id)
            .join(Node)
            .where(Node.name == name, PowerRequest.action != Action.QUERY)
        ).all()
    assert len(ids) == 1, f"expected one request on {name}, found {len(ids)}"
    return ids[0]
