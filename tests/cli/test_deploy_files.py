"""The deployment files (docs/deploy/, docs/deployment.md) stay true to the code.

* the systemd units pass ``systemd-analyze verify`` (when it is installed), with
  ``/opt/powerq/bin/`` replaced by this test's own virtualenv;
* every command they and the compose file run is a real ``powerq`` (or gunicorn)
  command with options its parser accepts, and is the Procfile's command: same
  program, arguments and options, the Procfile's defaults for its variables; only
  the bind addresses of containers and the agents' ``--name`` may differ;
* the compose file has one beat, several agents with distinct names, the same
  shared settings everywhere, and gates on health checks and the migration;
* the example env file names only settings powerq reads;
* docs/deployment.md names the files and links nothing outside the repository.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from powerq.cli import main as powerq_cli
from powerq.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "docs" / "deploy"
UNIT_DIR = DEPLOY / "systemd"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "powerq.env.example"
GUIDE = REPO / "docs" / "deployment.md"
INSTALL_BIN = "/opt/powerq/bin/"
ENV_FILE = "/etc/powerq/powerq.env"

# Each unit and the Procfile line it runs (migrate has none: `powerq db upgrade`).
UNIT_ROLES = {
    "powerq-web.service": "web",
    "powerq-agent.service": "agent",
    "powerq-beat.service": "beat",
    "powerq-flower.service": "flower",
    "powerq-migrate.service": None,
}
# Variables read outside powerq.config.Settings (README, "Configuration"), and where.
OUTSIDE_SETTINGS = {
    "POWERQ_WEB_BIND": "Procfile",
    "POWERQ_WEB_WORKERS": "Procfile",
    "POWERQ_AGENT_LANES": "Procfile",
    "POWERQ_FLOWER_AUTH": "powerq/flower.py",
    "POWERQ_TASK_EVENTS": "celeryconfig.py",
}
# Keys systemd < 254 does not know yet (it ignores them with a warning).
NEWER_SYSTEMD_KEYS = ("RestartSteps", "RestartMaxDelaySec")
# Options whose value a container must set otherwise than the Procfile (it listens on
# all of its interfaces; compose publishes the port on the machine's loopback only).
CONTAINER_ADDRESSES = {"--bind", "--address"}


# --- reading the files -----------------------------------------------------------------
def procfile() -> dict[str, list[str]]:
    """The Procfile's processes: name -> argv (variables unexpanded)."""
    lines = (REPO / "Procfile").read_text().splitlines()
    pairs = [line.split(":", 1) for line in lines if line and not line.startswith("#")]
    return {name.strip(): shlex.split(command) for name, command in pairs}


def unit(path: Path) -> dict[str, list[str]]:
    """A unit file's ``Key=value`` lines by ``Section.Key`` (keys may repeat)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


def unit_environment(entries: dict[str, list[str]]) -> dict[str, str]:
    """What the unit's ``Environment=`` lines set."""
    pairs = (
        word.split("=", 1)
        for line in entries.get("Service.Environment", [])
        for word in shlex.split(line)
    )
    return dict(pairs)


def exec_start(entries: dict[str, list[str]]) -> list[str]:
    [command] = entries["Service.ExecStart"]
    return shlex.split(command)


def compose() -> dict[str, Any]:
    """compose.yaml with its YAML merge keys resolved (``<<: *powerq``)."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def powerq_services() -> dict[str, dict[str, Any]]:
    """The compose services that run powerq's image."""
    return {name: s for name, s in compose_services().items() if s.get("image") == "powerq:local"}


def compose_role(name: str) -> str | None:
    """The Procfile process a compose service runs (agent-a -> agent)."""
    role = re.sub(r"-[a-z0-9]+$", "", name)
    return role if role in procfile() else (name if name in procfile() else None)


# --- comparing commands ----------------------------------------------------------------
_VARIABLE = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+)(:-(?P<default>[^}]*))?\}$")


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None


