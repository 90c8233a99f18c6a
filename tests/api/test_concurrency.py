"""Concurrent power requests over real HTTP (a threaded werkzeug server): the
database's partial unique index, not the API, decides who wins."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from apiflask import APIFlask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from powerq.models import IdempotentResponse, PowerRequest
from powerq.states import OUTSTANDING_STATUSES
from tests.api.helpers import PROBLEM_MIME, live_server
from tests.factories import make_node

CLIENTS = 100


def _fire(
    url: str, headers: dict[str, str], bodies: list[dict[str, Any]]
) -> list[tuple[str, requests.Response]]:
    """POST every body at once (all threads released together); return (action, response)."""
    barrier = threading.Barrier(len(bodies))

    def post(body: dict[str, Any]) -> tuple[str, requests.Response]:
        with requests.Session() as http:
            barrier.wait(timeout=30)
            return body["action"], http.post(url, json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_hundred_concurrent_on_and_off_leave_one_request(
    app: APIFlask, operator: dict[str, str], session: Session
) -> None:
    make_node(session, "node-1")
    bodies = [{"action": "on" if i % 2 else "off"} for i in range(CLIENTS)]

    with live_server(app) as base:
        answers = _fire(f"{base}/v1/nodes/node-1/power", operator, bodies)

    statuses = Counter(response.status_code for _, response in answers)
    assert statuses[202] == 1, statuses
    assert set(statuses) <= {200, 202, 409}, statuses
    winner_action, winner = next((a, r) for a, r in answers if r.status_code == 202)
    winner_id = winner.json()["request"]["id"]
    for action, response in answers:
        if response.status_code == 200:
            assert action == winner_action
            assert response.json()["request"]["id"] == winner_id
        elif response.status_code == 409:
            assert action != winner_action
            assert response.headers["Content-Type"] == PROBLEM_MIME
            assert response.json()["outstanding"]["id"] == winner_id
    assert statuses[200] + 1 == CLIENTS // 2 and statuses[409] == CLIENTS // 2
    outstanding = session.scalar(
        select(func.count())
        .select_from(PowerRequest)
        .where(PowerRequest.status.in_(OUTSTANDING_STATUSES))
    )
    assert outstanding == 1
    assert session.scalar(select(func.count()).select_from(PowerRequest)) == 1


def test_concurrent_retries_with_one_idempotency_key_get_one_answer(
    app: APIFlask, operator: dict[str, str], session: Session
) -> None:
    make_node(session, "node-1")
    headers = {**operator, "Idempotency-Key": "retry-storm-1"}

    with live_server(app) as base:
        answers = _fire(f"{base}/v1/nodes/node-1/power", headers, [{"action": "on"}] * 20)

    assert {response.status_code for _, response in answers} == {202}
    assert len({response.json()["request"]["id"] for _, response in answers}) == 1
    assert sum("Idempotent-Replayed" in r.headers for _, r in answers) == 19
    assert session.scalar(select(func.count()).select_from(PowerRequest)) == 1
    assert session.scalar(select(func.count()).select_from(IdempotentResponse)) == 1
