"""What a view may return: a pydantic model (serialised by its ``@output``), with
a status and headers, or a finished response."""

from __future__ import annotations

from flask import Response
from pydantic import BaseModel

ViewResult = BaseModel | Response | tuple[BaseModel, int] | tuple[BaseModel, int, dict[str, str]]
