"""Run sushy-tools' ``sushy-emulator`` with power transitions of about a second.

The emulator's fake driver applies a power change 1-11 s (at random) after
the request; this entry point fixes that delay at its minimum so the suite is
quick and predictable. Nothing else of the emulator is changed.
"""

from __future__ import annotations

import random
import sys

from sushy_tools.emulator import main as emulator
from sushy_tools.emulator.resources.systems import fakedriver


class _Quick(random.Random):
    def randint(self, a: int, b: int) -> int:
        return a


if __name__ == "__main__":
    fakedriver.random = _Quick()  # type: ignore[assignment]
    sys.exit(emulator.main())
