"""`install --root` and `uninstall --root` stay inside the root (issue 20): no symlinked
directory inside it is followed, and no manifest path leaves it, whatever its hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from macha_obs.setup import install
from tests.test_install import PREFIX, installed, run_cli


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the root, with a file someone cares about."""
    there = tmp_path / "outside"
    there.mkdir()
    (there / "precious").write_text("keep me\n")
    return there


@pytest.mark.parametrize("link", ["etc", "etc/systemd", "etc/systemd/system", "etc/macha-obs"])
def test_install_refuses_a_symlinked_directory_inside_the_root(
    tmp_path: Path, outside: Path, link: str
) -> None:
    root = tmp_path / "root"
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(outside, target_is_directory=True)
    before = tree(outside)
    for extra in ((), ("--dry-run",), ("--force",)):
        done = run_cli("install", "--root", str(root), "--prefix", str(PREFIX), *extra)
        assert done.exit_code == 1, done.output
        assert "is a symlink" in done.output
        assert "never follow" in done.output
        assert "Traceback" not in done.output
    assert tree(outside) == before
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]


def test_uninstall_refuses_a_directory_turned_into_a_symlink(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--prefix", str(PREFIX)).exit_code == 0
    # the unit directory swapped for a link to a place holding the very same files
    units = root / "etc/systemd/system"
    for f in units.iterdir():
        (outside / f.name).write_bytes(f.read_bytes())
        f.unlink()
    units.rmdir()
    units.symlink_to(outside, target_is_directory=True)
    before = tree(outside)
    done = run_cli("uninstall", "--root", str(root))
    assert done.exit_code == 1, done.output
    assert "is a symlink" in done.output
    assert tree(outside) == before


@pytest.mark.parametrize(
    "entry", ["/../precious", "/etc/../../precious", "/./../precious", "precious", "//precious"]
)
def test_a_manifest_path_that_leaves_the_root_is_refused(
    tmp_path: Path, outside: Path, entry: str
) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--prefix", str(PREFIX)).exit_code == 0
    manifest_path = root / str(install.MANIFEST).lstrip("/")
    manifest = json.loads(manifest_path.read_text())
    # with the right hash: only the path's shape can refuse it
    digest = hashlib.sha256((outside / "precious").read_bytes()).hexdigest()
    # "/../outside/precious" is tmp_path/outside/precious seen from the root
    manifest["files"][entry.replace("precious", "outside/precious")] = digest
    manifest_path.write_text(json.dumps(manifest))
    inside = installed(root)
    for extra in ((), ("--force",), ("--dry-run",)):
        done = run_cli("uninstall", "--root", str(root), *extra)
        assert done.exit_code == 1, done.output
        assert "not a normal absolute path" in done.output
    assert (outside / "precious").read_text() == "keep me\n"
    assert installed(root) == inside  # refused before anything was removed


def test_a_manifest_directory_that_leaves_the_root_is_refused(
    tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "root"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("install", "--root", str(root), "--prefix", str(PREFIX)).exit_code == 0
    manifest_path = root / str(install.MANIFEST).lstrip("/")
    manifest = json.loads(manifest_path.read_text())
    manifest["directories"].append("/../empty")
    manifest_path.write_text(json.dumps(manifest))
    done = run_cli("uninstall", "--root", str(root))
    assert done.exit_code == 1, done.output
    assert empty.is_dir()


def test_a_symlinked_state_dir_is_not_purged_through(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "root"
    assert run_cli("install", "--root", str(root), "--prefix", str(PREFIX)).exit_code == 0
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/macha-autonomous").symlink_to(outside, target_is_directory=True)
    done = run_cli("uninstall", "--root", str(root), "--purge-state")
    assert done.exit_code == 1, done.output
    assert (outside / "precious").read_text() == "keep me\n"
