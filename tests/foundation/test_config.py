"""Settings come from POWERQ_* variables; a malformed value is a clear error."""

from __future__ import annotations

import pytest

from powerq.config import load_settings
from powerq.errors import ConfigError


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("POWERQ_LANES", "eight", "POWERQ_LANES"),
        ("POWERQ_LANES", "0", "greater than or equal to 1"),
        ("POWERQ_DATABASE_URL", "mysql://x", "PostgreSQL URL"),
        ("POWERQ_BROKER_URL", "amqp://x", "Redis URL"),
        ("POWERQ_ENFORCE_DESIRED", "maybe", "POWERQ_ENFORCE_DESIRED"),
    ],
)
def test_malformed_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert expected in str(caught.value)
    assert variable in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("POWERQ_DATABASE_URL", "mysql://powerq:s3cret-pw@db/powerq"),
        ("POWERQ_BROKER_URL", "amqp://guest:s3cret-pw@mq//"),
        ("POWERQ_BROKER_URL", "sentinel://:s3cret-pw@h1:26379;redis://:s3cret-pw@h2:6379"),
    ],
)
def test_a_refused_url_is_shown_without_its_password(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert variable in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    assert "***@" in str(caught.value)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POWERQ_LANES", "POWERQ_DATA_DIR", "POWERQ_ENFORCE_DESIRED"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.lanes == 8
    assert str(settings.data_dir) == ".powerq"
    assert settings.enforce_desired is False
