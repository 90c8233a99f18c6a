"""The fleet page with 50 nodes in mixed states, and the screenshot in docs/.

``POWERQ_UI_SCREENSHOT=docs/status-page.png pytest tests/ui/test_screenshot.py``
rewrites the committed screenshot; otherwise it goes to the test's temp dir.
"""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import expect
from sqlalchemy.orm import Session

from tests.ui.conftest import Ui
from tests.ui.helpers import mixed_fleet

FLEET = 50


def test_fifty_nodes_in_mixed_states_read_at_a_glance(
    ui: Ui, tokens: dict[str, str], session: Session, tmp_path: Path
) -> None:
    shown = mixed_fleet(session, FLEET)
    page = ui.sign_in(tokens["operator"])

    rows = page.locator("#nodes tbody tr")
    expect(rows).to_have_count(FLEET)
    busy = len(shown["running-off"]) + len(shown["pending-on"]) + len(shown["cycle"])
    expected = {
        "total": FLEET,
        "drift": len(shown["drift"]),
        "busy": busy,
        "fault": len(shown["fault"]),
        "maintenance": len(shown["maintenance"]),
        "unknown": len(shown["fault"]) + len(shown["unknown"]),
    }
    for key, value in expected.items():
        expect(page.locator(f'#counts [data-count="{key}"] .count-n')).to_have_text(str(value))
    expect(page.locator("#nodes tbody tr.is-drift")).to_have_count(len(shown["drift"]))
    expect(page.locator("#nodes tbody tr.is-busy")).to_have_count(busy)

    page.mouse.move(0, 0)
    path = Path(os.environ.get("POWERQ_UI_SCREENSHOT") or tmp_path / "status-page.png")
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
