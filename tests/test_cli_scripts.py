"""Every console script speaks for itself, and every error reaches a person one way.

Each script in pyproject's [project.scripts] runs here as the real installed process:
its own usage on --help, its own name on --version. Every command has help text. A bad
setting names where it came from (the file, the variable, the flag) behind the one
`error:` prefix, and a command that only reads never creates a state dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from macha_obs import __version__
from macha_obs.cli import approve_main, check_main, logs_main, main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
BIN = Path(sys.executable).parent


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MACHA_")}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, env=base | (env or {})
    )


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_has_its_own_help(script: str) -> None:
    done = run(str(BIN / script), "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: {script} "), done.stdout


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_has_its_own_version(script: str) -> None:
    done = run(str(BIN / script), "--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"{script}, version {__version__}")


def walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path), command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, (*path, name))


ROOTS = {
    "macha-obs": main,
    "macha-approve": approve_main,
    "macha-logs": logs_main,
    "macha-check": check_main,
}
COMMANDS = [pair for name, root in ROOTS.items() for pair in walk(root, (name,))]


def test_the_roots_are_the_console_scripts() -> None:
    assert set(ROOTS) == set(SCRIPTS)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_help_text(path: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"{path} has no help text"


def test_macha_obs_commands_are_registered_in_one_list() -> None:
    registered = set(main.commands)
    assert {"serve", "check", "install", "uninstall", "learn", "pause", "resume"} <= registered
    assert {"rules", "webhook-token", "status", "analyze", "config", "autonomy"} <= registered
    # main.py defines the group with its own commands; no other module adds to it
    for module in (ROOT / "macha_obs" / "cli").glob("*.py"):
        if module.name == "main.py":
            continue
        assert "@main.command" not in module.read_text(), module.name
        assert "@main.group" not in module.read_text(), module.name


def test_an_unknown_key_in_the_file_names_the_file_and_the_nearest_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'autonomyLevel = "suggest"\nstate_dir = "{tmp_path}"\n')
    done = run(str(BIN / "macha-obs"), "--config", str(config), "config", "show")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {config}: invalid configuration"), done.stderr
    assert "autonomyLevel: unknown setting; did you mean autonomy_level?" in done.stderr
    assert f"(from {config})" in done.stderr


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    env = {"MACHA_AUTONOMY_LEVEL": "yolo", "MACHA_STATE_DIR": str(tmp_path)}
    done = run(str(BIN / "macha-approve"), "list", env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("error: "), done.stderr
    assert "autonomy_level:" in done.stderr
    assert "from MACHA_AUTONOMY_LEVEL" in done.stderr


def test_an_unknown_variable_suggests_the_nearest(tmp_path: Path) -> None:
    env = {"MACHA_AUTONOMY_LEVL": "suggest", "MACHA_STATE_DIR": str(tmp_path)}
    done = run(str(BIN / "macha-logs"), "decisions", env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: MACHA_AUTONOMY_LEVL: unknown setting; did you mean MACHA_AUTONOMY_LEVEL?"
    )


@pytest.mark.parametrize("script", ["macha-obs", "macha-check", "macha-approve"])
def test_a_bad_flag_value_names_the_flag(script: str, tmp_path: Path) -> None:
    argv = [str(BIN / script), "--state-dir", str(tmp_path), "--check-interval", "-5"]
    argv += {"macha-obs": ["config", "show"], "macha-approve": ["list"]}.get(script, [])
    done = run(*argv)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == "error: settings: invalid configuration", done.stderr
    assert "check_interval:" in lines[1]
    assert "from --check-interval" in lines[1]


def test_click_errors_have_the_same_prefix() -> None:
    for root, argv in ((main, ["--bogus"]), (main, ["config", "show", "--bogus"])):
        result = CliRunner().invoke(root, argv)
        assert result.exit_code == 2
        assert "\nerror: No such option '--bogus'." in result.output
        assert "Error:" not in result.output
    result = CliRunner().invoke(approve_main, ["show"])
    assert result.exit_code == 2
    assert "\nerror: Missing argument 'APPROVAL_ID'." in result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["macha-obs", "status"],
        ["macha-obs", "autonomy", "show"],
        ["macha-obs", "learn"],
        ["macha-approve", "list"],
        ["macha-approve", "show", "1"],
        ["macha-approve", "export", "1"],
        ["macha-logs", "decisions"],
    ],
    ids=" ".join,
)
def test_a_read_only_command_never_creates_the_state_dir(argv: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-state"
    done = run(str(BIN / argv[0]), *argv[1:], env={"MACHA_STATE_DIR": str(missing)})
    assert not missing.exists(), done.stderr
    assert "Traceback" not in done.stderr
    if argv[0] == "macha-logs":  # the logs say "nothing logged yet"
        assert done.returncode == 0, done.stderr
        return
    assert f"note: nothing recorded yet in {missing}" in done.stderr
    # an empty view, as on a brand-new host; a missing item is missing (exit 1)
    assert done.returncode == (1 if argv[1] in ("show", "export") else 0), done.stderr
