"""One exception hierarchy for powerq; each error knows its HTTP status.

The API turns any :class:`PowerqError` into an RFC 9457 problem+json body; the
CLI prints its message as one line.
"""

from __future__ import annotations

from typing import Any


class PowerqError(Exception):
    """Base of powerq's own errors."""

    status: int = 500
    title: str = "Internal error"
    slug: str = "internal"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        return {
            "type": f"https://powerq.dev/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class ConfigError(PowerqError):
    """A setting is missing or malformed."""

    title = "Configuration error"
    slug = "config"


class InvalidInput(PowerqError):
    """The request is well-formed JSON but says something powerq cannot do."""

    status = 422
    title = "Invalid input"
    slug = "invalid-input"


class DriverNotEnabled(InvalidInput):
    """A node names a BMC driver this installation does not enable (``POWERQ_DRIVERS``)
    or that does not exist yet; ``extra["enabled_drivers"]`` lists the enabled ones."""

    title = "Driver not enabled"
    slug = "driver-not-enabled"


class NotFound(PowerqError):
    """The named node, request, batch or token does not exist."""

    status = 404
    title = "Not found"
    slug = "not-found"


class Conflict(PowerqError):
    """The operation conflicts with the current state (e.g. delete with work outstanding)."""

    status = 409
    title = "Conflict"
    slug = "conflict"


class BmcEndpointTaken(Conflict):
    """Another live node is registered on the same BMC endpoint (address and port):
    two nodes on one BMC could receive two commands at once. ``extra["existing_node"]``
    names the node that holds it."""

    title = "BMC already registered"
    slug = "bmc-endpoint-taken"


class TokenNameTaken(Conflict):
    """A live (not revoked) API token already has this name: names are actors, so
    two live tokens may not share one."""

    title = "Token name taken"
    slug = "token-name-taken"


class AlreadyOutstanding(Conflict):
    """The database refused a second outstanding request for a node.

    Raised by the insert that the partial unique index rejected; ``node_id``
    names the node. Intents turn it into "same request" or "conflict".
    """

    title = "Request already outstanding"
    slug = "already-outstanding"

    def __init__(self, detail: str, *, node_id: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.node_id = node_id


class ConflictingRequest(Conflict):
    """Another action is outstanding on the node; it is never cancelled or replaced."""

    title = "Conflicting request outstanding"
    slug = "conflicting-request"


class Unauthorized(PowerqError):
    """No valid bearer token."""

    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(PowerqError):
    """The token's role may not do this."""

    status = 403
    title = "Forbidden"
    slug = "forbidden"


class ServiceUnavailable(PowerqError):
    """A backing service (PostgreSQL, Redis) cannot be reached."""

    status = 503
    title = "Service unavailable"
    slug = "unavailable"


class MalformedBody(PowerqError):
    """The request body is not strict UTF-8 JSON (duplicate keys, NaN, an absurd
    number, too deep, a byte-order mark, ...): refused before anything is done."""

    status = 400
    title = "Malformed request"
    slug = "malformed-request"


class UnsupportedMediaType(PowerqError):
    """The body's Content-Type is not JSON (or names a charset other than UTF-8)."""

    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"
