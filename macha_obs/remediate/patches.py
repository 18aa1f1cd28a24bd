"""A proposed configuration change: a unified diff of one file of the user's NixOS
configuration, checked before a person is asked to read it.

A model names the file (relative to `nixos_config_dir`) and writes the diff; nothing of
it is trusted. Before a `config_change` is queued: the path must be plain names that
resolve, symlinks included, to a regular `.nix` file inside the configured directory;
the diff's own headers must name that same file and nothing else; every hunk must match
the file exactly where it says (no offset, no fuzz); and the patched text must still
parse (`nix-instantiate --parse` on a scratch copy whose name is ours). The directory
is only read: the patch is applied in memory, and the scratch copy lives in a temporary
directory of our own. The person applies the exported diff themselves.

A dry-build of the patched configuration is not part of the check: the privileged path
rebuilds only the configured flake, never a scratch copy, and nothing here pretends to.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from macha_obs.errors import InvalidInput, RunnerError
from macha_obs.execute.runner import Runner, subprocess_runner
from macha_obs.models import ConfigChange

__all__ = [
    "FilePatch",
    "Hunk",
    "PatchChecker",
    "PatchRefused",
    "apply_patch",
    "check_path",
    "config_files",
    "parse_diff",
]

MAX_FILE_BYTES = 1_048_576
PARSE_TIMEOUT = 60.0
REASON_MAX = 400
SCRATCH_NAME = "patched.nix"  # our name for the scratch copy, never the model's
# Plain names only: no spaces, quotes or control characters, so a header's path ends
# where it should and a person reading it sees every character.
_PATH = re.compile(r"[A-Za-z0-9_+@-][A-Za-z0-9._+@-]*(/[A-Za-z0-9_+@-][A-Za-z0-9._+@-]*)*")
_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(?: .*)?")
_INDEX = re.compile(r"index [0-9a-f]{4,64}\.\.[0-9a-f]{4,64}(?: [0-7]{6})?")


class PatchRefused(InvalidInput):
    """The proposed change is not queued; the message says why, for a person."""


@dataclass(frozen=True)
class Hunk:
    """One `@@` block: the exact lines it expects (old) and leaves (new), endings kept."""

    number: int
    header: str
    old_start: int
    old_lines: tuple[str, ...]
    new_start: int
    new_lines: tuple[str, ...]

    @property
    def old_index(self) -> int:
        """0-based index of the first old line; an empty range names the line before."""
        return self.old_start if not self.old_lines else self.old_start - 1

    @property
    def new_index(self) -> int:
        return self.new_start if not self.new_lines else self.new_start - 1


@dataclass(frozen=True)
class FilePatch:
    path: str
    strip: int  # patch(1)'s -p: 1 for `a/` `b/` headers, 0 for bare ones
    hunks: tuple[Hunk, ...]


# ---------------------------------------------------------------- pure: path and diff


def check_path(path: str) -> str:
    """`path` when it is a relative path of plain names ending in .nix; else refused."""
    parts = path.split("/")
    if path.startswith("/"):
        raise PatchRefused(
            f"path '{path[:100]}' is absolute: name a file relative to the directory"
        )
    if ".." in parts or "." in parts or not _PATH.fullmatch(path):
        raise PatchRefused(
            f"path '{path[:100]}' is not a plain relative path (letters, digits, ._+@-, "
            "no '.' or '..')"
        )
    if not path.endswith(".nix"):
        raise PatchRefused(f"path '{path}' is not a .nix file: only Nix files can be checked")
    return path


def _strip_of(header: str, prefix: str, path: str) -> int | None:
    name = header.split("\t", 1)[0]
    if name == path:
        return 0
    if name == f"{prefix}/{path}":
        return 1
    return None


def _headers(lines: list[str], path: str) -> tuple[int, int]:
    """Where the hunks start, and the strip level; the headers must name `path` only."""
    i = 0
    git = bool(lines) and lines[0].startswith("diff --git ")
    if git:
        if lines[0] != f"diff --git a/{path} b/{path}":
            raise PatchRefused(f"the diff's 'diff --git' line does not name {path} alone")
        i = 2 if len(lines) > 1 and _INDEX.fullmatch(lines[1]) else 1
    if len(lines) < i + 2 or not lines[i].startswith("--- ") or not lines[i + 1].startswith("+++ "):
        raise PatchRefused("the diff does not start with '--- ' and '+++ ' headers of one file")
    old = _strip_of(lines[i][4:], "a", path)
    new = _strip_of(lines[i + 1][4:], "b", path)
    if old is None or new is None or old != new or (git and old != 1):
        raise PatchRefused(
            f"the diff's headers name '{lines[i][4:][:100]}' and '{lines[i + 1][4:][:100]}', "
            f"not {path} (as '{path}' or 'a/{path}' and 'b/{path}')"
        )
    return i + 2, old


def _hunk(lines: list[str], i: int, number: int) -> tuple[Hunk, int]:
    """The hunk whose `@@` line is lines[i], and the index after it."""
    match = _HUNK.fullmatch(lines[i])
    if match is None and lines[i].startswith(("--- ", "+++ ", "diff ")):
        raise PatchRefused("the diff touches more than one file: one file per proposal")
    if match is None:
        raise PatchRefused(f"line {i + 1} of the diff is not a hunk header (@@ -a,b +c,d @@)")
    old_start, new_start = int(match[1]), int(match[3])
    old_left = 1 if match[2] is None else int(match[2])
    new_left = 1 if match[4] is None else int(match[4])
    old: list[str] = []
    new: list[str] = []
    i += 1
    while old_left > 0 or new_left > 0:
        if i >= len(lines):
            raise PatchRefused(f"hunk {number} ends before its line counts are reached")
        line = lines[i]
        tag, text = (line[:1], line[1:] + "\n") if line else (" ", "\n")
        if tag not in (" ", "-", "+"):
            raise PatchRefused(f"line {i + 1} of the diff is not part of hunk {number}")
        sides = [side for side, tags in ((old, " -"), (new, " +")) if tag in tags]
        for side in sides:
            side.append(text)
        old_left -= tag in " -"
        new_left -= tag in " +"
        i += 1
        if i < len(lines) and lines[i].startswith("\\ "):  # no newline at end of file
            for side in sides:
                side[-1] = side[-1][:-1]
            i += 1
    if old_left < 0 or new_left < 0:
        raise PatchRefused(f"hunk {number} has more lines than its header counts")
    header = match[0].split(" @@", 1)[0] + " @@"
    return Hunk(number, header, old_start, tuple(old), new_start, tuple(new)), i


def parse_diff(diff: str, path: str) -> FilePatch:
    """The hunks of a unified diff of `path` alone; PatchRefused for anything else."""
    if not diff.endswith("\n"):
        raise PatchRefused("the diff does not end with a newline")
    lines = diff[:-1].split("\n")
    i, strip = _headers(lines, path)
    hunks: list[Hunk] = []
    while i < len(lines):
        hunk, i = _hunk(lines, i, len(hunks) + 1)
        hunks.append(hunk)
    if not any(h.old_lines != h.new_lines for h in hunks):
        raise PatchRefused("the diff changes nothing")
    _check_order(hunks)
    return FilePatch(path, strip, tuple(hunks))


def _check_order(hunks: list[Hunk]) -> None:
    """Hunks in file order, not overlapping, and their new positions consistent."""
    end = 0
    delta = 0
    for h in hunks:
        if h.old_index < end:
            raise PatchRefused(f"hunk {h.number} overlaps or precedes the one before it")
        if h.new_index != h.old_index + delta:
            raise PatchRefused(
                f"hunk {h.number} ({h.header}) says the new text starts at "
                f"line {h.new_start}, but the hunks before it put it at line "
                f"{h.old_index + delta + (1 if h.new_lines else 0)}"
            )
        end = h.old_index + len(h.old_lines)
        delta += len(h.new_lines) - len(h.old_lines)


def _lines(text: str) -> list[str]:
    """Lines with their '\\n' kept; only '\\n' ends a line, as for patch(1)."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def apply_patch(patch: FilePatch, text: str) -> str:
    """`text` with every hunk applied exactly where it says; PatchRefused otherwise."""
    lines = _lines(text)
    out: list[str] = []
    at = 0
    for h in patch.hunks:
        found = lines[h.old_index : h.old_index + len(h.old_lines)]
        if found != list(h.old_lines):
            raise PatchRefused(
                f"hunk {h.number} ({h.header}) does not apply: "
                f"{patch.path} {_first_difference(found, h)}"
            )
        out.extend(lines[at : h.old_index])
        out.extend(h.new_lines)
        at = h.old_index + len(h.old_lines)
    out.extend(lines[at:])
    return "".join(out)


