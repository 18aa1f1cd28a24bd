"""Put the service's files on a plain systemd host, and take exactly those away again.

`install` writes what `macha_obs.setup.units` renders and records each file with its SHA-256 in a
manifest; `uninstall` removes a file only while it still has the recorded content (a file
someone edited since, like the config, is kept and named) and never the state directory
unless asked. Nothing here starts, enables or reloads anything: the person who runs it as
root does that, with the commands `next_steps` prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from macha_obs.config import ConfigError, read_toml, validate
from macha_obs.errors import MachaError
from macha_obs.protected import BUILTIN_PROTECTED_UNITS
from macha_obs.setup import units

MANIFEST = PurePosixPath("/etc/macha-obs/install-manifest.json")


class InstallError(MachaError):
    """Installing or uninstalling cannot go on; nothing more was changed."""


@dataclass(frozen=True)
class File:
    path: PurePosixPath  # absolute, on the target host
    text: str
    mode: int = 0o644
    keep_existing: bool = False  # the config: a file that is there already is the user's


def plan(prefix: Path, protected_units: Sequence[str] = BUILTIN_PROTECTED_UNITS) -> list[File]:
    """Every file `install` writes, rendered for a daemon run from `prefix`/bin."""
    where = units.paths()
    config = str(where.config)
    return [
        File(where.daemon_unit, units.daemon_unit(prefix, config)),
        File(where.privileged_unit, units.privileged_unit(prefix)),
        File(where.polkit_rule, units.polkit_rule(protected_units)),
        File(where.sysusers, units.sysusers()),
        File(where.tmpfiles, units.tmpfiles()),
        File(where.config, units.example_config(), keep_existing=True),
    ]


def on_root(root: Path, path: PurePosixPath) -> Path:
    return root / path.relative_to("/")


def configured_protected_units(root: Path) -> tuple[str, ...]:
    """The protected list of an existing config (built-ins first), for the polkit rule."""
    path = on_root(root, units.paths().config)
    if not path.exists():
        return BUILTIN_PROTECTED_UNITS
    try:
        return validate(read_toml(path), source=str(path)).protected_units
    except ConfigError as exc:
        raise InstallError(
            f"{exc}\nfix the config first: the polkit rule is rendered from it"
        ) from exc


def _digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


@dataclass
class Manifest:
    """What install wrote: file → SHA-256, and the directories it created."""

    files: dict[str, str] = field(default_factory=dict)
    directories: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, root: Path) -> Manifest:
        path = on_root(root, MANIFEST)
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(files=dict(data["files"]), directories=list(data["directories"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise InstallError(f"{path}: not a manifest macha-obs wrote ({exc})") from exc

    def text(self) -> str:
        return json.dumps({"files": self.files, "directories": self.directories}, indent=2)


@dataclass
class Report:
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # left as they were, and why
    removed: list[str] = field(default_factory=list)


def _write_atomic(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _mkdirs(root: Path, path: PurePosixPath, manifest: Manifest, dry_run: bool) -> None:
    """Create the parents of `path` under root, recording the ones that were missing."""
    missing = [p for p in reversed(path.parents) if not on_root(root, p).exists()]
    for directory in missing:
        if str(directory) in manifest.directories:
            continue  # a dry run's earlier file made it already
        if not dry_run:
            on_root(root, directory).mkdir(mode=0o755)
        manifest.directories.append(str(directory))


def _refusals(root: Path, files: Sequence[File], manifest: Manifest, force: bool) -> list[str]:
    """Files in the way: there already, not ours (or changed since we wrote them)."""
    wrong = []
    for f in files:
        target = on_root(root, f.path)
        if f.keep_existing or force or not target.exists():
            continue
        have = _digest(target.read_bytes())
        if have not in (manifest.files.get(str(f.path)), _digest(f.text.encode())):
            wrong.append(str(f.path))
    return wrong


def install(root: Path, files: Sequence[File], *, dry_run: bool, force: bool) -> Report:
    """Write `files` under root and record them; refuse, changing nothing, when a file
    that is not ours (or was changed since) is in the way, unless `force`."""
    manifest = Manifest.read(root)
    wrong = _refusals(root, files, manifest, force)
    if wrong:
        raise InstallError(
            "not overwriting files macha-obs did not write (or that were changed since): "
            + ", ".join(wrong)
            + "; move them away, or pass --force"
        )
    report = Report()
    for f in files:
        target = on_root(root, f.path)
        if f.keep_existing and target.exists():
            report.kept.append(f"{f.path} (there already: left as it is)")
            continue
        _mkdirs(root, f.path, manifest, dry_run)
        if not dry_run:
            _write_atomic(target, f.text, f.mode)
        manifest.files[str(f.path)] = _digest(f.text.encode())
        report.written.append(str(f.path))
    _mkdirs(root, MANIFEST, manifest, dry_run)
    if not dry_run:
        _write_atomic(on_root(root, MANIFEST), manifest.text(), 0o644)
    report.written.append(str(MANIFEST))
    return report


def uninstall(root: Path, *, dry_run: bool, force: bool, purge_state: bool) -> Report:
    """Remove what the manifest lists while it is unchanged (all of it with `force`), the
    directories install created once empty, and the state directory only if asked."""
    manifest_path = on_root(root, MANIFEST)
    if not manifest_path.exists():
        raise InstallError(f"{manifest_path} not found: nothing was installed by macha-obs here")
    manifest = Manifest.read(root)
    report = Report()
    for name, digest in manifest.files.items():
        target = on_root(root, PurePosixPath(name))
        if not target.exists():
            continue
        if not force and _digest(target.read_bytes()) != digest:
            report.kept.append(f"{name} (changed since install: remove it yourself, or --force)")
            continue
        if not dry_run:
            target.unlink()
        report.removed.append(name)
    if not dry_run:
        manifest_path.unlink()
    report.removed.append(str(MANIFEST))
    for name in sorted(
        manifest.directories, key=lambda d: len(PurePosixPath(d).parts), reverse=True
    ):
        directory = on_root(root, PurePosixPath(name))
        if not dry_run:
            with contextlib.suppress(OSError):  # not empty: something of someone else's
                directory.rmdir()
        if dry_run or not directory.exists():
            report.removed.append(name)
    state = on_root(root, PurePosixPath(units.names()["stateDir"]))
    if purge_state and state.exists():
        if not dry_run:
            shutil.rmtree(state)
        report.removed.append(str(PurePosixPath(units.names()["stateDir"])))
    elif state.exists():
        report.kept.append(f"{units.names()['stateDir']} (the state: --purge-state removes it)")
    return report


def next_steps() -> list[str]:
    """What root runs after install for the service to run (and the same in reverse)."""
    n = units.names()
    where = units.paths()
    return [
        f"systemd-sysusers {where.sysusers}",
        f"systemd-tmpfiles --create {where.tmpfiles}",
        "systemctl daemon-reload",
        f"systemctl enable --now {n['service']}.service",
    ]
