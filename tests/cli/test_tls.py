"""The API served over TLS by gunicorn (as the README's Security section says) and the
CLI talking to it with ``POWERQ_API_URL=https://…`` and its CA in ``POWERQ_CA_BUNDLE``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from powerq.bmc.simfleet.tlscert import self_signed
from powerq.tokens import create_token
from tests.factories import make_node

STARTUP_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def tls_api(
    tmp_path_factory: pytest.TempPathFactory, services: object
) -> Iterator[tuple[str, Path]]:
    """gunicorn with the project's settings and a certificate for 127.0.0.1;
    yields the https URL and the CA file (the certificate is its own CA)."""
    directory = tmp_path_factory.mktemp("tls")
    pem, key_pem = self_signed("127.0.0.1")
    cert, key = directory / "api.crt", directory / "api.key"
    cert.write_text(pem)
    key.write_text(key_pem)
    port = _free_port()
    log = (directory / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:powerq.gunicorn_conf",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "gthread",
         "--threads", "2", "--certfile", str(cert), "--keyfile", str(key),
         "powerq.api.wsgi:app"],
        env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _accepts(port):
            assert server.poll() is None, (directory / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not listen in time"
            time.sleep(0.1)
        yield f"https://127.0.0.1:{port}", cert
    finally:
        server.terminate()
        server.wait(20)
        log.close()


def _powerq(url: str, token: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.endswith("CA_BUNDLE")}
    environment.update(POWERQ_API_URL=url, POWERQ_TOKEN=token, **env)
    return subprocess.run(
        [sys.executable, "-m", "powerq.cli", *args],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_cli_queries_over_tls_with_the_ca_bundle_it_is_given(
    tls_api: tuple[str, Path], session: Session
) -> None:
    url, ca = tls_api
    make_node(session, "tls-node")
    _, token = create_token(session, role="admin", name="tls-admin")
    session.commit()

    listed = _powerq(url, token, "nodes", "list", POWERQ_CA_BUNDLE=str(ca))
    assert listed.returncode == 0, listed.stderr
    assert "tls-node" in listed.stdout


def test_an_untrusted_certificate_is_one_line_naming_the_setting(
    tls_api: tuple[str, Path], session: Session
) -> None:
    url, _ = tls_api
    _, token = create_token(session, role="admin", name="tls-admin-2")
    session.commit()

    refused = _powerq(url, token, "nodes", "list")
    assert refused.returncode != 0
    message = refused.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert "TLS certificate is not trusted" in message and "POWERQ_CA_BUNDLE" in message