def words(argv: list[str]) -> list[str | Variable]:
    """``argv`` with ``--opt=value`` split in two, variables as :class:`Variable`,
    and a program's path reduced to its name."""
    out: list[str | Variable] = []
    for index, word in enumerate(argv):
        if index == 0:
            word = Path(word).name
        parts = word.split("=", 1) if word.startswith("--") and "=" in word else [word]
        for part in parts:
            match = _VARIABLE.match(part)
            out.append(Variable(match["name"], match["default"]) if match else part)
    return out


def drop_option(argv: list[str | Variable], option: str) -> list[str | Variable]:
    """``argv`` without ``option`` and its value."""
    if option not in argv:
        return argv
    at = argv.index(option)
    return argv[:at] + argv[at + 2 :]


def assert_same_command(
    reference: list[str],
    other: list[str],
    *,
    defaults: dict[str, str] | None = None,
    free: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """``other`` runs the Procfile's ``reference``. A Procfile variable matches the
    same variable (whose default, in ``defaults``, must be the Procfile's) or a literal
    equal to its default; the values of options in ``free`` may differ."""
    want, got = words(reference), words(other)
    assert len(want) == len(got), f"{other} is not {reference}"
    for index, (w, g) in enumerate(zip(want, got, strict=True)):
        option = want[index - 1] if index else None
        if isinstance(option, str) and option in free:
            continue
        if isinstance(w, Variable) and isinstance(g, Variable):
            assert w.name == g.name, f"{g.name} where the Procfile has {w.name}"
            assert (defaults or {}).get(g.name) == w.default, (
                f"{g.name} defaults to {(defaults or {}).get(g.name)!r}, "
                f"the Procfile's to {w.default!r}"
            )
        elif isinstance(w, Variable):
            assert g == w.default, f"{g!r} where the Procfile has {w.name} ({w.default!r})"
        else:
            assert g == w, f"{g!r} where the Procfile has {w!r} ({other} vs {reference})"


def expand(argv: list[str], environment: dict[str, str]) -> list[str]:
    """``argv`` with ``${NAME}`` (systemd) or ``${NAME:-default}`` replaced."""

    def value(match: re.Match[str]) -> str:
        return environment.get(match["name"], match["default"] or "")

    pattern = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(:-(?P<default>[^}]*))?\}")
    return [pattern.sub(value, word) for word in argv]


def assert_command_parses(argv: list[str]) -> None:
    """``argv`` is a powerq or gunicorn command line its own parser accepts."""
    program = Path(argv[0]).name
    if program == "powerq":
        if argv[1:] == ["--version"]:  # an eager option: click exits while parsing
            with pytest.raises(click.exceptions.Exit) as done:
                powerq_cli.make_context("powerq", argv[1:])
            assert done.value.exit_code == 0
            return
        # Resolve the sub-commands and parse the options as click would, without running.
        with powerq_cli.make_context("powerq", argv[1:]) as ctx:
            command: click.Command = powerq_cli
            args = argv[1:]
            while isinstance(command, click.Group):
                name, sub, args = command.resolve_command(ctx, args)
                assert sub is not None, f"no powerq command {name!r}"
                command = sub
                ctx = command.make_context(name or "", list(args), parent=ctx)
        return
    assert program == "gunicorn", f"{argv[0]}: neither powerq nor gunicorn"
    from gunicorn.config import Config

    config = Config()
    parsed = config.parser().parse_args(argv[1:])
    assert parsed.config == "python:powerq.gunicorn_conf"
    module, _, attribute = parsed.args[0].partition(":")
    assert attribute == "app" and module == "powerq.api.wsgi"
    # The settings module and the app's module are importable (not run: no app made here).
    import importlib.util

    assert importlib.util.find_spec("powerq.gunicorn_conf") is not None
    assert importlib.util.find_spec(module) is not None


# --- systemd ---------------------------------------------------------------------------
def test_there_is_a_unit_for_every_role() -> None:
    assert sorted(p.name for p in UNIT_DIR.glob("*.service")) == sorted(UNIT_ROLES)
    roles = {role for role in UNIT_ROLES.values() if role}
    assert roles == set(procfile()), "a Procfile process has no unit (or a unit no process)"


