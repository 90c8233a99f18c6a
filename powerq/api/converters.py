"""URL converters: ``<node:name>`` matches node names only (not the reserved
``import``), so ``/v1/nodes/import`` is unambiguous and a malformed name is a
plain 404 before any view runs."""

from __future__ import annotations

from apiflask import APIFlask
from werkzeug.routing import BaseConverter

from powerq.api.schemas import NODE_NAME_DOC_PATTERN


class NodeNameConverter(BaseConverter):
    """A node name path segment."""

    regex = NODE_NAME_DOC_PATTERN.removeprefix("^").removesuffix("$")
    part_isolating = True


def init_app(app: APIFlask) -> None:
    """Register ``<node:...>`` (before any blueprint that uses it)."""
    app.url_map.converters["node"] = NodeNameConverter
