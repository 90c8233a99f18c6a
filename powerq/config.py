"""Settings from ``POWERQ_*`` environment variables, in one place (pydantic-settings).

A malformed value stops the program with a message naming the variable, e.g.
``POWERQ_LANES: Input should be a valid integer, unable to parse string as an
integer (got 'eight')``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from powerq.errors import ConfigError
from powerq.states import DriverKind


class Settings(BaseSettings):
    """Every tunable of powerq. Unset URLs mean "start embedded services"."""

    model_config = SettingsConfigDict(env_prefix="POWERQ_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of PostgreSQL (several servers: ?host=h1:p1&host=h2:p2"
        "&target_session_attrs=read-write, see docs/high-availability.md); unset: embedded",
    )
    broker_url: str | None = Field(
        default=None,
        description="Redis URL of the Celery broker (redis://, rediss://, redis+socket://, or "
        "sentinel://h1:p1;sentinel://h2:p2 with POWERQ_BROKER_MASTER_NAME); unset: embedded Redis",
    )
    # Redis Sentinel (docs/high-availability.md): the name the sentinels monitor the
    # primary under (`sentinel monitor NAME host port quorum`). Required with
    # sentinel:// broker URLs, refused without them.
    broker_master_name: str | None = Field(
        default=None, description="Sentinel master name (with sentinel:// broker URLs only)"
    )
    broker_sentinel_password: str | None = Field(
        default=None,
        description="Password of the sentinels themselves (their requirepass), if any; the "
        "primary's password goes in the broker URL",
    )
    lanes: int = Field(default=8, ge=1, le=1024, description="Number of lane queues")
    secret_key: str | None = Field(
        default=None,
        description="Fernet key for BMC passwords; unset: generated once into the data dir",
    )
    data_dir: Path = Field(
        default=Path(".powerq"), description="Where embedded services and keys live"
    )
    api_url: str = Field(default="http://127.0.0.1:8000", description="API base URL (CLI)")
    token: str | None = Field(default=None, description="API bearer token (CLI)")
    enforce_desired: bool = Field(
        default=False, description="Monitor files correcting requests on drift"
    )
    sweep_interval_s: float = Field(default=5.0, gt=0, description="Sweeper period")
    monitor_interval_s: float = Field(default=60.0, gt=0, description="Monitor period")
    # How many BMCs one lane worker reads at once during a monitor refresh (one
    # process-wide thread pool per lane worker, shared by its refresh runs): the
    # bound on the monitor's fanout, like ipmipower's -F. 32 per lane x 8 lanes
    # keeps 256 reads in flight, enough for 10,000 warm BMCs in a few seconds.
    monitor_fanout: int = Field(
        default=32, ge=1, le=256, description="BMC reads in flight per lane worker (monitor)"
    )
    fault_threshold: int = Field(
        default=3, ge=1, description="Consecutive failed requests that set power_fault"
    )
    lease_s: float = Field(default=60.0, gt=0, description="Lease a worker holds on a step")
    lane_lease_s: float = Field(
        default=15.0,
        ge=2.0,
        le=600.0,
        description="powerq agent: how long a lane stays an agent's without a renewal; a "
        "dead host's lanes are taken over after about this long",
    )
    lane_fanout: int = Field(
        default=32,
        ge=1,
        le=512,
        description="BMC conversations one lane worker drives at once (its thread pool)",
    )
    db_pool_size: int = Field(
        default=3, ge=1, description="PostgreSQL connections each process keeps open"
    )
    db_max_overflow: int = Field(
        default=3, ge=0, description="Extra PostgreSQL connections a process may open at a peak"
    )
    db_pool_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait for a free pooled PostgreSQL connection; the API then "
        "answers 503 with Retry-After",
    )
    db_statement_timeout_s: float = Field(
        default=15.0,
        ge=0,
        description="PostgreSQL cancels a statement running longer (0: never); bounds every "
        "database call of workers and API where no task time limit does",
    )
    restart_backoff_max_s: float = Field(
        default=30.0, gt=0, description="powerq up: longest wait before restarting a dead child"
    )
    restart_burst: int = Field(
        default=5, ge=1, description="powerq up: restarts of one child allowed at once ..."
    )
    restart_window_s: float = Field(
        default=60.0, gt=0, description="... and refilled over this many seconds (token bucket)"
    )
    # gunicorn's gthread worker serves this many requests at once per API process
    # (`powerq up`: --threads 8). The API keeps that many PostgreSQL connections:
    # SQLAlchemy closes an overflow connection on every check-in, so with fewer
    # a busy API opened a new PostgreSQL backend for most requests.
    api_threads: int = Field(
        default=8, ge=1, le=256, description="Request threads per API process (gunicorn --threads)"
    )
    redispatch_after_s: float = Field(
        default=10.0,
        gt=0,
        description="Sweeper re-rings a dispatched, unclaimed request after (doubling per ring)",
    )
    fault_recheck_s: float = Field(
        default=300.0, gt=0, description="Monitor re-checks a node in power_fault this often"
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest API body")
    # nginx's client_header_timeout is 60 s; a powerq request is a few hundred
    # bytes on a datacentre network (powerq/gunicorn_worker.py).
    api_read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A client must send its whole request within this (else 408)",
    )
    metrics_public: bool = Field(
        default=False,
        description="GET /metrics without a token (default: a reader token is required)",
    )
    drivers: Annotated[tuple[DriverKind, ...], NoDecode] = Field(
        default=(DriverKind.IPMI, DriverKind.REDFISH),
        description="BMC drivers nodes may be registered with (comma-separated: ipmi, "
        "redfish; 'sim' is an in-process fake for tests, never enabled by default)",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql", "postgres://")):
            raise ValueError("must be a PostgreSQL URL (postgresql+psycopg://user@host/db)")
        return value

    @field_validator("drivers", mode="before")
    @classmethod
    def _driver_list(cls, value: Any) -> Any:
        """``"ipmi, sim"`` as ``("ipmi", "sim")``: comma-separated, blanks and repeats dropped.

        :raises ValueError: empty, or an unknown name.
        """
        if not isinstance(value, str):
            return value
        names = tuple(dict.fromkeys(part.strip().lower() for part in value.split(",")))
        names = tuple(name for name in names if name)
        known = {kind.value for kind in DriverKind}
        if not names:
            raise ValueError("name at least one driver, e.g. 'ipmi'")
        for name in names:
            if name not in known:
                raise ValueError(f"unknown driver {name!r} (known: {', '.join(sorted(known))})")
        return names

    @field_validator("broker_url")
    @classmethod
    def _redis_only(cls, value: str | None) -> str | None:
        schemes = ("redis://", "rediss://", "redis+socket://", "sentinel://")
        if value is not None and not value.startswith(schemes):
            raise ValueError(
                "must be a Redis URL (redis://host:port/db) or a list of sentinels "
                "(sentinel://h1:26379;sentinel://h2:26379)"
            )
        if value is not None and value.startswith("sentinel://"):
            for part in value.split(";"):
                if not part.strip().startswith("sentinel://"):
                    raise ValueError(
                        "every ';'-separated part must be a sentinel:// URL "
                        f"(got {redact_userinfo(part)!r})"
                    )
        return value

    @model_validator(mode="after")
    def _master_name_with_sentinels(self) -> Settings:
        """:raises ValueError: sentinels without a master name, or a master name without them."""
        sentinels = (self.broker_url or "").startswith("sentinel://")
        if sentinels and not self.broker_master_name:
            raise ValueError(
                "POWERQ_BROKER_MASTER_NAME must be set with a sentinel:// broker URL "
                "(the name in the sentinels' `sentinel monitor NAME ...`)"
            )
        if self.broker_master_name and not sentinels:
            raise ValueError(
                "POWERQ_BROKER_MASTER_NAME is only meaningful with a sentinel:// broker URL"
            )
        return self


_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^@/\s;'\"]*@", re.IGNORECASE)


def redact_userinfo(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``
    (an error message must not carry a broker's or database's password)."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def load_settings() -> Settings:
    """Read settings from the environment.

    :raises ConfigError: a ``POWERQ_*`` variable has a malformed value.
    """
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"POWERQ_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            f" (got {redact_userinfo(repr(err.get('input')))})"
            if err["loc"]
            else err["msg"]  # a rule across settings (its message names them)
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()``."""
    return load_settings()


def sqlalchemy_url(url: str) -> str:
    """Normalise a PostgreSQL URL to the psycopg 3 dialect SQLAlchemy needs."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
