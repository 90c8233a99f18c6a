"""Small helpers shared by the API tests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from apiflask import APIFlask
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from powerq.models import PowerEvent, PowerRequest

PROBLEM_MIME = "application/problem+json"


def assert_problem(response: TestResponse, status: int) -> dict[str, Any]:
    """Assert ``response`` is an RFC 9457 problem with ``status``; return its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM_MIME
    body = response.get_json(force=True)
    assert body["status"] == status
    assert body["type"].startswith("https://powerq.dev/problems/")
    assert body["title"] and body["detail"]
    return dict(body)


def counts(session: Session) -> tuple[int, int]:
    """How many power requests and events exist (committed)."""
    session.expire_all()
    requests = session.scalar(select(func.count()).select_from(PowerRequest))
    events = session.scalar(select(func.count()).select_from(PowerEvent))
    return int(requests or 0), int(events or 0)


@contextlib.contextmanager
def live_server(app: APIFlask) -> Iterator[str]:
    """Serve ``app`` over real HTTP (werkzeug, one thread per request); yield its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
