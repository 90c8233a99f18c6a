"""GET /metrics against a batch run by real lane workers on the sim fleet (over IPMI):
a scrape during the batch accounts for all its requests (outstanding or finished),
one after it shows them succeeded and a non-empty latency histogram. No wall-clock
limits: timeouts are hang guards."""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.batches.live import wait_batch
from tests.stack import Stack

pytestmark = [pytest.mark.ipmi, pytest.mark.slow]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
BATCH = 6


def scrape(client: FlaskClient, reader: dict[str, str]) -> Samples:
    """GET /metrics, parsed by prometheus_client's parser."""
    response = client.get("/metrics", headers=reader)
    assert response.status_code == 200, response.get_data(as_text=True)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def by_status(samples: Samples, action: str) -> dict[str, float]:
    """powerq_requests_total (finished requests only) of ``action``, by status."""
    return {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "powerq_requests_total" and dict(labels)["action"] == action
    }


def outstanding(samples: Samples) -> float:
    """powerq_requests_outstanding summed over lanes and states."""
    return sum(v for (name, _), v in samples.items() if name == "powerq_requests_outstanding")


def test_a_batch_s_counts_and_latencies_are_scraped(
    live: Stack, client: FlaskClient, operator: dict[str, str], reader: dict[str, str]
) -> None:
    names = live.register_fleet(BATCH)
    body = {"action": "off", "nodes": names, "max_in_flight": 3}
    created = client.post("/v1/batches", json=body, headers=operator)
    assert created.status_code == 201, created.get_json()

    during = scrape(client, reader)
    view = wait_batch(uuid.UUID(created.get_json()["id"]))
    after = scrape(client, reader)

    # each request is outstanding (pending, held or running) or finished, in one snapshot
    assert outstanding(during) + sum(by_status(during, "off").values()) == BATCH
    assert view.counts["succeeded"] == BATCH
    assert by_status(after, "off") == {"succeeded": BATCH}
    off = frozenset({("action", "off")})
    assert after[("powerq_request_execution_seconds_count", off)] == BATCH
    assert after[("powerq_request_execution_seconds_sum", off)] > 0
    assert after[("powerq_request_queue_wait_seconds_count", off)] == BATCH
    assert after[("powerq_request_to_success_seconds_count", off)] == BATCH
    bucket = "powerq_request_execution_seconds_bucket"
    buckets = [v for (n, labels), v in after.items() if n == bucket and ("action", "off") in labels]
    assert max(buckets) == BATCH and min(buckets) < BATCH  # a spread, not one bucket
    assert any(name == "powerq_requests_outstanding" for name, _ in after)
    assert outstanding(after) == 0
    assert after[("powerq_broker_up", frozenset())] == 1
    assert after[("powerq_nodes", frozenset())] == BATCH
