"""The exit codes of the ``powerq`` API commands, and which error ends with which.

======  =====================================================================
code    meaning
======  =====================================================================
0       everything asked for was accepted (and, with ``--wait``, succeeded)
1       something failed or was refused (the others went on)
2       usage: a bad option, an unknown node/request/batch, input the API
        refused as invalid (400/404/422), a bad setting, a token that is
        missing, refused (401) or lacks the role (403); nothing was done
3       the API could not be reached, or could not record anything (503)
4       ``--wait`` gave up waiting: the work goes on in the server
======  =====================================================================

The mapping lives here, not in :mod:`powerq.errors`: it is the command line's
business. :func:`code_for` is imported only when a command fails, so that
``powerq --version`` imports nothing of it.
"""

from __future__ import annotations

import uuid
from typing import Any

from powerq.errors import ConfigError, PowerqError

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
STILL_RUNNING = 4


class Exit(PowerqError):
    """A command's own failure, with the exit code it ends with."""

    def __init__(self, detail: str, code: int = FAILED, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.code = code


def parse_uuid(text: str, kind: str) -> str:
    """``text`` as the id of a ``kind`` (``request``, ``batch``): a UUID.

    :raises Exit: it is not a UUID, so no ``kind`` has it (exit 2).
    """
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise Exit(f"no {kind} {text!r}: {kind} ids are UUIDs", USAGE) from None


def code_for(error: PowerqError) -> int:
    """The exit code a command that failed with ``error`` ends with."""
    from powerq.client import ApiError, ApiUnreachable, WaitTimeout

    if isinstance(error, Exit):
        return error.code
    if isinstance(error, ApiUnreachable | WaitTimeout):
        return UNREACHABLE if isinstance(error, ApiUnreachable) else STILL_RUNNING
    if isinstance(error, ConfigError):
        return USAGE
    if isinstance(error, ApiError):
        if error.status == 503:
            return UNREACHABLE
        if error.status in (400, 401, 403, 404, 422):
            return USAGE
    return FAILED
