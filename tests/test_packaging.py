"""Packaging: pip and conda list the same pinned dependencies; torch is the CPU pin; README commands exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = {}
    for dep in deps:
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.+]+)", dep).groups()
        pins[name.lower()] = version
    return pins


def _environment_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.fullmatch(r"\s+- ([A-Za-z0-9_.\-]+)==([\w.+]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_environment_yml_and_pyproject_agree():
    assert _pyproject_pins() == _environment_pins()


def test_torch_is_pinned_to_the_cpu_build_on_disk():
    assert _pyproject_pins()["torch"] == "2.13.0"
    assert _pyproject_pins()["transformer-lens"].startswith("4.")


def test_readme_gives_the_two_commands_first():
    lines = [l.strip() for l in (ROOT / "README.md").read_text().splitlines() if l.strip()]
    first = "\n".join(lines[:12])
    assert "make all" in first and "make test" in first
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
