"""``python -m powerq.bmc.simfleet``: the same as ``powerq sim-fleet``."""

from powerq.bmc.simfleet.cli import sim_fleet

if __name__ == "__main__":
    sim_fleet(prog_name="python -m powerq.bmc.simfleet")
