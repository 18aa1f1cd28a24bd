"""`macha-obs install` for plain systemd hosts: the same units as the NixOS module (lib.nix
evaluated by the real nix-instantiate, `--store dummy://`), and files written and taken
away exactly. Under a real systemd and polkitd: tests/test_install_lab.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from click.testing import CliRunner

import macha_obs.cli.install  # noqa: F401  (registers install and uninstall on main)
from macha_obs.cli.main import main
from macha_obs.config import validate
from macha_obs.execute.privileged import parse_instance
from macha_obs.protected import BUILTIN_PROTECTED_UNITS
from macha_obs.setup import install, units
from tests.harness.real import unavailable

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "nixos" / "lib.nix"
PREFIX = Path(sys.prefix)  # this venv: its bin/macha-obs is real
CONFIG = "/etc/macha-obs/config.toml"
SERVICE, PRIVILEGED = "macha-autonomous", "macha-autonomous-privileged"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (Debian: nix-bin, systemd)")
    return path


def nix_lib(expr: str) -> Any:
    """`expr` over `lib` = nixos/lib.nix, evaluated (never built: dummy store) to JSON."""
    argv = [tool("nix-instantiate"), "--store", "dummy://", "--eval", "--strict", "--json"]
    done = subprocess.run(
        [*argv, "-E", f"let lib = import {LIB}; in {expr}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def settings(text: str, section: str) -> dict[str, list[str]]:
    """A unit file's section as key → values in order (comments skipped)."""
    current, out = "", dict[str, list[str]]()
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def as_lines(service: dict[str, Any]) -> dict[str, list[str]]:
    """serviceConfig as NixOS writes it: a list is one line per item, booleans true/false."""

    def one(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    return {k: [one(x) for x in v] if isinstance(v, list) else [one(v)] for k, v in service.items()}


# ------------------------------------------------------------------ one source, two renderings


def test_daemon_unit_is_the_nixos_modules_unit() -> None:
    """Every [Service] line, hardening and all, equal to lib.nix's serviceConfig."""
    nixos = nix_lib(
        f'lib.serviceConfig {{ package = "{PREFIX}"; configPath = "{CONFIG}";'
        ' tokenFile = null; memoryMax = "512M"; }'
    )
    assert units.service_config(PREFIX, CONFIG) == nixos
    text = units.daemon_unit(PREFIX, CONFIG)
    assert settings(text, "Service") == as_lines(nixos)
    assert settings(text, "Service")["ProtectProc"] == ["default"]  # top_processes sees all
    assert settings(text, "Service")["ProcSubset"] == ["all"]  # /proc/meminfo is read
    sections = nix_lib("lib.unitSections.daemon")
    assert settings(text, "Unit") == {
        "Description": [sections["description"]],
        "Wants": [" ".join(sections["wants"])],
        "After": [" ".join(sections["after"])],
    }
    assert settings(text, "Install") == {"WantedBy": [" ".join(sections["wantedBy"])]}


def test_privileged_template_is_the_nixos_modules_template() -> None:
    nixos = nix_lib(f'lib.privilegedServiceConfig {{ package = "{PREFIX}"; }}')
    assert units.privileged_service_config(PREFIX) == nixos
    text = units.privileged_unit(PREFIX)
    service = settings(text, "Service")
    environment = service.pop("Environment")
    assert service == as_lines(nixos)
    assert environment == [
        f'"{k}={v}"' for k, v in sorted(nix_lib("lib.privilegedEnvironment").items())
    ]
    assert settings(text, "Unit")["Description"] == [
        nix_lib("lib.unitSections.privileged.description")
    ]
    assert "Install" not in text  # started on demand only


@pytest.mark.parametrize("extra", [[], ["postgresql.service", "k3s*.service", "ünïcode-ä.service"]])
def test_polkit_rule_is_the_nixos_modules_rule(extra: list[str]) -> None:
    protected = list(BUILTIN_PROTECTED_UNITS) + extra
    nixos = nix_lib(f"lib.polkitRule {{ protectedUnits = lib.builtinProtectedUnits ++ "
                    f"builtins.fromJSON ''{json.dumps(extra)}''; }}")  # fmt: skip
    assert units.polkit_rule(protected) == nixos
    assert "@" + "USER@" not in nixos  # every placeholder filled


def test_names_grammar_and_config_fields_are_the_nixos_modules() -> None:
    names = nix_lib("lib.names")
    assert {k: names[k] for k in units.names()} == units.names()
    assert nix_lib("lib.privilegedInstanceRegExp") == units.PRIVILEGED_INSTANCE_REGEXP
    assert nix_lib("lib.privilegedBounds") == units.PRIVILEGED_BOUNDS
    assert parse_instance("journal-vacuum-16M")  # the grammar the rule encodes
    example = tomllib.loads(units.example_config())
    assert example["state_dir"] == names["stateDir"]
    assert example["privileged_unit"] == names["privileged"]
    assert validate(example).state_dir == Path(names["stateDir"])


def test_a_prefix_systemd_would_misread_is_refused() -> None:
    for bad in ("/opt/my venv", "/opt/%h", "relative", "/opt/$HOME", "/opt/../etc"):
        with pytest.raises(units.RenderError):
            units.daemon_unit(Path(bad), CONFIG)


# ------------------------------------------------------------------ files in, files out


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def installed(root: Path) -> set[str]:
    return {str(PurePosixPath("/") / p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_install_writes_every_file_and_a_manifest(tmp_path: Path) -> None:
    done = run_cli("install", "--root", str(tmp_path), "--prefix", str(PREFIX))
    assert done.exit_code == 0, done.output
    where = units.paths()
    expected = {str(p) for p in vars(where).values()} | {str(install.MANIFEST)}
    assert installed(tmp_path) == expected
    unit = tmp_path / "etc/systemd/system/macha-autonomous.service"
    assert f"ExecStart={PREFIX}/bin/macha-obs --config {CONFIG} serve" in unit.read_text()
    for path in (unit, tmp_path / "etc/systemd/system/macha-autonomous-privileged@.service"):
        verify = subprocess.run(
            [tool("systemd-analyze"), "verify", "--man=no", str(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stderr
        assert verify.stderr == "", verify.stderr  # unknown keys are only warned about
    # sysusers.d and tmpfiles.d entries are what systemd's own tools accept
    sysusers = [tool("systemd-sysusers"), f"--root={tmp_path}"]
    subprocess.run(sysusers, check=True, capture_output=True, timeout=60)
    assert "macha-autonomous:x:" in (tmp_path / "etc/passwd").read_text()
    tmpfiles = [tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create"]
    subprocess.run(tmpfiles, check=True, capture_output=True, timeout=60)
    state = tmp_path / "var/lib/macha-autonomous"
    assert oct(state.stat().st_mode & 0o777) == "0o750"


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    done = run_cli("install", "--root", str(tmp_path), "--prefix", str(PREFIX), "--dry-run")
    assert done.exit_code == 0, done.output
    assert "would write   /etc/systemd/system/macha-autonomous.service" in done.output
    assert list(tmp_path.iterdir()) == []


def test_install_refuses_a_file_it_did_not_write(tmp_path: Path) -> None:
    theirs = tmp_path / "etc/systemd/system/macha-autonomous.service"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("[Service]\nExecStart=/bin/true\n")
    done = run_cli("install", "--root", str(tmp_path), "--prefix", str(PREFIX))
    assert done.exit_code == 1
    assert "macha-autonomous.service" in done.output
    assert installed(tmp_path) == {"/etc/systemd/system/macha-autonomous.service"}
    forced = run_cli("install", "--root", str(tmp_path), "--prefix", str(PREFIX), "--force")
    assert forced.exit_code == 0, forced.output


def test_a_prefix_without_macha_obs_is_refused(tmp_path: Path) -> None:
    done = run_cli("install", "--root", str(tmp_path), "--prefix", str(tmp_path))
    assert done.exit_code == 2
    assert "bin/macha-obs does not exist" in done.output


def test_reinstall_keeps_the_config_and_renders_its_protected_units(tmp_path: Path) -> None:
    assert run_cli("install", "--root", str(tmp_path), "--prefix", str(PREFIX)).exit_code == 0
    config = tmp_path / "etc/macha-obs/config.toml"
    config.write_text(config.read_text() + 'protected_units = ["postgresql.service"]\n')
    again = run_cli("install", "--root", str(tmp_path), "--prefix", str(PREFIX))
    assert again.exit_code == 0, again.output
    assert "keep    /etc/macha-obs/config.toml" in again.output
    assert 'protected_units = ["postgresql.service"]' in config.read_text()
    rule = (tmp_path / "etc/polkit-1/rules.d/60-macha-autonomous.rules").read_text()
    assert rule == units.polkit_rule([*BUILTIN_PROTECTED_UNITS, "postgresql.service"])


def test_uninstall_removes_exactly_what_install_wrote(tmp_path: Path) -> None:
    """Files someone else put beside them, an edited config and the state stay."""
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/other.service").write_text("[Service]\n")
    state = tmp_path / "var/lib/macha-autonomous"
    state.mkdir(parents=True)
    (state / "state.db").write_text("")
    assert run_cli("install", "--root", str(tmp_path), "--prefix", str(PREFIX)).exit_code == 0
    config = tmp_path / "etc/macha-obs/config.toml"
    config.write_text(config.read_text().replace('"suggest"', '"observe"'))

    dry = run_cli("uninstall", "--root", str(tmp_path), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert len(installed(tmp_path)) == 9
    done = run_cli("uninstall", "--root", str(tmp_path))
    assert done.exit_code == 0, done.output
    assert installed(tmp_path) == {
        "/etc/systemd/system/other.service",
        "/etc/macha-obs/config.toml",  # edited since: named, kept
        "/var/lib/macha-autonomous/state.db",
    }
    assert "changed since install" in done.output
    assert not (tmp_path / "etc/polkit-1").exists()  # install made it, now empty: gone
    assert not (tmp_path / "etc/sysusers.d").exists()
    again = run_cli("uninstall", "--root", str(tmp_path))
    assert again.exit_code == 1
    assert "nothing was installed" in again.output


def test_uninstall_deletes_the_state_only_when_asked(tmp_path: Path) -> None:
    state = tmp_path / "var/lib/macha-autonomous"
    state.mkdir(parents=True)
    assert run_cli("install", "--root", str(tmp_path), "--prefix", str(PREFIX)).exit_code == 0
    done = run_cli("uninstall", "--root", str(tmp_path), "--purge-state")
    assert done.exit_code == 0, done.output
    assert not state.exists()
    assert installed(tmp_path) == set()
