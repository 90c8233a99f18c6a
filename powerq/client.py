"""A small HTTP client of the powerq API, for the CLI.

It imports no server side (no settings model, no database, no Celery) and no
third-party HTTP library: :mod:`powerq.client_wire` speaks HTTP with the
standard library, and :meth:`Client.from_environment` reads the three
``POWERQ_*`` variables it needs itself, so ``powerq power NODE query`` starts
in a few hundredths of a second.

Every failure becomes a :class:`~powerq.errors.PowerqError` with one clear
line: the API's own problem+json ``detail`` (with the HTTP status), or what
went wrong reaching it ("cannot reach the powerq API at http://…: connection
refused — is `powerq up` running?"). The CLI prints that line, never a
traceback. A 403 names the role the call needs, and a 404 of the API's router
names what was not found.

A batch, a power action and a boot device are submitted with an
``Idempotency-Key`` and sent again with it when the submit may have reached the
server without its answer reaching us (:meth:`Client.submit`).
"""

from __future__ import annotations

import http.client
import json as jsonlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlencode

from powerq.client_wire import Answer, Wire
from powerq.errors import ConfigError, PowerqError, ServiceUnavailable

DEFAULT_TIMEOUT_S = 30.0
PAGE_SIZE = 500
# Per-node results per page of GET /v1/batches/{id} (the server allows up to 10,000).
BATCH_PAGE_SIZE = 2000
# Up to this many node names are checked one GET each; more, with one listing.
LOOKUPS_ONE_BY_ONE = 8
# Hang guard for paging through lists (PAGE_SIZE x MAX_PAGES items).
MAX_PAGES = 1000
TOKEN_FILE = "admin-token"
# The defaults of powerq.config.Settings (api_url, data_dir), which the server side reads.
DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_DATA_DIR = ".powerq"

# A submit (batch, power action, boot device) that timed out (or found the API
# briefly away) is sent again with the same Idempotency-Key this many times in all,
# so it never makes two batches or two requests.
SUBMIT_ATTEMPTS = 4
SUBMIT_BACKOFF_S = 1.0
# The longest Idempotency-Key the API accepts (printable ASCII, no spaces).
KEY_MAX = 255

T = TypeVar("T")


def needed_role(method: str, path: str) -> str:
    """The least role a call needs (what a 403 names): tokens and node registration
    are admin's, other changes operator's, reading reader's."""
    if path.startswith("/v1/tokens"):
        return "admin"
    if method == "GET":
        return "reader"
    node_itself = path.startswith("/v1/nodes") and not path.endswith(
        ("/power", "/boot-device", "/validate")
    )
    return "admin" if node_itself else "operator"


def new_key() -> str:
    """A fresh ``Idempotency-Key``: ``powerq-cli-<uuid4>``."""
    return f"powerq-cli-{uuid.uuid4()}"


def node_key(invocation: str, name: str) -> str:
    """The ``Idempotency-Key`` of node ``name``'s request in one command invocation
    (``invocation``: its :func:`new_key`): ``<invocation>-<name>``.

    A name is percent-encoded (a key is printable ASCII without spaces); one too
    long for a key (no node's name is) is replaced by its SHA-256.
    """
    key = f"{invocation}-{quote(name, safe='')}"
    if len(key) <= KEY_MAX:
        return key
    import hashlib  # only for a name that cannot be a node's

    return f"{invocation}-{hashlib.sha256(name.encode()).hexdigest()}"


