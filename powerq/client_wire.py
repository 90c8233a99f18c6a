"""The HTTP under :mod:`powerq.client`: the standard library's ``http.client``.

``requests`` alone costs more CPU to import than the CLI's whole budget
(0.15 s for ``powerq power NODE query``), so the client speaks HTTP/1.1 itself:
one kept-alive connection per client (reopened when the server closed it),
the ``HTTP(S)_PROXY``/``NO_PROXY`` environment for anything but loopback, and
TLS verified against ``POWERQ_CA_BUNDLE`` (a PEM file: the CA of a private
API certificate), else ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` or certifi's
bundle (what ``requests`` used), or else the system's.
"""

from __future__ import annotations

import http.client
import os
import select
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import SplitResult, unquote, urlsplit

if TYPE_CHECKING:
    import ssl

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Answer(NamedTuple):
    """One HTTP response, read whole."""

    status: int
    reason: str
    body: bytes


class Wire:
    """HTTP/1.1 to the origin of ``base_url`` over one kept-alive connection.

    :raises ValueError: ``base_url`` is not an ``http://`` or ``https://`` URL with a host.
    """

    def __init__(self, base_url: str, timeout: float) -> None:
        self.origin = urlsplit(base_url)
        if self.origin.scheme not in ("http", "https") or not self.origin.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.timeout = timeout
        self.loopback = self.origin.hostname in LOOPBACK
        # Plain HTTP through a proxy names the whole URL and carries the proxy's credentials.
        self._absolute = False
        self._proxy_headers: dict[str, str] = {}
        self._connection: http.client.HTTPConnection | None = None

    def send(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        """Send one request (``target``: the path and query under ``base_url``'s path).

        :raises TimeoutError: no connection or no answer within the timeout.
        :raises OSError: the connection failed (refused, reset, unknown host, TLS).
        :raises http.client.HTTPException: the server's answer was not HTTP.
        """
        connection = self._connect()
        path = self.origin.path.rstrip("/") + target
        if self._absolute:
            path = f"{self.origin.scheme}://{self.origin.netloc}{path}"
        try:
            connection.request(method, path, body=body, headers={**headers, **self._proxy_headers})
            response = connection.getresponse()
            answer = Answer(response.status, response.reason, response.read())
        except BaseException:
            connection.close()  # whatever it was in the middle of is lost with it
            raise
        return answer

    def close(self) -> None:
        """Close the connection (the next :meth:`send` opens another)."""
        if self._connection is not None:
            self._connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        """The kept-alive connection, closed first when the server has hung up on it."""
        if self._connection is None:
            self._connection = self._open()
        sock = self._connection.sock
        if sock is not None and select.select([sock], [], [], 0)[0]:
            self._connection.close()  # readable while idle: closed by the server (or junk)
        return self._connection

    def _open(self) -> http.client.HTTPConnection:
        origin = self.origin
        proxy = None if self.loopback else _proxy(origin)
        if origin.scheme == "https":
            context = _tls_context()
            if proxy is None:
                return http.client.HTTPSConnection(
                    origin.hostname or "", origin.port, timeout=self.timeout, context=context
                )
            tunnel = http.client.HTTPSConnection(
                proxy.hostname or "", proxy.port or 80, timeout=self.timeout, context=context
            )
            tunnel.set_tunnel(origin.hostname or "", origin.port, headers=_proxy_auth(proxy))
            return tunnel
        if proxy is None:
            return http.client.HTTPConnection(origin.hostname or "", origin.port, self.timeout)
        self._absolute, self._proxy_headers = True, _proxy_auth(proxy)
        return http.client.HTTPConnection(proxy.hostname or "", proxy.port or 80, self.timeout)


def _proxy(origin: SplitResult) -> SplitResult | None:
    """The proxy the environment names for ``origin`` (``NO_PROXY`` honoured), if any."""
    from urllib.request import getproxies_environment, proxy_bypass

    proxies = getproxies_environment()
    url = proxies.get(origin.scheme) or proxies.get("all")
    if not url or proxy_bypass(origin.netloc):
        return None
    return urlsplit(url if "://" in url else f"http://{url}")


def _proxy_auth(proxy: SplitResult) -> dict[str, str]:
    """``Proxy-Authorization`` for a proxy URL with ``user:password@`` (else nothing)."""
    if proxy.username is None:
        return {}
    import base64

    pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}


def _tls_context() -> ssl.SSLContext:
    """A verifying TLS context: ``POWERQ_CA_BUNDLE``, else the CA bundle
    ``requests`` would have used."""
    import ssl

    cafile = (
        os.environ.get("POWERQ_CA_BUNDLE")
        or os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
    )
    if not cafile:
        try:
            import certifi
        except ImportError:
            cafile = None
        else:
            cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile)
