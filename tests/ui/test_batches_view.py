"""The batches view: the list with each batch's progress, one batch's per-node
results, and cancelling it (held and pending requests cancelled, running ones
left to finish). No workers run: the test moves requests on in the database."""

from __future__ import annotations

from playwright.sync_api import expect
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from powerq.batches import BatchSpec, create_batch
from powerq.db import utcnow
from powerq.models import Node, PowerRequest
from powerq.states import Action, PowerState, RequestStatus
from tests.ui.conftest import Ui
from tests.ui.helpers import message, node_in_state

NODES = ("b1", "b2", "b3", "b4", "b5")


def _batch(session: Session) -> str:
    """A batch of five "on" requests, two at a time: b1 succeeded, b2 failed,
    b3 running, b4 and b5 waiting (pending, or held for their turn)."""
    for name in NODES:
        node_in_state(session, name, observed="off", desired="off")
    created = create_batch(
        session,
        BatchSpec(action=Action.ON, nodes=NODES, name="rack-b-on", max_in_flight=2),
        actor="ops-alice",
    )
    session.commit()
    ids = dict(
        session.execute(
            select(Node.name, PowerRequest.id)
            .join(Node)
            .where(PowerRequest.batch_id == created.batch.id)
        ).all()
    )
    now = utcnow()
    for name, status, error in (
        ("b1", RequestStatus.SUCCEEDED, None),
        ("b2", RequestStatus.FAILED, "BMC unreachable after 4 attempts"),
        ("b3", RequestStatus.RUNNING, None),
    ):
        finished = now if status is not RequestStatus.RUNNING else None
        session.execute(
            update(PowerRequest)
            .where(PowerRequest.id == ids[name])
            .values(status=status, held=False, attempt=1, started_at=now, finished_at=finished,
                    error=error, observed_after=PowerState.ON if error is None else None)
        )  # fmt: skip
    session.commit()
    return str(created.batch.id)


def test_the_batches_view_shows_progress_results_and_cancels(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    batch_id = _batch(session)
    page = ui.sign_in(tokens["operator"], "/batches")

    listed = page.locator(f'#batches tbody tr[data-batch="{batch_id}"]')
    expect(listed.locator(".c-name")).to_have_text("rack-b-on")
    progress = listed.locator(".progress-wrap")
    expect(progress).to_have_attribute("data-done", "2")
    expect(progress).to_have_attribute("data-total", "5")
    expect(progress.locator(".progress-text")).to_contain_text("2 of 5 done · in progress")
    expect(progress.locator(".progress-text")).to_contain_text("1 succeeded, 1 failed, 1 running")
    expect(progress.locator(".part-succeeded")).to_have_count(1)

    listed.locator(".c-name a").click()
    expect(page).to_have_url(f"{ui.base}/batches/{batch_id}")
    expect(page.locator("#batch-title")).to_have_text("Batch rack-b-on: Power on")
    results = page.locator("#results tbody tr")
    expect(results).to_have_count(5)
    expect(page.locator('#results tr[data-node="b1"]')).to_contain_text("succeeded")
    expect(page.locator('#results tr[data-node="b2"]')).to_contain_text(
        "BMC unreachable after 4 attempts"
    )
    expect(page.locator('#results tr[data-node="b3"]')).to_contain_text("running")
    waiting = page.locator('#results tr[data-node="b5"]')
    expect(waiting).to_have_attribute("data-state", "held")
    expect(waiting).to_contain_text("waiting for its turn in the batch")

    page.locator("#batch-actions button[data-cancel-batch]").click()
    expect(page.locator("#confirm-title")).to_have_text("Cancel batch rack-b-on?")
    page.click("#confirm-ok")
    done = message(page, "success")
    expect(done).to_contain_text("Batch rack-b-on: cancelled")
    expect(done).to_contain_text("2 request(s) cancelled; 1 already running will finish")
    expect(page.locator('#results tr[data-node="b4"]')).to_have_attribute("data-state", "cancelled")
    expect(page.locator("#batch-progress .progress-text")).to_contain_text(
        "4 of 5 done · cancelled, running ones finishing"
    )
    session.expire_all()
    statuses = session.scalars(
        select(PowerRequest.status).where(PowerRequest.batch_id == batch_id)
    ).all()
    assert sorted(s.value for s in statuses) == [
        "cancelled", "cancelled", "failed", "running", "succeeded",
    ]  # fmt: skip


def test_a_reader_sees_batches_without_a_cancel_button(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    batch_id = _batch(session)
    page = ui.sign_in(tokens["reader"], f"/batches/{batch_id}")
    expect(page.locator("#results tbody tr")).to_have_count(5)
    expect(page.locator("#batch-actions")).to_be_hidden()
    assert page.locator("button[data-cancel-batch]").count() == 0
    page.goto(f"{ui.base}/batches/00000000-0000-0000-0000-000000000000")
    expect(page.locator("#not-found")).to_be_visible()
