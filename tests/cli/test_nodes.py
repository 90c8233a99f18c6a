"""``powerq nodes …`` and the CLI's error lines, against the live API (no workers needed)."""

from __future__ import annotations

import json
from pathlib import Path

from powerq.services import free_tcp_port
from tests.cli.conftest import Cli, error_line


def _add(cli: Cli, name: str, *tags: str) -> None:
    """Register ``name`` ("nK") on BMC 10.0.0.K (one BMC per node)."""
    tag_args = [arg for tag in tags for arg in ("--tag", tag)]
    result = cli(
        "nodes", "add", name, "--address", f"10.0.0.{name.removeprefix('n')}",
        "--username", "root", "--password", "s3cret", *tag_args,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"node {name} added" in result.stdout


def test_add_list_and_show(cli: Cli) -> None:
    _add(cli, "n1", "rack1")
    _add(cli, "n2", "rack2")

    listed = cli("nodes", "list", "-o", "table", role="reader")
    only_rack1 = cli("nodes", "list", "--tag", "rack1", "--json", role="reader")
    shown = cli("nodes", "show", "n1", "-o", "table", role="reader")
    as_json = json.loads(cli("nodes", "show", "n2", "--json", role="reader").stdout)

    assert listed.exit_code == 0 and "2 nodes" in listed.stdout
    assert "n1" in listed.stdout and "10.0.0.1:623" in listed.stdout
    assert [node["name"] for node in json.loads(only_rack1.stdout)] == ["n1"]
    assert "power_state" in shown.stdout and "unknown" in shown.stdout
    assert as_json["name"] == "n2" and as_json["tags"] == ["rack2"]
    assert "s3cret" not in listed.output + shown.output + json.dumps(as_json)


def test_the_password_is_prompted_without_echo(cli: Cli) -> None:
    result = cli("nodes", "add", "n9", "--address", "10.0.0.9", "--username", "u", stdin="s3cret\n")
    assert result.exit_code == 0, result.output
    assert "BMC password" in result.output and "s3cret" not in result.output


def test_import_json_and_csv_manifests(cli: Cli, tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.json"
    manifest.write_text(json.dumps({"nodes": [
        {"name": "j1", "driver": "ipmi", "address": "10.0.1.1", "port": 623,
         "username": "u", "password": "p"},
    ]}))  # fmt: skip
    csv = tmp_path / "fleet.csv"
    csv.write_text(
        "name,driver,address,port,username,password,tags\n"
        "c1,ipmi,10.0.2.1,623,u,p,rack1;gpu\n"
        "j1,ipmi,10.0.1.9,623,u,p,\n"
    )

    first = cli("nodes", "import", str(manifest), "-o", "table")
    second = cli("nodes", "import", str(csv), "--json")

    assert first.exit_code == 0 and "1 created" in first.stdout
    report = json.loads(second.stdout)
    assert [row["outcome"] for row in report["rows"]] == ["created", "skipped"]
    assert json.loads(cli("nodes", "show", "c1", "--json").stdout)["tags"] == ["gpu", "rack1"]


def test_an_invalid_manifest_row_exits_1_with_one_line(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "name,driver,address,port,username,password\nok1,ipmi,h,623,u,p\n-x,ipmi,h,1,u,p\n"
    )

    result = cli("nodes", "import", str(bad))

    assert "invalid" in result.stdout
    assert "1 row(s) of" in error_line(result, alone=False)  # after the summary line


def test_api_errors_are_one_line_with_the_problem_detail(cli: Cli) -> None:
    unknown = error_line(cli("nodes", "show", "ghost"), code=2)
    assert unknown == "Error: no node named 'ghost' (HTTP 404)"
    forbidden = error_line(cli("nodes", "add", "n1", "--address", "h", "--username", "u",
                               "--password", "p", role="reader"), code=2)  # fmt: skip
    assert "(HTTP 403)" in forbidden and "needs a token with the admin role" in forbidden
    assert "(HTTP 401)" in error_line(cli("nodes", "list", POWERQ_TOKEN="pq_not-a-token"), code=2)


def test_an_unreachable_api_is_one_line_naming_it(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_tcp_port()}"

    line = error_line(cli("nodes", "list", POWERQ_API_URL=url), code=3)

    assert line == (
        f"Error: cannot reach the powerq API at {url}: connection refused — is `powerq up` running?"
    )


def test_a_missing_token_is_one_line(cli: Cli, tmp_path: Path) -> None:
    result = cli("status", POWERQ_TOKEN="", POWERQ_DATA_DIR=str(tmp_path))
    assert "POWERQ_TOKEN is not set" in error_line(result, code=2)


def test_the_token_powerq_up_wrote_is_used_when_none_is_set(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text(cli.tokens["reader"] + "\n")
    result = cli("nodes", "list", POWERQ_TOKEN="", POWERQ_DATA_DIR=str(tmp_path))
    assert result.exit_code == 0, result.output
