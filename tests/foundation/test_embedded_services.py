"""With no URLs configured, powerq starts PostgreSQL and Redis from wheels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from powerq.config import get_settings
from powerq.services import ensure_services


@pytest.fixture
def embedded_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("POWERQ_DATABASE_URL", raising=False)
    monkeypatch.delenv("POWERQ_BROKER_URL", raising=False)
    monkeypatch.setenv("POWERQ_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


def test_embedded_postgres_and_redis_round_trip(embedded_env: Path) -> None:
    with ensure_services() as running:
        assert running.embedded
        assert str(embedded_env) in running.database_url  # the socket lives in the data dir
        engine = create_engine(running.database_url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE probe (id int primary key, note text)"))
            conn.execute(text("INSERT INTO probe VALUES (1, 'round trip')"))
        with engine.connect() as conn:
            assert (
                conn.execute(text("SELECT note FROM probe WHERE id = 1")).scalar() == "round trip"
            )
        engine.dispose()

        client = redis.Redis.from_url(running.broker_url)
        client.set("powerq:probe", b"round trip")
        assert client.get("powerq:probe") == b"round trip"
        client.close()
        pg_pid_file = embedded_env / "pg" / "postmaster.pid"
        assert pg_pid_file.exists()

    assert not pg_pid_file.exists(), "embedded PostgreSQL must stop when the block exits"
