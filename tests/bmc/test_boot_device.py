"""Boot device over IPMI, checked with ipmitool as an independent client."""

from __future__ import annotations

import pytest

from powerq.bmc import driver_for
from powerq.bmc.ipmi_boot import parse_flags, set_request
from powerq.states import BootDevice
from tests.bmc.helpers import SimBmc, ipmitool, requires_ipmitool, within

pytestmark = pytest.mark.ipmi


@pytest.mark.parametrize("device", list(BootDevice))
@pytest.mark.parametrize("persistent", [False, True])
def test_boot_flags_round_trip(device: BootDevice, persistent: bool) -> None:
    flags = bytes(set_request(device, persistent=persistent)[1:])
    assert parse_flags(flags) == (device, persistent)


def test_no_override_reads_as_none() -> None:
    assert parse_flags(bytes(5)) == (None, False)


@requires_ipmitool
def test_powerq_sets_the_boot_device_ipmitool_reads_it(bmc: SimBmc) -> None:
    driver = driver_for(bmc.target)
    within(lambda: driver.set_boot_device(BootDevice.PXE, persistent=False))

    shown = ipmitool(bmc.target, "chassis", "bootparam", "get", "5", cipher="3")

    assert shown.returncode == 0, shown.stderr
    assert "Force PXE" in shown.stdout
    assert within(driver.get_boot_device) is BootDevice.PXE


@requires_ipmitool
def test_ipmitool_sets_the_boot_device_powerq_reads_it(bmc: SimBmc) -> None:
    done = ipmitool(bmc.target, "chassis", "bootdev", "disk", cipher="3")
    assert done.returncode == 0, done.stderr

    assert within(driver_for(bmc.target).get_boot_device) is BootDevice.DISK
    assert bmc.control.bmc(bmc.name)["boot"] == {"device": "disk", "persistent": False}
