"""powerq: serialised, durable, verified power actions for bare-metal fleets.

Nothing runs at import time; :func:`powerq.api.create_app` builds the web app.
"""

__version__ = "0.1.0"
