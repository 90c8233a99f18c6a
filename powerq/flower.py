"""``powerq flower``: Celery Flower, never without authentication.

Flower's HTTP API can shut workers down and run tasks. Without authentication
(``FLOWER_UNAUTHENTICATED_API=1``) Flower 2.2 answers every origin with
``Access-Control-Allow-Origin: *`` and skips its cross-site check, so any web
page a local browser opens can drive it. With basic auth configured it sends
no CORS header, refuses cross-site writes (403) and asks every request for
credentials (401).

The credentials reach Flower in its environment (``FLOWER_BASIC_AUTH``, which
Flower reads like ``--basic-auth``), not on its command line: a process's
arguments are readable by every local user, its environment only by its owner.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

import click

AUTH_VARIABLE = "POWERQ_FLOWER_AUTH"
AUTH_FILE = "flower-auth"
USER = "powerq"
DEFAULT_PORT = 5555
_UNSAFE = ("FLOWER_UNAUTHENTICATED_API", "FLOWER_BASIC_AUTH", AUTH_VARIABLE)


def check_auth(value: str) -> str:
    """``value`` stripped, if it is ``user:password`` (or several, comma-separated,
    as Flower takes them) with neither part empty.

    :raises ValueError: it is not (the message says what is expected, never the value).
    """
    value = value.strip()
    pairs = [pair.partition(":") for pair in value.split(",")]
    if not value or any(not user or not sep or not password for user, sep, password in pairs):
        raise ValueError(f"{AUTH_VARIABLE} must be user:password (several: comma-separated)")
    return value


def read_or_create_auth(data_dir: Path) -> str:
    """The ``user:password`` kept in ``DATA_DIR/flower-auth``; made once (a random
    password for user ``powerq``, mode 0600) when the file is missing or unusable.

    :raises OSError: the file cannot be read or written.
    """
    path = data_dir / AUTH_FILE
    try:
        auth = check_auth(path.read_text())
        path.chmod(0o600)
        return auth
    except (FileNotFoundError, ValueError):
        pass
    auth = f"{USER}:{secrets.token_urlsafe(24)}"  # no ',' or ':' in it (Flower splits on ',')
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(auth + "\n")
    return auth


def flower_argv(address: str, port: int) -> list[str]:
    """Flower's command line (no credentials in it)."""
    return [
        sys.executable, "-m", "celery", "-A", "powerq.tasks", "flower",
        f"--address={address}", f"--port={port}",
    ]  # fmt: skip


def flower_env(environ: Mapping[str, str], auth: str) -> dict[str, str]:
    """``environ`` for Flower: basic auth set, the unauthenticated API switch removed."""
    env = {key: value for key, value in environ.items() if key not in _UNSAFE}
    env["FLOWER_BASIC_AUTH"] = auth
    return env


@click.command("flower")
@click.option("--address", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True,
              envvar="POWERQ_FLOWER_PORT", help="Port (POWERQ_FLOWER_PORT).")  # fmt: skip
def flower(address: str, port: int) -> None:
    """Run Celery Flower with basic auth from POWERQ_FLOWER_AUTH (user:password).

    Replaces itself with Flower. Refuses to start without the variable: Flower
    is never run without authentication.
    \f

    :raises click.UsageError: POWERQ_FLOWER_AUTH is unset or malformed.
    """
    try:
        auth = check_auth(os.environ.get(AUTH_VARIABLE, ""))
    except ValueError as exc:
        raise click.UsageError(f"{exc}; Flower never runs without authentication") from None
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, flower_argv(address, port), flower_env(os.environ, auth))
