"""powerq: serialised, durable, verified power actions for bare-metal fleets.

Nothing runs at import time; :func:`create_app` builds the web app (and only
then imports Flask and the API modules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apiflask import APIFlask

    from powerq.config import Settings

__version__ = "0.1.0"


def create_app(settings: Settings | None = None) -> APIFlask:
    """Build the JSON API app (see :func:`powerq.api.create_app`).

    :raises ConfigError: a ``POWERQ_*`` setting is malformed.
    """
    from powerq.api import create_app as _create_app

    return _create_app(settings)
