"""The status page in a real browser against the real API and database.

No workers run here: requests the page makes stay pending, which makes the
200 and 409 answers deterministic. The live-stack test is in test_end_to_end.
"""

from __future__ import annotations

from playwright.sync_api import expect
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from powerq.db import utcnow
from powerq.models import ApiToken, Node, PowerRequest
from powerq.states import Action, PowerState
from tests.ui.conftest import Ui
from tests.ui.helpers import add_request, count, message, node_in_state, row

XSS = '<img src="x" onerror="window.__pwned = 1">'


def requests_of(session: Session, name: str) -> int:
    session.expire_all()
    query = select(func.count()).select_from(PowerRequest).join(Node).where(Node.name == name)
    return int(session.scalar(query) or 0)


def test_sign_in_keeps_the_token_in_session_storage_and_out_of_urls(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1")
    page = ui.open("/")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()

    page.fill("#token", "pq_not-a-real-token")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("not valid")
    assert page.evaluate("sessionStorage.length") == 0

    page = ui.sign_in(tokens["operator"])
    expect(page.locator("#actor")).to_have_text("ops-alice")
    expect(page.locator("#role")).to_have_text("operator")
    expect(row(page, "n1")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('powerq.token')") == tokens["operator"]
    assert page.evaluate("localStorage.length") == 0
    assert ui.context.cookies() == []

    page.reload()  # the tab's session keeps the token
    expect(row(page, "n1")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()

    page.click("#signout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('powerq.token')") is None
    assert not [url for url in ui.urls if tokens["operator"] in url]


def test_the_table_shows_observed_desired_drift_requests_errors_and_flags(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n-synced", observed="on", desired="on", observed_age_s=300)
    node_in_state(
        session, "n-drift", observed="off", desired="on", last_error="on failed: still off"
    )
    busy = node_in_state(session, "n-busy", observed="on", desired="off")
    add_request(session, busy, "off", "running", age_s=2, attempt=2, command_sent=Action.OFF)
    node_in_state(
        session,
        "n-fault",
        observed="unknown",
        desired="on",
        power_fault=True,
        power_fault_reason="3 consecutive failed power requests",
        maintenance=True,
        last_error=XSS,
    )
    page = ui.sign_in(tokens["operator"])

    synced = row(page, "n-synced")
    expect(synced.locator(".c-observed .badge")).to_have_text("on")
    expect(synced.locator(".c-observed .age")).to_have_text("5 min ago")
    expect(synced.locator(".c-desired .badge")).to_have_text("on")
    expect(synced).to_have_attribute("data-condition", "ok")

    drift = row(page, "n-drift")
    expect(drift).to_have_class("is-drift")
    expect(drift.locator(".c-desired")).to_contain_text("drift")
    expect(drift.locator(".c-error")).to_have_text("on failed: still off")

    in_progress = row(page, "n-busy")
    expect(in_progress).to_have_class("is-busy")
    expect(in_progress.locator(".c-desired")).to_contain_text("converging")
    expect(in_progress.locator(".c-request")).to_contain_text("off")
    expect(in_progress.locator(".c-request")).to_contain_text("running")
    expect(in_progress.locator(".c-request")).to_contain_text("attempt 2")

    fault = row(page, "n-fault")
    expect(fault.locator(".c-flags")).to_contain_text("power fault")
    expect(fault.locator(".c-flags")).to_contain_text("maintenance")
    expect(fault.locator(".c-error")).to_have_text(XSS)  # shown as text, never as markup
    assert page.evaluate("window.__pwned") is None
    assert fault.locator(".c-error img").count() == 0

    for key, value in {
        "total": 4, "on": 2, "off": 1, "unknown": 1,
        "drift": 1, "busy": 1, "fault": 1, "maintenance": 1,
    }.items():  # fmt: skip
        expect(count(page, key)).to_have_text(str(value))


def test_filters_by_tag_and_state_go_to_the_api_and_into_the_page_url(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "r1-on", observed="on", tags=("rack1",))
    node_in_state(session, "r1-off", observed="off", tags=("rack1", "gpu"))
    node_in_state(session, "r2-off", observed="off", desired="on", tags=("rack2",))
    page = ui.sign_in(tokens["reader"])
    expect(page.locator("#nodes tbody tr")).to_have_count(3)

    page.fill("#f-tag", "rack1")
    expect(page.locator("#nodes tbody tr")).to_have_count(2)
    expect(page.locator("#summary")).to_have_text("2 of 3 nodes match the filters")
    page.select_option("#f-state", "off")
    expect(page.locator("#nodes tbody tr")).to_have_count(1)
    expect(row(page, "r1-off")).to_be_visible()
    assert "tag=rack1" in page.url and "state=off" in page.url
    assert any("/v1/nodes?tag=rack1&power_state=off" in url for url in ui.urls)

    page.reload()  # the filters come back from the URL
    expect(page.locator("#f-tag")).to_have_value("rack1")
    expect(page.locator("#nodes tbody tr")).to_have_count(1)

    page.click("#f-clear")
    expect(page.locator("#nodes tbody tr")).to_have_count(3)
    page.click('#counts [data-count="drift"]')  # counts are filters too
    expect(page.locator("#nodes tbody tr")).to_have_count(1)
    expect(row(page, "r2-off")).to_be_visible()
    page.fill("#f-tag", "no-such-tag")
    expect(page.locator("#empty")).to_be_visible()


def test_the_page_follows_the_database_without_a_reload(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1", observed="on", desired="on")
    page = ui.sign_in(tokens["reader"])
    expect(row(page, "n1").locator(".c-observed .badge")).to_have_text("on")

    session.execute(update(Node).where(Node.name == "n1").values(power_state=PowerState.OFF))
    session.commit()

    expect(row(page, "n1").locator(".c-observed .badge")).to_have_text("off")
    expect(row(page, "n1")).to_have_class("is-drift")
    expect(count(page, "drift")).to_have_text("1")


def test_power_buttons_report_the_202_200_and_409_answers(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1", observed="on", desired=None)
    node_in_state(session, "n2", observed="on", desired=None)
    page = ui.sign_in(tokens["operator"])
    n1 = row(page, "n1")
    expect(n1.locator(".c-desired .badge")).to_have_text("none")

    n1.locator('button[data-action="off"]').click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-title")).to_have_text("Power off n1?")
    page.click("#confirm-ok")
    expect(message(page, "success")).to_contain_text("n1: Power off requested")
    expect(n1.locator(".c-desired .badge")).to_have_text("off")
    expect(n1.locator(".c-request")).to_contain_text("pending")

    n1.locator('button[data-action="off"]').click()
    page.click("#confirm-ok")
    expect(message(page, "info")).to_contain_text("already in progress")

    n1.locator('button[data-action="cycle"]').click()
    page.click("#confirm-ok")
    refused = message(page, "error")
    expect(refused).to_contain_text("n1: Power cycle refused (409 conflict)")
    expect(refused).to_contain_text(
        "busy with a power off request (pending, requested by ops-alice)"
    )
    assert requests_of(session, "n1") == 1

    row(page, "n2").locator('button[data-action="off"]').click()
    page.locator('#confirm [data-answer="cancel"]').click()  # cancelling sends nothing
    expect(page.locator("#confirm")).to_be_hidden()
    row(page, "n2").locator('button[data-action="on"]').click()  # "on" needs no confirmation
    expect(message(page, "success").filter(has_text="n2: Power on requested")).to_be_visible()
    assert requests_of(session, "n2") == 1


def test_a_reader_sees_no_power_buttons(ui: Ui, tokens: dict[str, str], session: Session) -> None:
    node_in_state(session, "n1")
    page = ui.sign_in(tokens["reader"])
    expect(page.locator("#role")).to_have_text("reader")
    expect(row(page, "n1")).to_be_visible()
    assert page.locator("#nodes button").count() == 0
    expect(page.locator("#nodes th.c-actions")).to_be_hidden()

    row(page, "n1").locator(".c-name a").click()
    expect(page.locator("#n-observed .badge")).to_have_text("on")
    expect(page.locator("#node-actions")).to_be_hidden()
    assert page.locator("#node-actions button").count() == 0


def test_the_node_page_shows_power_history_with_timings_and_audit_events(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node = node_in_state(
        session, "n1", observed="off", desired="on", tags=("rack1",), last_error="on failed: x"
    )
    add_request(session, node, "off", "succeeded", age_s=600, waited_s=0.5, took_s=4,
                command_sent=Action.OFF, observed_before=PowerState.ON,
                observed_after=PowerState.OFF)  # fmt: skip
    add_request(session, node, "on", "failed", age_s=300, took_s=120, error="on failed: x")
    add_request(session, node, "cycle", "running", age_s=5, command_sent=Action.ON)
    page = ui.sign_in(tokens["operator"], "/nodes/n1")

    history = page.locator("#history tbody tr")
    expect(history).to_have_count(3)
    expect(history.nth(0)).to_contain_text("cycle")  # newest first
    expect(history.nth(0)).to_have_class("is-busy")
    expect(history.nth(1).locator(".badge")).to_have_text("failed")
    expect(history.nth(1)).to_contain_text("on failed: x")
    expect(history.nth(1)).to_contain_text("2 min 0 s")
    expect(history.nth(2)).to_contain_text("verified off")
    expect(history.nth(2)).to_contain_text("0.5 s")
    expect(history.nth(2)).to_contain_text("4.0 s")
    expect(page.locator("#history-count")).to_have_text("3 in all")

    events = page.locator("#events tbody tr")
    expect(events.first).to_contain_text("started")
    kinds = set(events.evaluate_all("rows => rows.map(r => r.dataset.kind)"))
    assert {"registered", "requested", "started", "succeeded", "failed"} <= kinds
    expect(events.filter(has_text="ops-alice").first).to_be_visible()

    expect(page.locator("#n-desired")).to_contain_text("converging")
    expect(page.locator("#n-tags")).to_have_text("rack1")
    expect(page.locator("#n-error")).to_have_text("on failed: x")
    page.locator('#node-actions button[data-action="off"]').click()
    page.click("#confirm-ok")
    expect(message(page, "error")).to_contain_text("busy with a power cycle request (running")


def test_a_page_for_an_unknown_node_says_so(ui: Ui, tokens: dict[str, str]) -> None:
    page = ui.sign_in(tokens["reader"], "/nodes/nope")
    expect(page.locator("#not-found")).to_be_visible()
    expect(page.locator("#not-found-text")).to_contain_text("no node named 'nope'")


def test_failures_are_shown_never_swallowed(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1")
    page = ui.sign_in(tokens["operator"])
    expect(row(page, "n1")).to_be_visible()

    page.route("**/v1/nodes/n1/power", lambda route: route.abort("connectionreset"))
    row(page, "n1").locator('button[data-action="on"]').click()
    lost = message(page, "error")
    expect(lost).to_contain_text("n1: Power on unconfirmed")
    expect(lost).to_contain_text("check the node's history before trying again")

    unavailable = {"type": "x", "title": "Service unavailable", "status": 503, "detail": "db down"}
    page.unroute("**/v1/nodes/n1/power")
    page.route(
        "**/v1/nodes/n1/power",
        lambda route: route.fulfill(
            status=503, json=unavailable, headers={"Content-Type": "application/problem+json"}
        ),
    )
    row(page, "n1").locator('button[data-action="on"]').click()
    expect(message(page, "error").first).to_contain_text("Nothing was recorded; try again")

    page.route("**/v1/nodes?*", lambda route: route.abort("connectionrefused"))
    expect(page.locator("#refresh-state")).to_have_attribute("data-state", "error")
    expect(page.locator("#refresh-text")).to_contain_text("Cannot reach powerq")
    page.unroute("**/v1/nodes?*")
    expect(page.locator("#refresh-state")).to_have_attribute("data-state", "ok")
    assert requests_of(session, "n1") == 0


def test_a_revoked_token_returns_to_the_sign_in_form(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    node_in_state(session, "n1")
    page = ui.sign_in(tokens["operator"])
    expect(row(page, "n1")).to_be_visible()

    session.execute(
        update(ApiToken).where(ApiToken.name == "ops-alice").values(revoked_at=utcnow())
    )
    session.commit()

    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#login-error")).to_contain_text("not accepted any more")
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('powerq.token')") is None
