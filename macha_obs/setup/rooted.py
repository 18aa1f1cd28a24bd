"""Files under `--root`, never outside it: every directory on the way is opened relative to
the one before with `O_NOFOLLOW`, so a symlinked directory inside the root is refused,
not followed; and every path is checked to be absolute and normal before it is used, so
a manifest entry like `/../x` cannot leave the root (issue 20).

The root itself is the person's choice and may be a symlink; nothing below it may be.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from macha_obs.errors import MachaError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class InstallError(MachaError):
    """Installing or uninstalling cannot go on; nothing more was changed."""


def normal(path: str | PurePosixPath) -> PurePosixPath:
    """`path` when it is absolute and normal (no `.`, `..`, empty part or NUL), else
    InstallError: such a path could name something outside the root."""
    text = str(path)
    parts = text.split("/")[1:]
    if not text.startswith("/") or "\0" in text or any(p in ("", ".", "..") for p in parts):
        raise InstallError(
            f"{text!r} is not a normal absolute path: refused (it could leave --root)"
        )
    return PurePosixPath(text)


class Root:
    """A directory tree that install writes in and uninstall removes from."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, path: PurePosixPath) -> Path:
        """For messages only: where `path` is under the root."""
        return self.root / normal(path).relative_to("/")

    @contextlib.contextmanager
    def parent(self, path: PurePosixPath, *, made: list[str] | None = None) -> Iterator[int | None]:
        """An fd on `path`'s directory, walked from the root one component at a time
        without following a symlink; None when one is missing, unless `made` is given:
        then the missing ones are created (0755) and named in it."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if made is not None:
                raise
            yield None  # no root yet: nothing in it either
            return
        try:
            here = PurePosixPath("/")
            for part in normal(path).parent.parts[1:]:
                here = here / part
                try:
                    step = os.open(part, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if made is None:
                        yield None
                        return
                    os.mkdir(part, 0o755, dir_fd=fd)
                    made.append(str(here))
                    step = os.open(part, _DIR, dir_fd=fd)
                except OSError as exc:
                    raise self._refused(here, exc) from exc
                os.close(fd)
                fd = step
            yield fd
        finally:
            os.close(fd)

    def _refused(self, path: PurePosixPath, exc: OSError) -> Exception:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            what = "a symlink" if os.path.islink(self.where(path)) else "not a directory"
            return InstallError(
                f"{self.where(path)} is {what}: install and uninstall never follow a link "
                "inside --root; move it away"
            )
        return exc

    def missing_dirs(self, path: PurePosixPath) -> list[str]:
        """The directories on the way to `path` that are not there yet, outermost first."""
        dirs = list(reversed(normal(path).parents))[1:]  # not "/": the root is there
        for i, directory in enumerate(dirs):
            if not self.is_dir(directory):
                return [str(d) for d in dirs[i:]]
        return []

    def is_dir(self, path: PurePosixPath) -> bool:
        with self.parent(path) as fd:
            if fd is None:
                return False
            try:
                os.close(os.open(path.name, _DIR, dir_fd=fd))
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise self._refused(path, exc) from exc
            return True

    def read(self, path: PurePosixPath) -> bytes | None:
        """The file's bytes; None when it is not there. A symlink is refused."""
        with self.parent(path) as fd:
            if fd is None:
                return None
            try:
                handle = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise self._refused(path, exc) from exc
            with os.fdopen(handle, "rb") as f:
                return f.read()

    def write(self, path: PurePosixPath, text: str, mode: int, made: list[str]) -> None:
        """Write atomically (a temporary file beside it, renamed over it)."""
        with self.parent(path, made=made) as fd:
            assert fd is not None  # noqa: S101  # made= creates what is missing
            tmp = f".{path.name}.{secrets.token_hex(6)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            handle = os.open(tmp, flags, mode, dir_fd=fd)
            try:
                with os.fdopen(handle, "w") as out:
                    out.write(text)
                    os.fchmod(out.fileno(), mode)
                os.replace(tmp, path.name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=fd)
                raise

    def unlink(self, path: PurePosixPath) -> None:
        with self.parent(path) as fd:
            if fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path.name, dir_fd=fd)

    def rmdir(self, path: PurePosixPath) -> bool:
        """Remove an empty directory; False when it is not empty (someone else's files)."""
        with self.parent(path) as fd:
            if fd is None:
                return True
            try:
                os.rmdir(path.name, dir_fd=fd)
            except FileNotFoundError:
                return True
            except OSError:
                return False
            return True

    def rmtree(self, path: PurePosixPath) -> None:
        """Remove a directory tree; a symlink in it is removed, never followed."""
        with self.parent(path) as fd:
            if fd is not None and self.is_dir(path):
                shutil.rmtree(path.name, dir_fd=fd)
