"""Every action's button on the status page: soft off, reset, query, the cancel
of a pending request, maintenance on/off with a reason, and what each role
may press. Each test checks the request reached the database and the answer
was shown (202, 200, 409, 403, 422 alike). No workers run: requests stay pending.
"""

from __future__ import annotations

from playwright.sync_api import Page, expect
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from powerq.models import Node, PowerRequest
from tests.ui.conftest import Ui
from tests.ui.helpers import add_request, message, node_in_state, row

NOTHING = "\u2013"  # an en dash: the page's "nothing here"


def requests_of(session: Session, name: str) -> list[tuple[str, str]]:
    """(action, status) of the node's requests, oldest first."""
    session.expire_all()
    rows = session.execute(
        select(PowerRequest.action, PowerRequest.status)
        .join(Node)
        .where(Node.name == name)
        .order_by(PowerRequest.created_at)
    )
    return [(action.value, status.value) for action, status in rows]


def open_more(page: Page, name: str) -> None:
    """Open the row's "More" menu (it stays open while the row refreshes)."""
    menu = row(page, name).locator(".more-actions")
    if menu.get_attribute("open") is None:
        menu.locator("summary").click()


def test_soft_off_reset_and_query_are_requested_and_answered(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1", observed="on", desired="on")
    node_in_state(session, "n2", observed="on", desired="on")
    page = ui.sign_in(tokens["operator"], "/nodes/n1")

    page.locator('#node-actions button[data-action="soft_off"]').click()
    expect(page.locator("#confirm-title")).to_have_text("Soft off n1?")
    expect(page.locator("#confirm-text")).to_contain_text("shut down (ACPI)")
    page.click("#confirm-ok")
    expect(message(page, "success")).to_contain_text("n1: Soft off requested")
    expect(message(page, "success")).to_contain_text("Desired state is now off")
    expect(page.locator("#n-outstanding")).to_contain_text("soft off")
    assert requests_of(session, "n1") == [("soft_off", "pending")]

    page.locator('#node-actions button[data-action="reset"]').click()
    expect(page.locator("#confirm-title")).to_have_text("Reset n1?")
    page.click("#confirm-ok")
    refused = message(page, "error")
    expect(refused).to_contain_text("n1: Reset refused (409 conflict)")
    expect(refused).to_contain_text("busy with a soft off request (pending")
    expect(refused).to_contain_text("or cancel the pending one")

    page.locator('#node-actions button[data-action="query"]').click()  # no confirmation
    expect(message(page, "error").first).to_contain_text("n1: Query refused (409 conflict)")
    assert requests_of(session, "n1") == [("soft_off", "pending")]

    page.goto(ui.base + "/nodes/n2")
    page.locator('#node-actions button[data-action="query"]').click()
    expect(message(page, "success")).to_contain_text("n2: Query requested")
    expect(message(page, "success")).to_contain_text("will read the BMC's power state")
    expect(page.locator("#n-outstanding")).to_contain_text("query")
    page.locator('#node-actions button[data-action="query"]').click()
    expect(message(page, "info")).to_contain_text("n2: Query already in progress")
    assert requests_of(session, "n2") == [("query", "pending")]


def test_a_pending_request_is_cancelled_and_a_running_one_cannot_be(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1", observed="on", desired="on")
    busy = node_in_state(session, "n2", observed="on", desired="off")
    add_request(session, busy, "off", "running")
    page = ui.sign_in(tokens["operator"], "/nodes/n1")

    page.locator('#node-actions button[data-action="reset"]').click()
    page.click("#confirm-ok")
    expect(message(page, "success")).to_contain_text("n1: Reset requested")
    cancel = page.locator("#node-actions button[data-cancel]")
    expect(cancel).to_be_enabled()
    cancel.click()
    expect(page.locator("#confirm-title")).to_have_text("Cancel the reset request on n1?")
    page.click("#confirm-ok")
    expect(message(page, "success").filter(has_text="request cancelled")).to_contain_text(
        "The reset request"
    )
    expect(page.locator("#n-outstanding")).to_have_text(NOTHING)
    expect(page.locator("#node-actions button[data-cancel]")).to_have_count(0)
    assert requests_of(session, "n1") == [("reset", "cancelled")]
    expect(page.locator("#history tbody tr").first).to_contain_text("cancelled")

    page.goto(ui.base + "/nodes/n2")
    running = page.locator("#node-actions button[data-cancel]")
    expect(running).to_be_disabled()
    expect(running).to_have_attribute(
        "title", "The off request is running: an in-flight action is never cancelled"
    )

    # Forced anyway (the button re-enabled in the page): the server's 409 is shown.
    running.evaluate("button => { button.disabled = false; }")
    running.click()
    page.click("#confirm-ok")
    expect(message(page, "error")).to_contain_text("n2: cancel power off refused (409 conflict)")
    expect(message(page, "error")).to_contain_text("only a pending request can be cancelled")
    assert requests_of(session, "n2") == [("off", "running")]


def test_maintenance_with_a_reason_shows_the_reason_and_who(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1", observed="on", desired="on")
    page = ui.sign_in(tokens["admin"], "/nodes/n1")
    expect(page.locator("#n-maintenance")).to_have_text("no")

    page.locator('#maintenance-actions button[data-maintenance="on"]').click()
    form = page.locator("#maintenance-actions .maintenance-form")
    expect(form).to_be_visible()
    form.locator("button[type=submit]").click()  # no reason: asked for one, nothing sent
    expect(message(page, "warning")).to_contain_text("n1: a reason is needed")

    form.locator("input").fill("RMA\t4711")  # a control character: the server's 422 is shown
    form.locator("button[type=submit]").click()
    expect(message(page, "error")).to_contain_text("n1: enter maintenance refused (422 invalid)")

    form.locator("input").fill("DIMM swap, ticket 4711")
    form.locator("input").press("Enter")
    expect(message(page, "success")).to_contain_text("n1: in maintenance")
    maintenance = page.locator("#n-maintenance")
    expect(maintenance).to_contain_text("yes")
    expect(maintenance.locator(".maintenance-reason-text")).to_have_text("DIMM swap, ticket 4711")
    expect(maintenance.locator(".maintenance-by")).to_have_text("admin-carol")
    expect(maintenance).to_contain_text("since just now")
    session.expire_all()
    node = session.scalars(select(Node).where(Node.name == "n1")).one()
    assert (node.maintenance, node.maintenance_reason, node.maintenance_by) == (
        True, "DIMM swap, ticket 4711", "admin-carol",
    )  # fmt: skip

    page.goto(ui.base + "/")  # the fleet's row says it too
    expect(row(page, "n1").locator(".c-flags")).to_have_text(
        "maintenance: DIMM swap, ticket 4711 (by admin-carol)"
    )
    page.goto(ui.base + "/nodes/n1")
    page.locator('#maintenance-actions button[data-maintenance="off"]').click()
    expect(message(page, "success")).to_contain_text("n1: out of maintenance")
    expect(page.locator("#n-maintenance")).to_have_text("no")


def test_buttons_follow_the_role_and_a_forced_one_gets_the_servers_403(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1", observed="on", desired="on")
    page = ui.sign_in(tokens["operator"], "/nodes/n1")
    for action in ("on", "off", "soft_off", "cycle", "reset", "query"):
        expect(page.locator(f'#node-actions button[data-action="{action}"]')).to_be_enabled()
    maintenance = page.locator('#maintenance-actions button[data-maintenance="on"]')
    expect(maintenance).to_be_disabled()
    expect(maintenance).to_have_attribute("data-denied", "admin")
    expect(maintenance).to_have_attribute(
        "title", "Put n1 in maintenance (asks for a reason) (needs an admin token)"
    )

    maintenance.evaluate("button => { button.disabled = false; }")
    maintenance.click()
    page.locator("#maintenance-actions input").fill("try anyway")
    page.locator("#maintenance-actions button[type=submit]").click()
    expect(message(page, "error")).to_contain_text("n1: enter maintenance not allowed (403)")
    expect(message(page, "error")).to_contain_text("an admin token is needed")

    page.click("#signout")
    page = ui.sign_in(tokens["reader"], "/nodes/n1")
    expect(page.locator("#n-observed .badge")).to_have_text("on")
    expect(page.locator("#node-actions")).to_be_hidden()
    expect(page.locator("#maintenance-actions")).to_be_hidden()
    assert page.locator("#node-body button").count() == 0


def test_the_fleet_rows_more_menu_has_the_rarer_actions(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1", observed="on", desired="on")
    page = ui.sign_in(tokens["admin"])
    n1 = row(page, "n1")
    open_more(page, "n1")
    n1.locator('.more-menu button[data-action="soft_off"]').click()
    page.click("#confirm-ok")
    expect(message(page, "success")).to_contain_text("n1: Soft off requested")
    expect(n1.locator(".c-request")).to_contain_text("pending")

    open_more(page, "n1")
    row(page, "n1").locator(".more-menu button[data-cancel]").click()
    page.click("#confirm-ok")
    expect(message(page, "success").filter(has_text="request cancelled")).to_be_visible()
    expect(row(page, "n1").locator(".c-request")).to_have_text(NOTHING)
    assert requests_of(session, "n1") == [("soft_off", "cancelled")]

    open_more(page, "n1")
    row(page, "n1").locator('.more-menu button[data-maintenance="on"]').click()
    row(page, "n1").locator(".maintenance-form input").fill("firmware update")
    row(page, "n1").locator(".maintenance-form button[type=submit]").click()
    expect(row(page, "n1").locator(".c-flags")).to_have_text(
        "maintenance: firmware update (by admin-carol)"
    )


def test_a_row_that_changes_keeps_its_open_menu_and_the_reason_being_typed(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1", observed="on", desired="on")
    page = ui.sign_in(tokens["admin"])
    n1 = row(page, "n1")
    open_more(page, "n1")
    n1.locator('.more-menu button[data-maintenance="on"]').click()
    n1.locator(".maintenance-form input").fill("half typed")

    session.execute(
        text("UPDATE nodes SET power_state = 'off', power_state_at = now() WHERE name = 'n1'")
    )
    session.commit()
    expect(n1.locator(".c-observed .badge")).to_have_text("off")  # the row was rebuilt
    expect(n1.locator(".more-actions")).to_have_attribute("open", "")
    expect(n1.locator(".maintenance-form input")).to_have_value("half typed")
    expect(n1.locator(".maintenance-form")).to_be_visible()
