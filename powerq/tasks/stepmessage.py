"""The Redis payload of a ``powerq.step`` message, built once per lane and filled in per message.

Celery (:meth:`celery.app.amqp.AMQP.create_task_message`: the protocol-2
headers a worker reads) and kombu's Redis channel (body serialisation and
encoding, delivery info) build the payload once per lane queue, with holes for
what differs from one message to the next: the task id (also ``root_id`` and
``correlation_id``), the request id (in the args and ``argsrepr``), the node
and action it is for (``kwargsrepr``, see :func:`step_kwargsrepr`), the sending
thread's ``reply_to``, kombu's ``delivery_tag`` and the encoded body. A message
is then the template with its holes filled: a few string joins instead of the
~350 Python calls of Celery's message building and kombu's framing per publish.
``tests/api/test_lane_publisher.py`` holds the result to what ``send_task``
puts on the lane.

Only a step at once with the request id as its sole argument (the API's and
the sweeper's ring) takes this path; a countdown or a parked continuation is
built by Celery each time (:func:`powerq.tasks.dispatch.send_step`).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kombu import serialization
from kombu.entity import PERSISTENT_DELIVERY_MODE
from kombu.utils.json import dumps as json_dumps

from powerq.tasks.app import app

_HOLE = re.compile(r"@@powerq:(\w+)@@")


def _hole(name: str) -> str:
    return f"@@powerq:{name}@@"


def step_kwargsrepr(node_name: str, action: str | None) -> str:
    """What Flower (and the worker's log) shows as a step's keyword arguments: the
    node and, where the publisher knows it, the action, e.g. ``{'node': 'n1',
    'action': 'off'}``. Only shown: the task's real arguments stay the request id
    alone (the task re-reads everything), and nothing secret is ever in here.
    A dict's repr, so Flower's search finds ``kwargs:node=n1``."""
    shown = {"node": node_name} if action is None else {"node": node_name, "action": str(action)}
    return repr(shown)


def _json_text(text: str) -> str:
    """``text`` escaped to sit inside a JSON string (a hole of a template)."""
    return json.dumps(text)[1:-1]


class Template:
    """A text with named holes (``@@powerq:NAME@@``), filled by joining strings.

    Values go in as they are: only text that needs no JSON escaping (ids,
    base64) may fill a hole inside a JSON string.
    """

    def __init__(self, text: str) -> None:
        self._parts = _HOLE.split(text)  # literal, name, literal, name, ..., literal

    @property
    def holes(self) -> frozenset[str]:
        """The names of the holes."""
        return frozenset(self._parts[1::2])

    def fill(self, values: Mapping[str, str]) -> str:
        """The text with every hole replaced by its value.

        :raises KeyError: a hole has no value.
        """
        parts = self._parts.copy()
        parts[1::2] = [values[name] for name in parts[1::2]]
        return "".join(parts)


@dataclass(frozen=True)
class StepTemplate:
    """A lane's ``powerq.step`` message for one request id, as LPUSHed to ``key``."""

    key: str
    message: Template
    body: Template

    @classmethod
    def build(cls, channel: Any, queue: str, task_name: str) -> StepTemplate:
        """Let Celery and ``channel`` (kombu's Redis channel) build a message for
        ``queue`` with holes in it.

        :raises ValueError: the channel does not base64-encode bodies (then a
            body could not fill a hole in JSON text unescaped).
        """
        args = [_hole("request_id")]
        task = app.amqp.create_task_message(
            _hole("task_id"),
            task_name,
            args,
            {},
            reply_to=_hole("reply_to"),
            ignore_result=None,
            argsrepr=repr(args),  # what Celery's saferepr makes of an id, for less
            kwargsrepr=_hole("kwargsrepr"),
        )
        serialized = serialization.dumps(task.body, serializer="json")  # type: ignore[no-untyped-call]
        content_type, content_encoding, payload = serialized
        properties = {**task.properties, "delivery_mode": PERSISTENT_DELIVERY_MODE}
        message = channel.prepare_message(
            payload, 0, content_type, content_encoding, task.headers, properties
        )
        channel._inplace_augment_message(message, "", queue)
        if message["properties"].get("body_encoding") != "base64":
            raise ValueError("the broker channel does not base64-encode message bodies")
        message["body"] = _hole("body")
        message["properties"]["delivery_tag"] = _hole("delivery_tag")
        key = channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))
        return cls(key, Template(json_dumps(message)), Template(payload))  # type: ignore[no-untyped-call]

    def render(self, request_id: str, reply_to: str, kwargsrepr: str = "{}") -> str:
        """The message waking the lane for ``request_id``: a new task id and delivery
        tag; ``kwargsrepr`` is what Flower shows as its keyword arguments."""
        body = self.body.fill({"request_id": request_id}).encode("utf-8")
        return self.message.fill(
            {
                "task_id": str(uuid.uuid4()),
                "request_id": request_id,
                "reply_to": reply_to,
                "kwargsrepr": _json_text(kwargsrepr),
                "delivery_tag": str(uuid.uuid4()),
                "body": base64.b64encode(body).decode("ascii"),
            }
        )
