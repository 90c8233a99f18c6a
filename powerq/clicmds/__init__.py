"""``powerq`` commands that talk to the HTTP API (``POWERQ_API_URL``, ``POWERQ_TOKEN``).

They hold no database or broker connection: :mod:`powerq.client` does the
HTTP, and every error it raises is one line (see :class:`powerq.cli.PowerqGroup`).
"""

from __future__ import annotations

import click

from powerq.clicmds.batch import batch, batches
from powerq.clicmds.nodes import nodes
from powerq.clicmds.power import boot, power, requests_group, status

CLIENT_COMMANDS: tuple[click.Command, ...] = (
    nodes,
    power,
    boot,
    requests_group,
    status,
    batch,
    batches,
)

__all__ = ["CLIENT_COMMANDS"]
