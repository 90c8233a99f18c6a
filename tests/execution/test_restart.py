"""``powerq worker`` restarts a Celery worker that died, and stops on a clean exit."""

from __future__ import annotations

import sys
from pathlib import Path

from powerq.tasks import restart


def test_a_dead_child_is_restarted_until_it_exits_cleanly(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    script = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
        "n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); "
        "sys.exit(1 if n < 2 else 0)"
    )
    restart_backoff = restart.MAX_BACKOFF_S
    try:
        restart.MAX_BACKOFF_S = 0.1  # keep the test short; the policy is the same
        code = restart.run_supervised([sys.executable, "-c", script, str(runs)])
    finally:
        restart.MAX_BACKOFF_S = restart_backoff
    assert code == 0
    assert runs.read_text() == "3"  # died twice, restarted twice
