"""The status page's first useful paint at 10,000 nodes, as a ratio to loading
the bare page (the sign-in form: same HTML, styles and scripts, no data) and to
``/healthz``, in the same Chromium run.

``python -m bench.ui_paint [--repeat N]`` runs the measuring UI test
(``tests/ui/test_fleet_scale.py``, which owns the database, the live app and
Debian's Chromium) with ``N`` interleaved loads of each and prints the medians;
the figures go to ``bench/results/ui_paint.json`` and docs/status-page.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/ui/test_fleet_scale.py::test_ten_thousand_nodes_show_one_page_counted_by_the_server"
RESULT = ROOT / "bench" / "results" / "ui_paint.json"


def measure(repeat: int) -> dict[str, float]:
    """Run the measuring test once; its figures.

    :raises subprocess.CalledProcessError: the test failed.
    """
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "paint.json"
        env = {**os.environ, "POWERQ_UI_PAINT_REPEAT": str(repeat),
               "POWERQ_UI_PAINT_REPORT": str(report)}  # fmt: skip
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", TEST]
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        figures: dict[str, float] = json.loads(report.read_text())
    return figures


def main() -> None:
    """Measure, print and record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="loads of each page (median)")
    args = parser.parse_args()
    figures = measure(args.repeat)
    RESULT.write_text(json.dumps(figures, indent=2) + "\n")
    print(
        f"{figures['nodes']:,} nodes, median of {figures['repeat']}: first useful paint "
        f"{figures['first_useful_paint_s'] * 1000:.0f} ms, bare page "
        f"{figures['bare_page_s'] * 1000:.0f} ms (ratio {figures['ratio_to_bare_page']:.2f}), "
        f"/healthz {figures['healthz_s'] * 1000:.0f} ms (ratio {figures['ratio_to_healthz']:.2f})"
    )


if __name__ == "__main__":
    main()