def _systemd_version() -> int:
    out = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=True
    ).stdout
    return int(re.search(r"systemd (\d+)", out)[1])  # type: ignore[index]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """With the ExecStart programs resolvable: this virtualenv's ``powerq``/``gunicorn``
    stand in for /opt/powerq/bin's."""
    venv_bin = str(Path(sys.executable).parent) + "/"
    assert Path(venv_bin, "powerq").exists() and Path(venv_bin, "gunicorn").exists()
    for path in UNIT_DIR.glob("*.service"):
        (tmp_path / path.name).write_text(path.read_text().replace(INSTALL_BIN, venv_bin))
    check = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True,
        text=True,
    )
    complaints = [line for line in (check.stdout + check.stderr).splitlines() if line.strip()]
    if _systemd_version() < 254:  # RestartSteps/RestartMaxDelaySec came with systemd 254
        known = tuple(
            f"Unknown key '{key}' in section [Service], ignoring." for key in NEWER_SYSTEMD_KEYS
        )
        complaints = [line for line in complaints if not line.endswith(known)]
    assert check.returncode == 0, check.stderr
    assert complaints == []


@pytest.mark.parametrize("name", sorted(UNIT_ROLES))
def test_unit_runs_the_procfile_command(name: str) -> None:
    entries = unit(UNIT_DIR / name)
    argv = exec_start(entries)
    assert argv[0].startswith(INSTALL_BIN), "the venv's program, by its full path"
    role = UNIT_ROLES[name]
    if role is None:
        assert argv[1:] == ["db", "upgrade"]
    else:
        assert_same_command(procfile()[role], argv, defaults=unit_environment(entries))
    # With the unit's defaults, and with the example env file's values, it parses.
    assert_command_parses(expand(argv, unit_environment(entries)))
    assert_command_parses(expand(argv, {**unit_environment(entries), **env_example()}))


@pytest.mark.parametrize("name", sorted(UNIT_ROLES))
def test_unit_runs_unprivileged_sandboxed_and_stops_gracefully(name: str) -> None:
    entries = unit(UNIT_DIR / name)
    one = {key: values[-1] for key, values in entries.items()}
    assert one["Service.EnvironmentFile"] == ENV_FILE
    assert (one["Service.User"], one["Service.Group"]) == ("powerq", "powerq")
    assert one["Service.WorkingDirectory"] == unit_environment(entries)["POWERQ_DATA_DIR"]
    assert one["Service.ReadWritePaths"] == unit_environment(entries)["POWERQ_DATA_DIR"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "powerq",
    }.items():
        assert one[f"Service.{key}"] == value, key
    assert "network-online.target" in one["Unit.After"]
    assert "network-online.target" in one["Unit.Wants"]
    if UNIT_ROLES[name] is None:  # the one-shot migration
        assert one["Service.Type"] == "oneshot"
        assert "Install.WantedBy" not in one, "run by hand on one host, never at boot"
        return
    assert one["Service.Restart"] == "on-failure"
    assert one["Service.KillSignal"] == "SIGTERM"
    assert one["Service.KillMode"] == "mixed", "the main process stops its own children"
    assert one["Install.WantedBy"] == "multi-user.target"


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", text)
    assert match, text
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_the_agent_has_time_to_stop_its_workers_and_give_its_lanes_back() -> None:
    """The agent gives its workers half the lane lease after SIGTERM, then releases its
    leases: systemd must not SIGKILL it before."""
    from powerq.agent.run import STOP_GRACE_SHARE

    stop = _seconds(unit(UNIT_DIR / "powerq-agent.service")["Service.TimeoutStopSec"][-1])
    lease = float(env_example()["POWERQ_LANE_LEASE_S"])
    assert stop >= lease * STOP_GRACE_SHARE + 10
    assert stop >= Settings.model_fields["lane_lease_s"].default * STOP_GRACE_SHARE + 10


