"""The committed lock matches pyproject.toml, and the tests run on exactly the lock.

`scripts/test` also runs `uv lock --check` (which needs the package index); these
checks need nothing but the files, so they hold offline too.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _locked() -> dict[str, dict[str, Any]]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {canonicalize_name(package["name"]): package for package in lock["package"]}


def _requirements() -> list[Requirement]:
    project = _pyproject()["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    return [Requirement(line) for line in declared]


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_every_requirement_is_locked_within_its_range(requirement: Requirement) -> None:
    package = _locked().get(canonicalize_name(requirement.name))
    assert package is not None, f"{requirement.name} is in pyproject.toml but not in uv.lock"
    assert requirement.specifier.contains(Version(package["version"]), prereleases=True), (
        f"uv.lock holds {requirement.name} {package['version']}, outside {requirement}: "
        "run scripts/lock"
    )


def test_every_locked_artifact_has_a_hash() -> None:
    unhashed = [
        f"{name}: {artifact.get('url', artifact)}"
        for name, package in _locked().items()
        for artifact in [package.get("sdist"), *package.get("wheels", [])]
        if artifact is not None and not str(artifact.get("hash", "")).startswith("sha256:")
    ]
    assert unhashed == []


def test_this_interpreter_runs_the_locked_versions() -> None:
    """The suite must run on what a user installs: catches a machine-wide pytest
    (or anything else) shadowing the lock, which once kept CI green while a fresh
    virtualenv failed."""
    locked = _locked()
    differing = []
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        installed = metadata.version(requirement.name)
        if Version(installed) != Version(locked[name]["version"]):
            differing.append(f"{name}: installed {installed}, locked {locked[name]['version']}")
    assert differing == [], "run the tests through scripts/test (installs from uv.lock)"
