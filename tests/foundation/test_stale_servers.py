"""A server left running by a crashed ``powerq up`` is stopped at the next start, and
only that one: a pid file may name a pid that now belongs to another server."""

from __future__ import annotations

from pathlib import Path

from powerq.services import stop_stale_servers
from tests.faults.services import ThrowawayRedis


def test_only_a_server_of_this_data_dir_is_stopped(tmp_path: Path) -> None:
    ours_dir, other_dir = tmp_path / "ours", tmp_path / "other"
    ours = ThrowawayRedis(ours_dir / "redis")  # run with --dir DATA_DIR/redis, as powerq up does
    unrelated = ThrowawayRedis(tmp_path / "elsewhere")
    ours.start()
    unrelated.start()
    try:
        assert ours.process is not None and unrelated.process is not None
        (ours_dir / "redis" / "redis.pid").write_text(f"{ours.process.pid}\n")
        (other_dir / "redis").mkdir(parents=True)
        (other_dir / "redis" / "redis.pid").write_text(f"{unrelated.process.pid}\n")

        # a stale pid file naming someone else's server changes nothing
        assert stop_stale_servers(other_dir, timeout=10) == []
        assert unrelated.client().ping()

        assert stop_stale_servers(ours_dir, timeout=10) == [f"redis (pid {ours.process.pid})"]
        assert ours.process.wait(10) is not None
    finally:
        for server in (ours, unrelated):
            if server.process is not None and server.process.poll() is None:
                server.process.terminate()
                server.process.wait(10)
