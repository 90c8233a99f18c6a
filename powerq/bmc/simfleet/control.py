"""Control operations on a running fleet (what the HTTP control API exposes).

Every method runs on the fleet's event-loop thread (the HTTP layer hops
there), so BMC state is never touched from two threads.
"""

from __future__ import annotations

from typing import Any

from powerq.bmc.simfleet.fleet import Fleet


class ControlError(ValueError):
    """A control request with bad parameters (HTTP 400)."""


class ControlApi:
    """The operations tests and benchmarks use to watch and steer the fleet."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def health(self) -> dict[str, Any]:
        """Liveness and fleet size."""
        return {"ok": True, "count": len(self.fleet.bmcs)}

    def manifest(self) -> list[dict[str, Any]]:
        """The manifest records (same as the manifest file)."""
        return self.fleet.manifest()

    def bmcs(self) -> list[dict[str, Any]]:
        """Status of every BMC."""
        return [bmc.status() for bmc in self.fleet.bmcs.values()]

    def bmc(self, name: str) -> dict[str, Any]:
        """Status of one BMC.

        :raises KeyError: no such BMC.
        """
        return self.fleet.get(name).status()

    def log(self, name: str) -> dict[str, Any]:
        """The command log of one BMC, oldest first.

        :raises KeyError: no such BMC.
        """
        bmc = self.fleet.get(name)
        return {"name": name, "entries": [entry.to_json() for entry in bmc.log.entries()]}

    def set_fault(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Activate a fault: ``{"kind": "slow", "delay": 2.0}``.

        :raises KeyError: no such BMC.
        :raises ControlError: unknown kind or bad parameter.
        """
        bmc = self.fleet.get(name)
        params = dict(body)
        kind = str(params.pop("kind", ""))
        if kind in bmc.unsupported_faults:
            raise ControlError(f"fault {kind!r} does not apply to {name}'s protocol")
        try:
            bmc.faults.set(kind, params)
        except (ValueError, TypeError) as exc:
            raise ControlError(f"bad fault for {name}: {exc}") from exc
        bmc.faults_changed()
        return bmc.status()

    def clear_fault(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Clear one fault (``{"kind": ...}``) or all of them (``{}``).

        :raises KeyError: no such BMC.
        :raises ControlError: unknown kind.
        """
        bmc = self.fleet.get(name)
        try:
            bmc.faults.clear(body.get("kind"))
        except ValueError as exc:
            raise ControlError(f"bad fault kind for {name}: {exc}") from exc
        bmc.faults_changed()
        return bmc.status()

    def set_behaviour(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Change delays: ``{"transition": 1.0, "soft_delay": null}`` (null: never).

        Keys left out keep their value.

        :raises KeyError: no such BMC.
        :raises ControlError: a delay that is not a non-negative number.
        """
        bmc = self.fleet.get(name)
        behaviour = bmc.machine.behaviour
        if "transition" in body:
            behaviour.transition = _delay(body["transition"], "transition")
        if "soft_delay" in body:
            soft = body["soft_delay"]
            behaviour.soft_delay = None if soft is None else _delay(soft, "soft_delay")
        return bmc.status()

    def set_power(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Set the power state directly, as if someone pressed the button: ``{"state": "on"}``.

        :raises KeyError: no such BMC.
        :raises ControlError: state is not "on" or "off".
        """
        bmc = self.fleet.get(name)
        state = body.get("state")
        if state not in ("on", "off"):
            raise ControlError(f"state must be 'on' or 'off', not {state!r}")
        bmc.machine.set_power(state == "on")
        return bmc.status()

    def overlaps(self) -> dict[str, Any]:
        """Overlapping power operations: the total and each BMC with at least one."""
        per_bmc = {
            name: bmc.machine.overlaps
            for name, bmc in self.fleet.bmcs.items()
            if bmc.machine.overlaps
        }
        return {"total": sum(per_bmc.values()), "per_bmc": per_bmc}

    def reset_logs(self) -> dict[str, Any]:
        """Clear every log and counter (overlaps, resets, sessions opened, packets)."""
        for bmc in self.fleet.bmcs.values():
            bmc.reset_counters()
        return {"ok": True}


def _delay(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ControlError(f"{name} must be a number of seconds, not {value!r}") from exc
    if not 0 <= number <= 86400:
        raise ControlError(f"{name} must be within 0..86400 s, not {number}")
    return number
