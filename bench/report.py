"""Rewrites the figures section of BENCHMARKS.md from ``bench/results/summary.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import common

BEGIN = "<!-- figures:begin (python -m bench all rewrites this section) -->"
END = "<!-- figures:end -->"
DOC = common.REPO_DIR / "BENCHMARKS.md"


def _cell(value: float | None) -> str:
    return common.fmt(value)


def figures_markdown(summary: dict[str, Any]) -> str:
    """The figures table and the run's machine line, as Markdown."""
    machine = summary["machine"]
    packages = machine["packages"]
    when = time.strftime(
        "%Y-%m-%d %H:%M UTC",
        time.gmtime(
            min((run["started_at"] for run in summary["runs"].values()), default=time.time())
        ),
    )
    lines = [
        f"Last run: {when}, `{summary['command']}`, {summary['total_s'] / 60:.1f} min in all"
        + (f"; FAILED: {', '.join(summary['failed'])}" if summary["failed"] else "")
        + ".",
        f"Machine: {machine['nproc']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, "
        f"load average at the end {', '.join(f'{x:.1f}' for x in machine['loadavg'])}; "
        f"Python {machine['python']}, PostgreSQL 15 (system), {machine['redis_server']}, "
        f"celery {packages['celery']}, kombu {packages['kombu']}, "
        f"SQLAlchemy {packages['sqlalchemy']}, "
        f"psycopg {packages['psycopg']}, gunicorn {packages['gunicorn']}, "
        f"pyghmi {packages['pyghmi']}, "
        f"{machine['ipmitool']}, {machine['wrk']}; "
        f"powerq at {machine['git_head']} plus the working tree.",
        "",
        "| # | metric | goal | baseline | powerq | ratio | met | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        base = _cell(row["baseline"])
        if row["baseline_label"]:
            base = f"{base} ({row['baseline_label']})"
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(
            f"| {row['benchmark']} | {row['metric']} [{row['unit']}] | {row['goal']} | {base} | "
            f"{_cell(row['powerq'])} | {_cell(row['ratio'])} | {met} | {row['note']} |"
        )
    return "\n".join(lines)


def update_benchmarks_md(summary: dict[str, Any], doc: Path = DOC) -> None:
    """Replace the text between the markers in BENCHMARKS.md (appended if missing)."""
    block = f"{BEGIN}\n{figures_markdown(summary)}\n{END}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Latest figures\n\n" + block + "\n"
    doc.write_text(text)
    common.say(f"figures written to {doc}")
