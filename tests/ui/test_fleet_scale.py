"""The fleet page at 10,000 nodes (inserted set-based): one page of rows, the
counts from GET /v1/summary, paging by the API, and refreshes by delta.

Speed is measured, never asserted: the test prints the time to the first
useful paint (rows and counts visible) as a ratio to loading the bare page in
the same run (``bench/ui_paint.py`` runs it and reports the figures; they are
in docs/status-page.md). What is asserted is structural: no request for more
than a page, a page of rows, and one changed row fetched per refresh.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Page, Response, expect
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.ui.conftest import Ui
from tests.ui.helpers import bulk_fleet, bulk_fleet_counts, count, row

FLEET = 10_000
PAGE_SIZE = 100  # fleet.js
DASH = "\u2013"  # en dash, as in "1\u2013100 of 10,000"
REPEAT = int(os.environ.get("POWERQ_UI_PAINT_REPEAT", "3"))
USEFUL = f"""() => document.querySelectorAll('#nodes tbody tr').length === {PAGE_SIZE}
  && document.querySelector('#counts [data-count="total"] .count-n').textContent === '10,000'"""
BARE = "() => { const f = document.querySelector('#login'); return f && !f.hidden; }"


def node_calls(urls: list[str]) -> list[dict[str, list[str]]]:
    """The query of each GET /v1/nodes the page made."""
    return [parse_qs(urlsplit(url).query) for url in urls if urlsplit(url).path == "/v1/nodes"]


def timed(page: Page, url: str, ready: str) -> float:
    """Seconds from navigating to ``url`` until ``ready`` holds in the page."""
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_function(ready, polling="raf", timeout=60_000)
    return time.perf_counter() - start


def test_ten_thousand_nodes_show_one_page_counted_by_the_server(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    names = bulk_fleet(session, FLEET)
    bare_tab = ui.context.new_page()  # no token in its session: the bare page, login form
    page = ui.sign_in(tokens["reader"])
    expect(page.locator("#nodes tbody tr")).to_have_count(PAGE_SIZE)

    bare, healthz, useful = [], [], []
    for _ in range(REPEAT):  # interleaved, the same conditions for each
        bare.append(timed(bare_tab, ui.base + "/", BARE))
        healthz.append(
            timed(bare_tab, ui.base + "/healthz", "() => document.body.innerText.length > 0")
        )
        useful.append(timed(page, ui.base + "/", USEFUL))
    figures = {
        "nodes": FLEET,
        "repeat": REPEAT,
        "first_useful_paint_s": statistics.median(useful),
        "bare_page_s": statistics.median(bare),
        "healthz_s": statistics.median(healthz),
    }
    figures["ratio_to_bare_page"] = figures["first_useful_paint_s"] / figures["bare_page_s"]
    figures["ratio_to_healthz"] = figures["first_useful_paint_s"] / figures["healthz_s"]
    print("\nUI paint:", json.dumps(figures))
    if os.environ.get("POWERQ_UI_PAINT_REPORT"):
        with open(os.environ["POWERQ_UI_PAINT_REPORT"], "w") as report:
            json.dump(figures, report)

    expect(page.locator("#nodes tbody tr")).to_have_count(PAGE_SIZE)
    expect(row(page, names[0])).to_be_visible()
    expected = bulk_fleet_counts(FLEET)
    for key, value in expected.items():
        expect(count(page, key)).to_have_text(f"{value:,}")
    expect(page.locator("#summary")).to_have_text("10,000 nodes")
    expect(page.locator("#page-text")).to_have_text(f"1{DASH}100 of 10,000")

    page.click("#page-next")
    expect(row(page, names[PAGE_SIZE])).to_be_visible()
    expect(page.locator("#nodes tbody tr")).to_have_count(PAGE_SIZE)
    assert "page=2" in page.url
    page.click('#counts [data-count="drift"]')  # filtered and paged by the server
    expect(page.locator("#page-text")).to_have_text(f"1{DASH}100 of {expected['drift']}")
    expect(page.locator("#nodes tbody tr.is-drift")).to_have_count(PAGE_SIZE)

    calls = node_calls(ui.urls)
    assert calls, "the page never asked for nodes"
    assert all(int(call["limit"][0]) <= PAGE_SIZE for call in calls), calls
    assert not [url for url in ui.urls if "offset=" in url and "limit=500" in url]


def _watch(page: Page) -> Callable[[], list[tuple[dict[str, list[str]], Any]]]:
    """Record the page's GET /v1/nodes answers from now on; read them later."""
    seen: list[Response] = []
    page.on("response", lambda response: seen.append(response))

    def answers() -> list[tuple[dict[str, list[str]], Any]]:
        calls = [r for r in seen if urlsplit(r.url).path == "/v1/nodes"]
        return [(parse_qs(urlsplit(r.url).query), r.json()) for r in calls]

    return answers


def _executor_reads(session: Session, name: str, state: str) -> None:
    """What the executor's observation statement writes (updated_at untouched)."""
    session.execute(
        text(
            "UPDATE nodes SET power_state = CAST(:state AS power_state), power_state_at = now(),"
            " last_checked_at = now() WHERE name = :name"
        ),
        {"state": state, "name": name},
    )
    session.commit()


def test_a_refresh_fetches_only_the_changed_row(
    ui: Ui, tokens: dict[str, str], session: Session
) -> None:
    names = bulk_fleet(session, FLEET)
    page = ui.sign_in(tokens["reader"])
    changed, untouched, elsewhere = names[3], names[4], names[5000]
    expect(row(page, changed).locator(".c-observed .badge")).to_have_text("on")
    row(page, untouched).evaluate("tr => { tr.dataset.marked = 'kept'; }")
    answers = _watch(page)

    _executor_reads(session, elsewhere, "off")  # not on this page: nothing to fetch
    _executor_reads(session, changed, "off")
    expect(row(page, changed).locator(".c-observed .badge")).to_have_text("off")
    expect(row(page, changed)).to_have_class("is-drift")
    expect(count(page, "drift")).to_have_text(str(bulk_fleet_counts(FLEET)["drift"] + 2))
    page.wait_for_timeout(3500)  # one more refresh, still by delta

    calls = answers()
    assert calls, "no refresh happened"
    for query, body in calls:
        assert "changed_since" in query, f"a full refetch: {query}"
        assert query["name_to"] == [names[PAGE_SIZE - 1]], query  # only this page's range
        assert [node["name"] for node in body["items"]] in ([], [changed]), body["total"]
    assert any(body["items"] for _, body in calls)
    expect(row(page, untouched)).to_have_attribute("data-marked", "kept")  # row not rebuilt
    expect(page.locator("#nodes tbody tr")).to_have_count(PAGE_SIZE)
