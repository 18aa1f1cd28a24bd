"""Packaging: the licence (a LICENSE file and an SPDX expression), one version source, and
shell completions for every console script, as the README says to install them."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import macha_obs
from tests.harness.nix_support import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = sorted(PYPROJECT["project"]["scripts"])
BIN = Path(sys.executable).parent
# a word to complete → what the script must offer for it (macha-check is `macha-obs
# check`: it takes macha-obs's options)
COMPLETES = {
    "macha-obs": ("pa", "pause"),
    "macha-check": ("--auto", "--autonomy-level"),
    "macha-approve": ("li", "list"),
    "macha-logs": ("dec", "decisions"),
}


def complete_var(script: str) -> str:
    return "_" + script.upper().replace("-", "_") + "_COMPLETE"


def test_the_licence_is_mit_in_a_file_and_an_spdx_expression() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 The macha-obs developers\n")
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    # what pip installed says so too (Metadata 2.4: setuptools >= 77)
    metadata = importlib.metadata.metadata("macha-obs")
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]


def test_the_version_has_one_source() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project
    assert project["dynamic"] == ["version"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "macha_obs.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", macha_obs.__version__)
    assert importlib.metadata.version("macha-obs") == macha_obs.__version__
    # nothing else writes a version down (nixos/package.nix reads __init__.py: its build
    # is checked in test_nixos_module.py::test_flake_check_against_a_stand_in_nixpkgs)
    setting = re.compile(r"^\s*(__version__|version)\s*=\s*\"\d", re.M)
    written = [
        str(path.relative_to(REPO))
        for pattern in ("macha_obs/**/*.py", "*.toml", "nixos/*.nix", "flake.nix")
        for path in REPO.glob(pattern)
        if setting.search(path.read_text())
    ]
    assert written == ["macha_obs/__init__.py"]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("shell", ["zsh", "fish"])  # bash: sourced below
def test_every_script_generates_its_completion_source(script: str, shell: str) -> None:
    done = subprocess.run(
        [str(BIN / script)],
        env={**os.environ, complete_var(script): f"{shell}_source"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert complete_var(script) in done.stdout
    function = "_" + script.replace("-", "_") + "_completion"
    assert function in done.stdout
    assert done.stderr == ""


def test_the_scripts_are_all_covered() -> None:
    assert set(COMPLETES) == set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_completes_each_script_through_its_sourced_completion(script: str) -> None:
    """The README's line in a real bash: source the script's completion, then complete."""
    word, offered = COMPLETES[script]
    function = "_" + script.replace("-", "_") + "_completion"
    program = (
        f'eval "$({complete_var(script)}=bash_source {script})"\n'
        f"COMP_WORDS=({script} {word}); COMP_CWORD=1\n"
        f"{function} {script}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert offered in done.stdout.split(), done.stdout + done.stderr
