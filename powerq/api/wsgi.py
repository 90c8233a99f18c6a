"""WSGI entry point: ``gunicorn 'powerq.api.wsgi:app'``."""

from __future__ import annotations

from powerq.api import create_app

app = create_app()
