"""gunicorn settings shared by ``powerq up`` and the Procfile
(``gunicorn --config python:powerq.gunicorn_conf …``).

The access log names the path only: never the query string (a client may put a
token in ``?access_token=``; the API refuses it, but a log line would keep it),
the referrer (which can carry one too), or any header value such as
``Authorization``. gunicorn's default format logs the raw request line
(``%(r)s``) and the referrer (``%(f)s``).
"""

from __future__ import annotations

# client, time, method, path (no query), protocol, status, bytes, duration (s), user agent
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(L)s "%(a)s"'

# gthread, but the 400/414/431 (and 500) answers gunicorn writes itself are
# problem+json like the API's own (powerq/gunicorn_worker.py). Do not also pass
# --worker-class: the command line wins over this file.
worker_class = "powerq.gunicorn_worker.ProblemThreadWorker"