def test_gunicorn_has_time_for_its_graceful_stop() -> None:
    from gunicorn.config import Config

    graceful = Config().graceful_timeout
    stop = _seconds(unit(UNIT_DIR / "powerq-web.service")["Service.TimeoutStopSec"][-1])
    assert stop > graceful
    assert unit(UNIT_DIR / "powerq-web.service")["Service.Type"] == ["notify"]


# --- compose ---------------------------------------------------------------------------
def test_compose_runs_one_beat_several_named_agents_and_the_migration() -> None:
    services = powerq_services()
    roles = [compose_role(name) for name in services]
    assert roles.count("beat") == 1, "exactly one beat per installation"
    assert roles.count("web") >= 1
    agents = [s for name, s in services.items() if compose_role(name) == "agent"]
    assert len(agents) >= 2
    names = [s["command"][s["command"].index("--name") + 1] for s in agents]
    assert len(set(names)) == len(names), "agent names must be unique"
    assert services["migrate"]["command"] == ["powerq", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"


@pytest.mark.parametrize("name", sorted(powerq_services()))
def test_compose_service_runs_the_procfile_command(name: str) -> None:
    command = powerq_services()[name]["command"]
    assert isinstance(command, list), "exec form: no shell between the container and powerq"
    role = compose_role(name)
    if role is None:
        assert name == "migrate"
    else:
        other = [str(w) for w in drop_option(words(command), "--name")]
        assert_same_command(procfile()[role], other, free=CONTAINER_ADDRESSES)
    assert_command_parses(command)


def test_compose_processes_share_the_installation_settings() -> None:
    shared = ("POWERQ_DATABASE_URL", "POWERQ_BROKER_URL", "POWERQ_SECRET_KEY", "POWERQ_LANES")
    seen = {
        name: {k: s["environment"].get(k) for k in shared} for name, s in powerq_services().items()
    }
    assert all(None not in values.values() for values in seen.values()), seen
    assert len({tuple(values.values()) for values in seen.values()}) == 1, seen
    # Every name it sets is a real setting.
    for service in powerq_services().values():
        assert set(service["environment"]) <= known_names()


def test_compose_starts_powerq_only_after_healthy_services_and_the_migration() -> None:
    services = compose_services()
    for backing in ("postgres", "redis"):
        assert services[backing]["healthcheck"]["test"][0] == "CMD"
    for name, service in powerq_services().items():
        needs = service["depends_on"]
        assert needs["postgres"] == {"condition": "service_healthy"}
        if name != "migrate":
            assert needs["redis"] == {"condition": "service_healthy"}
            assert needs["migrate"] == {"condition": "service_completed_successfully"}
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    for name, service in powerq_services().items():
        if compose_role(name) == "agent":
            assert _seconds(service["stop_grace_period"]) >= 7.5 + 10


def test_compose_builds_the_image_from_this_checkout() -> None:
    build = powerq_services()["web"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO
    dockerfile = context / build["dockerfile"]
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources, "the Dockerfile copies from the checkout"
    for source in sources:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which is not there"
    assert "--frozen" in dockerfile.read_text(), "installed from the lock"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.skipif(_compose_cli() is None, reason="neither docker compose nor docker-compose")
def test_docker_compose_accepts_the_file() -> None:
    """``config`` validates against the Compose schema and needs no daemon."""
    cli = _compose_cli()
    assert cli is not None
    env = {**os.environ, "POWERQ_SECRET_KEY": "x" * 44}
    for profile in ([], ["--profile", "flower"]):
        check = subprocess.run(
            [*cli, "-f", str(COMPOSE), *profile, "config", "--services"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert check.returncode == 0, check.stderr
        listed = check.stdout.split()
        assert {"migrate", "web", "beat", "agent-a", "agent-b"} <= set(listed), listed


# --- the env file ----------------------------------------------------------------------
def env_example() -> dict[str, str]:
    """The example env file's active settings."""
    pairs = [
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return {name: value for name, value in pairs}


def env_example_names() -> set[str]:
    """Every POWERQ_* name the example sets or shows in a comment as NAME=."""
    return set(re.findall(r"^#? ?(POWERQ_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))


def known_names() -> set[str]:
    return {f"POWERQ_{field.upper()}" for field in Settings.model_fields} | set(OUTSIDE_SETTINGS)


def test_outside_settings_are_read_where_said() -> None:
    for name, where in OUTSIDE_SETTINGS.items():
        assert name in (REPO / where).read_text(), f"{name} is not read by {where}"


def test_env_example_names_only_real_settings() -> None:
    unknown = env_example_names() - known_names()
    assert not unknown, f"not powerq settings: {sorted(unknown)}"
    required = {"POWERQ_DATABASE_URL", "POWERQ_BROKER_URL", "POWERQ_SECRET_KEY", "POWERQ_LANES"}
    assert required <= set(env_example()), "what every host must share is set"
    # Every variable a unit's command line uses has a value in the file.
    for path in UNIT_DIR.glob("*.service"):
        used = re.findall(r"\$\{([A-Z0-9_]+)\}", " ".join(exec_start(unit(path))))
        assert set(used) <= set(env_example()), path.name


def test_env_example_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("POWERQ_"):
            monkeypatch.delenv(name)
    for name, value in env_example().items():
        assert value == value.strip() and not value.startswith(("'", '"')), name
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.lanes == int(env_example()["POWERQ_LANES"])
    assert (
        str(settings.data_dir)
        == unit_environment(unit(UNIT_DIR / "powerq-web.service"))["POWERQ_DATA_DIR"]
    )


def test_env_example_holds_no_secret() -> None:
    values = env_example()
    for name in ("POWERQ_DATABASE_URL", "POWERQ_BROKER_URL", "POWERQ_SECRET_KEY"):
        assert "CHANGE-ME" in values[name], name


# --- the guide -------------------------------------------------------------------------
def test_the_guide_names_the_files_and_links_only_inside_the_repository() -> None:
    text = GUIDE.read_text()
    for path in [*UNIT_DIR.glob("*.service"), COMPOSE, ENV_EXAMPLE, DEPLOY / "Dockerfile"]:
        assert str(path.relative_to(REPO)) in text, f"docs/deployment.md does not name {path.name}"
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert not re.match(r"[a-z]+:", target), f"a link outside the repository: {target}"
        file = target.split("#", 1)[0]
        if file:
            assert (GUIDE.parent / file).exists(), f"a link to a missing file: {target}"
    autolinks = re.findall(r"<(https?://[^>]+)>", text)
    assert not autolinks, f"links outside the repository: {autolinks}"


def guide_commands() -> list[list[str]]:
    """Every powerq command line in the guide's shell and ini blocks, from ``powerq`` on."""
    commands = []
    for block in re.findall(r"```(?:sh|ini)\n(.*?)```", GUIDE.read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.removeprefix("ExecStart=")
            argv = shlex.split(line, comments=True)
            # The program: /opt/powerq/bin/powerq, a first word, or `compose exec SVC powerq`.
            starts = [
                i
                for i, word in enumerate(argv)
                if word.endswith("/bin/powerq")
                or (word == "powerq" and (i == 0 or (i >= 2 and argv[i - 2] == "exec")))
            ]
            if starts:
                commands.append(argv[starts[0] :])
    return commands


def test_the_guide_runs_real_powerq_commands_and_units() -> None:
    commands = guide_commands()
    assert len(commands) >= 5, commands
    for argv in commands:
        assert_command_parses(expand(argv, {**env_example(), "POWERQ_AGENT_LANES": "auto"}))
    named = set(re.findall(r"\bpowerq-[a-z]+(?=\.service|\b)", GUIDE.read_text()))
    units = {p.stem for p in UNIT_DIR.glob("*.service")}
    assert named - {"powerq-installer"} <= units, named - units