class ApiError(PowerqError):
    """The API answered with an error (its problem document is kept in ``problem``)."""

    # How many times the call was sent (more than once by :meth:`Client.submit`), and
    # whether an earlier try may have reached the server without its answer reaching us.
    tries = 1
    maybe_sent = False

    def __init__(self, status: int, detail: str, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.problem_body: dict[str, Any] = dict(problem or {})

    def __str__(self) -> str:
        return f"{self.detail} (HTTP {self.status})"


class ApiUnreachable(ServiceUnavailable):
    """The API could not be reached, or did not answer. ``maybe_sent`` says whether
    the call may have reached it all the same (a timeout, a dropped connection):
    only such a call is worth sending again with its ``Idempotency-Key``."""

    # How many times the call was sent (more than once by :meth:`Client.submit`).
    tries = 1

    def __init__(self, detail: str, *, maybe_sent: bool = False) -> None:
        super().__init__(detail)
        self.maybe_sent = maybe_sent


class WaitTimeout(PowerqError):
    """What was waited for had not finished in time (it goes on in the server)."""


def _reason(exc: OSError | http.client.HTTPException) -> str:
    """A few words for why a connection failed, and what to do where it is clear."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused — is `powerq up` running?"
    if type(exc).__name__ == "SSLCertVerificationError":  # ssl is imported only for https
        why = getattr(exc, "verify_message", "") or "verification failed"
        return (
            f"its TLS certificate is not trusted ({why}): "
            "set POWERQ_CA_BUNDLE to the PEM file of the CA that signed it"
        )
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return type(exc).__name__


# What a path names, for a 404 the router gave (the name was not even well-formed).
_KINDS = {"nodes": "no node named {!r}", "requests": "no request {!r}",
          "batches": "no batch {!r}", "tokens": "no token {!r}"}  # fmt: skip


def _missing(path: str) -> str:
    """A 404 of the API's router in words: "no node named 'x'" rather than
    "nothing at /v1/nodes/x"."""
    parts = path.split("?")[0].strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "v1" and parts[1] in _KINDS:
        return _KINDS[parts[1]].format(unquote(parts[2]))
    return f"the API has nothing at {path}: is POWERQ_API_URL the powerq API?"


def setting(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The ``POWERQ_*`` variable ``name``, its case ignored as pydantic-settings does."""
    environ = os.environ if environ is None else environ
    if name in environ:
        return environ[name]
    wanted = name.lower()
    return next((value for key, value in environ.items() if key.lower() == wanted), None)


def _timeout(environ: Mapping[str, str] | None) -> float:
    """``POWERQ_API_TIMEOUT_S`` (seconds), else :data:`DEFAULT_TIMEOUT_S`.

    :raises ConfigError: it is not a positive number.
    """
    text = setting("POWERQ_API_TIMEOUT_S", environ)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ConfigError(
            f"POWERQ_API_TIMEOUT_S must be a positive number of seconds (got {text!r})"
        )
    return value


def _read_token(path: str) -> str | None:
    """The token in the file at ``path`` (None if there is no such file)."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


class Client:
    """Calls the powerq API at ``base_url`` with a bearer ``token``."""

    def __init__(self, base_url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT_S):
        """:raises ConfigError: ``base_url`` is not an ``http(s)://`` URL with a host."""
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        try:
            self.wire = Wire(self.base_url, timeout)  # loopback never goes through a proxy
        except ValueError:
            raise ConfigError(
                f"POWERQ_API_URL must start with http:// or https:// and name a host "
                f"(got {base_url!r})"
            ) from None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Client:
        """A client for ``POWERQ_API_URL`` with ``POWERQ_TOKEN`` (read now, not cached),
        waiting ``POWERQ_API_TIMEOUT_S`` seconds (default 30) for each answer.

        Without ``POWERQ_TOKEN``, the admin token ``powerq up`` wrote into
        ``$POWERQ_DATA_DIR`` is used when it exists. The defaults are those of
        :class:`powerq.config.Settings`.

        :raises ConfigError: ``POWERQ_API_URL`` is not an http(s) URL, or
            ``POWERQ_API_TIMEOUT_S`` is not a positive number.
        """
        token = setting("POWERQ_TOKEN", environ)
        if not token:
            data_dir = setting("POWERQ_DATA_DIR", environ)
            path = os.path.join(DEFAULT_DATA_DIR if data_dir is None else data_dir, TOKEN_FILE)
            token = _read_token(path)
        api_url = setting("POWERQ_API_URL", environ)
        return cls(DEFAULT_API_URL if api_url is None else api_url, token, _timeout(environ))

    # --- transport ----------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
        authenticated: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call; returns the decoded JSON body (None for 204).

        :raises ConfigError: no token is configured for an authenticated call.
        :raises ApiUnreachable: the API cannot be reached, or did not answer in time.
        :raises ApiError: the API answered with an error status.
        """
        headers = {"Accept": "application/json", **(headers or {})}
        if authenticated:
            if not self.token:
                raise ConfigError(
                    "POWERQ_TOKEN is not set: export a token made with "
                    "`powerq tokens create --role operator` (or the one `powerq up` printed)"
                )
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        if json is not None:
            data = jsonlib.dumps(json, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        query = {key: value for key, value in (params or {}).items() if value is not None}
        target = path + ("?" + urlencode(query, doseq=True) if query else "")
        try:
            answer = self.wire.send(method, target, data, headers)
        except TimeoutError:
            raise ApiUnreachable(
                f"the powerq API at {self.base_url} did not answer within {self.timeout:g} s",
                maybe_sent=True,
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnreachable(
                f"cannot reach the powerq API at {self.base_url}: {_reason(exc)}",
                maybe_sent=isinstance(exc, ConnectionResetError | http.client.HTTPException),
            ) from None
        try:
            return self._decode(method, self.base_url + target, answer)
        except ApiError as exc:
            if exc.status == 404 and exc.detail.startswith("nothing at "):
                raise ApiError(404, _missing(path), exc.problem_body) from None
            if exc.status == 403:
                role = needed_role(method, path)
                raise ApiError(
                    403,
                    f"{exc.detail}: {method} {path} needs a token with the {role} role "
                    f"(`powerq tokens create --role {role}`)",
                    exc.problem_body,
                ) from None
            raise

    def _decode(self, method: str, url: str, answer: Answer) -> Any:
        """The JSON body of a successful answer.

        :raises ApiError: an error status, or a success without JSON.
        """
        if answer.status == 204:
            return None
        try:
            body = jsonlib.loads(answer.body)
        except ValueError:
            body = None
        if answer.status < 400:
            if body is None:
                raise ApiError(answer.status, f"{url} did not answer with JSON")
            return body
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            raise ApiError(answer.status, body["detail"], body)
        raise ApiError(answer.status, f"{method} {url} failed: {answer.reason}")

    # --- resources -----------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /healthz`` (the API answers 503 when its database is down)."""
        try:
            return dict(self.call("GET", "/healthz", authenticated=False))
        except ApiError as exc:
            if exc.status == 503 and exc.problem_body:
                return {"status": "unavailable", **exc.problem_body}
            raise

    def pages(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Every item of a paginated list (``items``/``total``), page by page."""
        offset = 0
        for _ in range(MAX_PAGES):
            page = self.call("GET", path, params={**(params or {}), "limit": PAGE_SIZE,
                                                  "offset": offset})  # fmt: skip
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def nodes(self, **filters: Any) -> list[dict[str, Any]]:
        """Every node matching ``filters`` (query parameters of ``GET /v1/nodes``)."""
        params = {key: value for key, value in filters.items() if value is not None}
        return list(self.pages("/v1/nodes", params))

    def node(self, name: str) -> dict[str, Any]:
        """One node."""
        return dict(self.call("GET", f"/v1/nodes/{quote(name, safe='')}"))

    def add_node(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Register a node."""
        return dict(self.call("POST", "/v1/nodes", json=dict(body)))

    def change_node(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Change a node's fields (``PATCH``; absent fields stay)."""
        return dict(self.call("PATCH", f"/v1/nodes/{quote(name, safe='')}", json=dict(body)))

    def delete_node(self, name: str) -> None:
        """Delete a node (its requests and events stay)."""
        self.call("DELETE", f"/v1/nodes/{quote(name, safe='')}")

    def unknown_nodes(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that name no live node, in the order given.

        A few names are looked up one by one; more, with one listing of every
        node (a page per :data:`PAGE_SIZE` nodes).
        """
        wanted = list(dict.fromkeys(names))
        if len(wanted) > LOOKUPS_ONE_BY_ONE:
            known = {node["name"] for node in self.nodes()}
            return [name for name in wanted if name not in known]
        missing = []
        for name in wanted:
            try:
                self.node(name)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                missing.append(name)
        return missing

    def import_nodes(self, data: bytes, *, csv: bool, update: bool) -> dict[str, Any]:
        """Import a JSON or CSV manifest."""
        mode = "update" if update else "skip"
        content_type = "text/csv" if csv else "application/json"
        return dict(
            self.call("POST", "/v1/nodes/import", data=data, content_type=content_type,
                      params={"mode": mode})
        )  # fmt: skip

    def power(self, name: str, body: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        """Request a power action on one node, safely (:meth:`submit`, with ``key``
        or a new one): a retried submit never asks for the action twice.

        :raises ApiUnreachable: still unreachable after :data:`SUBMIT_ATTEMPTS` tries.
        :raises ApiError: the API refused the request (503 after as many tries).
        """
        path = f"/v1/nodes/{quote(name, safe='')}/power"
        return self.submit("POST", path, body, key or new_key())

    def boot_device(
        self, name: str, body: Mapping[str, Any], key: str | None = None
    ) -> dict[str, Any]:
        """Request a boot device on one node, safely (as :meth:`power`).

        :raises ApiUnreachable: still unreachable after :data:`SUBMIT_ATTEMPTS` tries.
        :raises ApiError: the API refused the request (503 after as many tries).
        """
        path = f"/v1/nodes/{quote(name, safe='')}/boot-device"
        return self.submit("PUT", path, body, key or new_key())

    def validate(self, name: str) -> dict[str, Any]:
        """Request a credential check (log in, read the state) of one node."""
        return dict(self.call("POST", f"/v1/nodes/{quote(name, safe='')}/validate"))

    def request(self, request_id: str) -> dict[str, Any]:
        """One power request."""
        return dict(self.call("GET", f"/v1/requests/{quote(request_id, safe='')}"))

    def cancel_request(self, request_id: str) -> dict[str, Any]:
        """Cancel a power request no worker has claimed (409 once claimed)."""
        return dict(self.call("DELETE", f"/v1/requests/{quote(request_id, safe='')}"))

    def requests(self, *, limit: int, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` power requests matching ``filters`` (the query parameters of
        ``GET /v1/requests``), newest first, and how many match in all."""
        items: list[dict[str, Any]] = []
        total = 0
        while len(items) < limit:
            size = min(PAGE_SIZE, limit - len(items))
            params = {**filters, "limit": size, "offset": len(items)}
            page = self.call("GET", "/v1/requests", params=params)
            items += page["items"]
            total = int(page["total"])
            if not page["items"] or len(items) >= total:
                break
        return items, total

    def create_batch(self, body: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        """Create a batch, safely (:meth:`submit`, with ``key`` or a new one).

        :raises ApiUnreachable: still unreachable after :data:`SUBMIT_ATTEMPTS` tries.
        :raises ApiError: the API refused the batch (503 after as many tries).
        """
        return self.submit("POST", "/v1/batches", body, key or new_key())

    def submit(self, method: str, path: str, body: Mapping[str, Any], key: str) -> dict[str, Any]:
        """Send a call that records something, with ``Idempotency-Key: key``; one that
        timed out or lost its connection after it was sent (the server may have
        recorded it), or was answered 503 (nothing recorded), is sent again with
        the same key, :data:`SUBMIT_ATTEMPTS` times in all. The server answers a
        repeat with what the first call recorded (``Idempotent-Replayed: true``),
        so a slow server makes neither a false failure nor a second record. A
        refused connection (nothing sent) is not retried.

        :raises ApiUnreachable: still unreachable after :data:`SUBMIT_ATTEMPTS` tries
            (``tries``: how many were sent; ``maybe_sent``: whether any may have
            been recorded).
        :raises ApiError: the API refused the call (503 after as many tries; ``tries``
            and ``maybe_sent`` likewise).
        """
        headers = {"Idempotency-Key": key}
        sent = False  # whether a try may have reached the server (and been recorded)
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                return dict(self.call(method, path, json=dict(body), headers=headers))
            except ApiUnreachable as exc:
                if not exc.maybe_sent or attempt == SUBMIT_ATTEMPTS:
                    exc.tries, exc.maybe_sent = attempt, exc.maybe_sent or sent
                    raise
                sent = True
            except ApiError as exc:
                if exc.status != 503 or attempt == SUBMIT_ATTEMPTS:
                    exc.tries, exc.maybe_sent = attempt, sent
                    raise
            time.sleep(SUBMIT_BACKOFF_S * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def batch(self, batch_id: str, *, results: bool = True) -> dict[str, Any]:
        """One batch (with every node's result, page by page, unless ``results`` is False)."""
        path = f"/v1/batches/{quote(batch_id, safe='')}"
        if not results:
            return dict(self.call("GET", path, params={"results": "false"}))
        first = dict(self.call("GET", path, params={"limit": BATCH_PAGE_SIZE, "offset": 0}))
        nodes = list(first["nodes"])
        for _ in range(MAX_PAGES):
            if len(nodes) >= first["total"]:
                break
            page = self.call("GET", path, params={"limit": BATCH_PAGE_SIZE, "offset": len(nodes)})
            if not page["nodes"]:
                break
            nodes += page["nodes"]
        return {**first, "nodes": nodes, "limit": len(nodes), "offset": 0}

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel what a batch has not started (running requests finish)."""
        return dict(self.call("DELETE", f"/v1/batches/{quote(batch_id, safe='')}"))

    def batches(self, *, limit: int, offset: int = 0) -> dict[str, Any]:
        """One page of batches, newest first."""
        return dict(self.call("GET", "/v1/batches", params={"limit": limit, "offset": offset}))

    def create_token(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create an API token (admin); the answer holds its secret, this once."""
        return dict(self.call("POST", "/v1/tokens", json=dict(body)))

    def tokens(self) -> list[dict[str, Any]]:
        """Every API token, oldest first (admin; never their secrets)."""
        return list(self.call("GET", "/v1/tokens")["items"])

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        """Revoke an API token (admin)."""
        return dict(self.call("DELETE", f"/v1/tokens/{int(token_id)}"))


def poll(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    interval: float = 0.5,
    on_update: Callable[[T], None] | None = None,
) -> T:
    """Call ``fetch`` until ``done`` says so; return the last value.

    :raises WaitTimeout: still not done after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if on_update is not None:
            on_update(value)
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"still not finished after {timeout:.0f}s (it goes on in the server)")
        time.sleep(interval)
