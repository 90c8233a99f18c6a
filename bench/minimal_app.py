"""The comparison app of benchmark 3: Flask on the same gunicorn, one psycopg INSERT per call.

    BENCH_MINIMAL_DSN=postgresql://… gunicorn bench.minimal_app:app

Same route and body as ``POST /v1/nodes/{name}/power``, no auth, no validation
beyond reading the JSON, one autocommit INSERT … RETURNING per call on a
connection kept per thread.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
from flask import Flask, request

app = Flask(__name__)
_local = threading.local()
TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_minimal (id bigserial PRIMARY KEY, node text NOT NULL,"
    " action text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
)


def _connection() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(os.environ["BENCH_MINIMAL_DSN"], autocommit=True)
    return conn


@app.post("/v1/nodes/<name>/power")
def power(name: str) -> tuple[dict[str, Any], int]:
    """Insert one row; answer 202 with it."""
    body = request.get_json()
    row = (
        _connection()
        .execute(
            "INSERT INTO bench_minimal (node, action) VALUES (%s, %s) RETURNING id",
            (name, body["action"]),
        )
        .fetchone()
    )
    assert row is not None
    return {"id": row[0], "node": name, "action": body["action"]}, 202


@app.get("/healthz")
def healthz() -> dict[str, bool]:
    """Liveness."""
    return {"ok": True}
