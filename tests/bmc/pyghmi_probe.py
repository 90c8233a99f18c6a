"""Reproduce one pyghmi pitfall in a fresh process (pyghmi's state is process-global).

Run as ``python -m tests.bmc.pyghmi_probe CASE PORT [--patched]``; prints one
JSON object and exits. The tests compare the unpatched and patched runs.

Cases:
  lost-wakeup    a login-style waiter (``while cond: wait``) whose condition is
                 changed by another thread, with no network traffic to wake it
  queued-reply   a command waiter that registers after the IO thread already
                 read its reply
  str-credentials  a second ``Command`` to a BMC with an open session, str vs bytes
  suite-answer   log in to a BMC that answers a suite-17 proposal with suite 3
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any

from pyghmi.ipmi import command
from pyghmi.ipmi.private import session

WAIT_S = 20.0  # what pyghmi would sleep without a wake-up (a keep-alive-sized deadline)
GRACE_S = 1.5  # a waiter still blocked this long after its cue missed the wake-up
QUIET_S = 0.5  # after login, so the IO thread's last iteration cannot wake our waiter


def _login(port: int, creds: type[bytes] | type[str] = bytes) -> Any:
    """Log in, then let pyghmi's IO thread go quiet (so only the probe can wake a waiter)."""
    user, password = ("admin", "password") if creds is str else (b"admin", b"password")
    logged_in = command.Command(bmc="127.0.0.1", userid=user, password=password, port=port)
    time.sleep(QUIET_S)
    return logged_in


def _blocked_after_cue(loop_body: Any, cue: Any) -> bool:
    """Start ``loop_body`` in a thread, give the cue, report whether it is still blocked."""
    thread = threading.Thread(target=loop_body, daemon=True)
    thread.start()
    time.sleep(0.3)
    cue()
    thread.join(GRACE_S)
    return thread.is_alive()


def lost_wakeup(port: int) -> dict[str, Any]:
    _login(port)
    waiting = [True]

    def login_loop() -> None:  # the shape of Session.__init__'s `while self.logging:`
        for _ in range(10_000):
            if not waiting[0]:
                return
            session._io_wait(WAIT_S)

    return {"blocked": _blocked_after_cue(login_loop, lambda: waiting.__setitem__(0, False))}


def queued_reply(port: int) -> dict[str, Any]:
    ipmi = _login(port).ipmi_session
    addr = ipmi.sockaddr
    ipmi.pktqueue.append((b"\x06\x00\xff\x07", addr, ipmi.socket))  # read before we wait
    ipmi.awaitingresponse = True  # as inside Session.awaitresponse

    def one_wait() -> None:
        session._io_wait(WAIT_S, addr)

    blocked = _blocked_after_cue(one_wait, lambda: None)
    ipmi.pktqueue.clear()
    return {"blocked": blocked}


def str_credentials(port: int, creds: type[bytes] | type[str]) -> dict[str, Any]:
    first = _login(port, creds)
    second: list[Any] = []
    blocked = _blocked_after_cue(lambda: second.append(_login(port, creds)), lambda: None)
    same = bool(second) and second[0].ipmi_session is first.ipmi_session
    return {"blocked": blocked, "same_session": same}


def suite_answer(port: int) -> dict[str, Any]:
    """Log in (bounded); report whether it worked and, if not, pyghmi's error."""
    outcome: dict[str, Any] = {"ok": False, "error": "login still running (hung)"}

    def login() -> None:
        try:
            _login(port)
            outcome.update(ok=True, error="")
        except Exception as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=login, daemon=True)
    thread.start()
    thread.join(WAIT_S)
    return dict(outcome)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "case", choices=["lost-wakeup", "queued-reply", "str", "bytes", "suite-answer"]
    )
    parser.add_argument("port", type=int)
    parser.add_argument("--patched", action="store_true")
    args = parser.parse_args()
    if args.patched:
        from powerq.bmc import pyghmi_patches

        pyghmi_patches.apply()
    cases = {
        "lost-wakeup": lambda: lost_wakeup(args.port),
        "queued-reply": lambda: queued_reply(args.port),
        "str": lambda: str_credentials(args.port, str),
        "bytes": lambda: str_credentials(args.port, bytes),
        "suite-answer": lambda: suite_answer(args.port),
    }
    print(json.dumps(cases[args.case]()), flush=True)
    os._exit(0)  # a pyghmi thread may still be stuck: do not wait for it


if __name__ == "__main__":
    main()