def _first_difference(found: list[str], h: Hunk) -> str:
    for n, expected in enumerate(h.old_lines):
        if n >= len(found):
            return f"ends before line {h.old_index + n + 1}"
        if found[n] != expected:
            return f"differs at line {h.old_index + n + 1}"
    return "differs"  # pragma: no cover - only reached when the lists are equal


# ---------------------------------------------------------------- I/O: the directory


def _resolved_dir(config_dir: Path | None) -> Path:
    if config_dir is None:
        raise PatchRefused(
            "no nixos_config_dir is configured, so no configuration change can be proposed"
        )
    real = Path(os.path.realpath(config_dir))
    if not real.is_dir():
        raise PatchRefused(f"nixos_config_dir {config_dir} is not a directory")
    return real


def read_target(config_dir: Path | None, path: str) -> str:
    """The text of `path` under the directory: a regular file inside it, symlinks
    resolved; never anything outside, whatever the path or a link inside says."""
    root = _resolved_dir(config_dir)
    target = Path(os.path.realpath(root / check_path(path)))
    if target == root or not target.is_relative_to(root):
        raise PatchRefused(f"path '{path}' resolves outside the configuration directory {root}")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PatchRefused(f"cannot read {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise PatchRefused(f"{path} is not a regular file")
        if not _opened(fd).is_relative_to(root):  # a directory swapped for a link meanwhile
            raise PatchRefused(f"path '{path}' resolves outside the configuration directory {root}")
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise PatchRefused(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PatchRefused(f"{path} is not UTF-8 text") from exc


def _opened(fd: int) -> Path:
    """The file an open descriptor really is, as the kernel names it."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError as exc:
        raise PatchRefused(f"cannot tell which file was opened: {exc.strerror}") from exc


def config_files(config_dir: Path | None, limit: int = 20) -> list[str]:
    """The .nix files a proposal may name (relative, sorted, at most `limit`); for the
    prompt. Links are not followed, hidden directories are skipped."""
    try:
        root = _resolved_dir(config_dir)
    except PatchRefused:
        return []
    found = sorted(str(p.relative_to(root)) for p in _walk(root))
    return [p for p in found if _PATH.fullmatch(p)][:limit]


def _walk(root: Path, depth: int = 3) -> Iterator[Path]:
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file(follow_symlinks=False) and entry.name.endswith(".nix"):
            yield Path(entry.path)
        elif depth > 1 and entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), depth - 1)


# ---------------------------------------------------------------- the checker


class PatchChecker:
    """Checks a `config_change` against the configured directory before it is queued."""

    def __init__(
        self,
        config_dir: Path | None,
        *,
        tool: str = "nix-instantiate",
        runner: Runner = subprocess_runner,
        timeout: float = PARSE_TIMEOUT,
    ) -> None:
        self.config_dir = config_dir
        self.tool = tool
        self.runner = runner
        self.timeout = timeout

    def refusal(self, change: ConfigChange) -> str | None:
        """Why `change` must not be queued, or None when every check passed."""
        try:
            self.check(change)
        except PatchRefused as exc:
            return _bounded(str(exc))
        return None

    def check(self, change: ConfigChange) -> str:
        """The patched text; PatchRefused with the first check that failed."""
        text = read_target(self.config_dir, change.path)
        patched = apply_patch(parse_diff(change.diff, change.path), text)
        self.check_parses(patched, change.path)
        return patched

    def check_parses(self, text: str, path: str) -> None:
        """`nix-instantiate --parse` of `text` in a scratch file of ours. Nothing is
        evaluated and no store is touched (`--store dummy://`); a missing parser is a
        refusal, never a pass."""
        tool = shutil.which(self.tool)
        if tool is None:
            raise PatchRefused(f"cannot check: {self.tool} not found")
        with tempfile.TemporaryDirectory(prefix="macha-patch-") as scratch:
            copy = Path(scratch) / SCRATCH_NAME
            copy.write_text(text, encoding="utf-8")
            argv = [tool, "--store", "dummy://", "--parse", str(copy)]
            try:
                done = self.runner(argv, timeout=self.timeout)
            except RunnerError as exc:
                raise PatchRefused(f"cannot check: {exc}") from exc
        if done.returncode != 0:
            said = " ".join(done.output.replace(str(copy), path).split())
            raise PatchRefused(f"{path} does not parse after the patch: {said}")


def _bounded(reason: str) -> str:
    return reason if len(reason) <= REASON_MAX else reason[: REASON_MAX - 1] + "…"
