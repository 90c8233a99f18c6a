"""The one short transaction each API call makes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy.orm import Session

from powerq.api.serializers import to_json
from powerq.db import session_scope
from powerq.errors import PowerqError


@contextlib.contextmanager
def transaction() -> Iterator[Session]:
    """:func:`powerq.db.session_scope`, plus: rows a :class:`PowerqError` carries
    (e.g. the outstanding request of a 409) are serialised *before* the rollback
    detaches them, so the problem document can include them.

    :raises ConfigError: no database URL is configured.
    """
    with session_scope() as session:
        try:
            yield session
        except PowerqError as exc:
            exc.extra = {key: to_json(value) for key, value in exc.extra.items()}
            raise
