"""Put the service's files on a plain systemd host, and take exactly those away again.

`install` writes what `macha_obs.setup.units` renders and records each file with its SHA-256 in a
manifest; `uninstall` removes a file only while it still has the recorded content (a file
someone edited since, like the config, is kept and named) and never the state directory
unless asked. Nothing is read, written or removed outside `--root` (setup/rooted.py: no
symlink inside it is followed, no manifest path may leave it). Nothing here starts,
enables or reloads anything: the person who runs it as root does that, with the commands
`next_steps` prints.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from macha_obs.config import ConfigError, validate
from macha_obs.protected import BUILTIN_PROTECTED_UNITS
from macha_obs.setup import units
from macha_obs.setup.rooted import InstallError as InstallError  # noqa: PLC0414
from macha_obs.setup.rooted import Root, normal

MANIFEST = PurePosixPath("/etc/macha-obs/install-manifest.json")


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


def configured_protected_units(root: Path) -> tuple[str, ...]:
    """The protected list of an existing config (built-ins first), for the polkit rule."""
    config = units.paths().config
    text = Root(root).read(config)
    if text is None:
        return BUILTIN_PROTECTED_UNITS
    path = Root(root).where(config)
    try:
        return validate(parse_toml(text, path), source=str(path)).protected_units
    except ConfigError as exc:
        raise InstallError(
            f"{exc}\nfix the config first: the polkit rule is rendered from it"
        ) from exc


def parse_toml(text: bytes, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


@dataclass
class Manifest:
    """What install wrote: file → SHA-256, and the directories it created. Every path in
    it is checked to be absolute and normal: one that is not is refused, whatever its hash."""

    files: dict[str, str] = field(default_factory=dict)
    directories: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, root: Path) -> Manifest:
        path = Root(root).where(MANIFEST)
        text = Root(root).read(MANIFEST)
        if text is None:
            return cls()
        try:
            data = json.loads(text)
            manifest = cls(files=dict(data["files"]), directories=list(data["directories"]))
            for name in [*manifest.files, *(d for d in manifest.directories if d != "/")]:
                normal(name)  # "/": an older release recorded a root it created
        except (ValueError, KeyError, TypeError, InstallError) as exc:
            raise InstallError(f"{path}: not a manifest macha-obs wrote ({exc})") from exc
        return manifest

    def text(self) -> str:
        return json.dumps({"files": self.files, "directories": self.directories}, indent=2)


@dataclass
class Report:
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # left as they were, and why
    removed: list[str] = field(default_factory=list)


def _mkdirs(root: Root, path: PurePosixPath, manifest: Manifest) -> None:
    """A dry run: the parents of `path` that install would create, recorded."""
    for directory in root.missing_dirs(path):
        if directory not in manifest.directories:  # a dry run's earlier file made it
            manifest.directories.append(directory)


def _refusals(root: Root, files: Sequence[File], manifest: Manifest, force: bool) -> list[str]:
    """Files in the way: there already, not ours (or changed since we wrote them)."""
    wrong = []
    for f in files:
        if f.keep_existing or force:
            continue
        have = root.read(f.path)
        if have is not None and _digest(have) not in (
            manifest.files.get(str(f.path)),
            _digest(f.text.encode()),
        ):
            wrong.append(str(f.path))
    return wrong


def install(root_dir: Path, files: Sequence[File], *, dry_run: bool, force: bool) -> Report:
    """Write `files` under root and record them; refuse, changing nothing, when a file
    that is not ours (or was changed since) is in the way, unless `force`."""
    root = Root(root_dir)
    manifest = Manifest.read(root_dir)
    wrong = _refusals(root, files, manifest, force)
    if wrong:
        raise InstallError(
            "not overwriting files macha-obs did not write (or that were changed since): "
            + ", ".join(wrong)
            + "; move them away, or pass --force"
        )
    report = Report()
    if not dry_run:
        root_dir.mkdir(mode=0o755, exist_ok=True)
    for f in [*files, File(MANIFEST, "")]:
        if f.keep_existing and root.read(f.path) is not None:
            report.kept.append(f"{f.path} (there already: left as it is)")
            continue
        if dry_run:
            _mkdirs(root, f.path, manifest)
        elif f.path != MANIFEST:
            root.write(f.path, f.text, f.mode, manifest.directories)
        if f.path != MANIFEST:
            manifest.files[str(f.path)] = _digest(f.text.encode())
        report.written.append(str(f.path))
    if not dry_run:
        root.write(MANIFEST, manifest.text(), 0o644, manifest.directories)
    return report


def uninstall(root_dir: Path, *, dry_run: bool, force: bool, purge_state: bool) -> Report:
    """Remove what the manifest lists while it is unchanged (all of it with `force`), the
    directories install created once empty, and the state directory only if asked."""
    root = Root(root_dir)
    if root.read(MANIFEST) is None:
        raise InstallError(
            f"{root.where(MANIFEST)} not found: nothing was installed by macha-obs here"
        )
    manifest = Manifest.read(root_dir)
    report = Report()
    for name, digest in manifest.files.items():
        path = normal(name)
        have = root.read(path)
        if have is None:
            continue
        if not force and _digest(have) != digest:
            report.kept.append(f"{name} (changed since install: remove it yourself, or --force)")
            continue
        if not dry_run:
            root.unlink(path)
        report.removed.append(name)
    if not dry_run:
        root.unlink(MANIFEST)
    report.removed.append(str(MANIFEST))
    for name in sorted(
        (d for d in manifest.directories if d != "/"),  # never the root itself
        key=lambda d: len(PurePosixPath(d).parts),
        reverse=True,
    ):
        # not empty: something of someone else's is in it, and it stays
        if dry_run or root.rmdir(normal(name)):
            report.removed.append(name)
    state = PurePosixPath(units.names()["stateDir"])
    if purge_state and root.is_dir(state):
        if not dry_run:
            root.rmtree(state)
        report.removed.append(str(state))
    elif root.is_dir(state):
        report.kept.append(f"{state} (the state: --purge-state removes it)")
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
