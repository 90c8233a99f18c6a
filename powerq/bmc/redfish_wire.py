"""sushy's HTTP connector, bounded, and a power POST that goes out exactly once.

sushy's ``Connector._op`` is built for Ironic, which prefers persistence to
speed: it retries *any* request (a POST included) up to three times after a
connection error or a read timeout (``retries = server_side_retries or 3``,
so 0 still means 3), re-sends GETs after a 5xx, re-sends a POST after
iDRAC/iLO "not ready" messages, and re-sends any request once after logging
in again on a 401. For reads that is harmless and kept, bounded here: one
transport attempt (``server_side_retries=1``), one re-send of a GET after a
5xx, connect and read timeouts of a few seconds.

A power-changing POST must never be re-sent (a BMC that received the first
copy runs it twice), so :meth:`OnceConnector.post_once` writes it on the
connector's ``requests`` session directly: one ``Session.request`` with the
session's credentials, ``requests``' default of no transport retries, no
re-login, no re-send on any status. Whatever happens after it left is
reported, never repaired.
"""

from __future__ import annotations

from typing import Any
from urllib import parse as urlparse

import requests
from requests.adapters import HTTPAdapter
from sushy.connector import Connector

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 6.0
GET_RETRY_DELAY_S = 1.0
_HEADERS = {
    "Content-Type": "application/json",
    "OData-Version": "4.0",
    "Accept-Encoding": "identity",
}


class OnceConnector(Connector):  # type: ignore[misc]  # sushy is untyped
    """A sushy connector with bounded reads and an unretried POST for commands."""

    def __init__(
        self,
        url: str,
        *,
        verify: bool | str,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        super().__init__(
            url,
            verify=verify,
            server_side_retries=1,  # 1 transport attempt; 1 re-send of a GET after a 5xx
            server_side_retries_delay=GET_RETRY_DELAY_S,
            default_request_timeout=read_timeout,
            connect_timeout=connect_timeout,
        )
        self.timeout = (connect_timeout, read_timeout)
        # requests' default already retries nothing; say so explicitly.
        for scheme in ("https://", "http://"):
            self._session.mount(scheme, HTTPAdapter(max_retries=0))

    @property
    def base_url(self) -> str:
        """The BMC's base URL (scheme and authority)."""
        return str(self._url)

    def post_once(self, path: str, data: dict[str, Any]) -> requests.Response:
        """POST ``data`` to ``path`` exactly once and return the BMC's answer, whatever
        its status (the caller maps it).

        :raises requests.RequestException: the transport failed (before or after
            the request was written: the caller tells them apart).
        """
        url = path if urlparse.urlparse(path).netloc else urlparse.urljoin(self._url, path)
        response: requests.Response = self._session.request(
            "POST",
            url,
            json=data,
            headers=dict(_HEADERS),
            verify=self._verify,
            timeout=self.timeout,
            allow_redirects=False,
        )
        return response
