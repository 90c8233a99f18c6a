"""``powerq`` commands that talk to the HTTP API (``POWERQ_API_URL``, ``POWERQ_TOKEN``).

They hold no database or broker connection and import nothing of the server
side: :mod:`powerq.client` does the HTTP, and every error it raises is one line
(see :class:`powerq.cli.PowerqGroup`). :data:`powerq.cli.COMMANDS` names them,
so that each module is imported only when its command runs.
"""
