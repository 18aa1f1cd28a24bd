"""Where the NixOS tests find nixpkgs' real `lib` (the module system), in this order:

1. `NIXPKGS_LIB`: a directory that is nixpkgs' `lib/` (it holds `default.nix`), or holds
   one. Not MACHA_-prefixed: that namespace is the config's, which refuses names it does
   not know. Set but wrong is an error, never a silent fallback.
2. `../shared/nixpkgs-lib/lib` beside the repository (CI has it).
3. The pinned download: nix-community/nixpkgs.lib (a mirror of nixpkgs' `lib/`) at
   PIN_REV, the revision ../shared/nixpkgs-lib/README.md names. Only `lib/` is taken
   from the tarball, with Nix < 2.14's `pathType` fallback put in (Debian 12's Nix is
   2.8; ../shared's copy carries the same change), and the result must have PIN_TREE_SHA256,
   the digest of ../shared/nixpkgs-lib/lib: what is evaluated is byte for byte what CI
   evaluates. Cached, verified, in `.cache/nixpkgs-lib/<rev>/lib`. Offline it fails fast
   (CONNECT_TIMEOUT). `NIXPKGS_LIB_URL` names a mirror of the same tarball; the digest
   is checked all the same.

With none of them the tests use the stand-in evaluator, outside CI; nix_support.py says
so in one line at the end of the run.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ENV = "NIXPKGS_LIB"
ENV_URL = "NIXPKGS_LIB_URL"
PIN_REV = "de42d44212d207476489bce163375d8306a26d59"  # nix-community/nixpkgs.lib, 2026-06-14
PIN_URL = f"https://github.com/nix-community/nixpkgs.lib/archive/{PIN_REV}.tar.gz"
# tree_sha256() of ../shared/nixpkgs-lib/lib (tests/test_nixpkgs_lib.py recomputes it)
PIN_TREE_SHA256 = "bf155c7e6e67ad1c3ede65ae3ff38031f17124dc12fa8212fc196c954e66198f"
CONNECT_TIMEOUT = 5.0  # seconds, for each connect and each read
MAX_BYTES = 64 * 1024 * 1024  # the tarball is well under 1 MiB; more is not it

# Nix < 2.14 has no builtins.readFileType: ../shared's filesystem.nix defines pathType
# with this fallback; the download gets the same definition.
PATH_TYPE = """\
  pathType =
    builtins.readFileType or
    # nixeval: Nix <2.14 compatibility shim copied back from the 2025-05 lib (host Nix is 2.8)
    (
      path:
      if !builtins.pathExists path then
        abort "lib.filesystem.pathType: Path ${toString path} does not exist."
      else if dirOf path == path then
        "directory"
      else
        (builtins.readDir (dirOf path)).${baseNameOf path}
    );

"""


class FetchError(Exception):
    """The pinned lib could not be had: offline, refused, or not what the pin says."""


class LibPathError(Exception):
    """NIXPKGS_LIB is set but names no nixpkgs lib."""


@dataclass(frozen=True)
class Found:
    """The lib to evaluate with (None: the stand-in) and where it came from, or why not."""

    path: Path | None
    source: str


def is_lib(path: Path) -> bool:
    return (path / "default.nix").is_file() and (path / "modules.nix").is_file()


def from_env(value: str) -> Path:
    path = Path(value).expanduser()
    for candidate in (path, path / "lib"):
        if is_lib(candidate):
            return candidate.resolve()
    raise LibPathError(
        f"{ENV}={value}: neither it nor its lib/ is nixpkgs' lib (no default.nix and "
        "modules.nix there)"
    )


def tree_sha256(root: Path) -> str:
    """A digest of a tree's regular files: their paths and contents (not their modes or
    times: a copy without write bits hashes the same). Anything else in it is refused."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise FetchError(f"{path}: not a regular file or directory")
        if path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            digest.update(f"{path.relative_to(root).as_posix()}\0{content}\n".encode())
    return digest.hexdigest()


def with_path_type(text: str) -> str:
    """filesystem.nix with PATH_TYPE as its `pathType` (up to the next doc comment)."""
    definition = re.search(r"^  pathType =[ \n]", text, flags=re.M)
    end = text.find("\n  /**", definition.start()) if definition else -1
    if definition is None or end < 0:
        raise FetchError("lib/filesystem.nix: no `pathType =` definition where expected")
    return text[: definition.start()] + PATH_TYPE + text[end + 1 :]


def download(url: str, target: Path, timeout: float = CONNECT_TIMEOUT) -> None:
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise FetchError(f"{url}: only http(s) URLs")
    try:
        # the scheme is checked above: no file:// or custom openers
        with (
            urllib.request.urlopen(url, timeout=timeout) as response,  # noqa: S310
            target.open("wb") as out,
        ):
            total = 0
            while chunk := response.read(1 << 16):
                total += len(chunk)
                if total > MAX_BYTES:
                    raise FetchError(f"{url}: larger than {MAX_BYTES} bytes")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: {getattr(exc, 'reason', exc)}") from exc


def extract_lib(tarball: Path, dest: Path) -> Path:
    """Only `<top>/lib/**` of a GitHub archive, as regular files; links, devices and
    paths that climb out are refused. Returns dest/lib."""
    lib = dest / "lib"
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if len(parts) < 2 or parts[1] != "lib":
                    continue
                if PurePosixPath(member.name).is_absolute() or ".." in parts:
                    raise FetchError(f"{member.name}: a path outside the archive")
                target = lib.joinpath(*parts[2:])
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with source, target.open("wb") as out:
                        shutil.copyfileobj(source, out)
                else:
                    raise FetchError(f"{member.name}: not a regular file or directory")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FetchError(f"{tarball.name}: not a readable tarball ({exc})") from exc
    if not is_lib(lib):
        raise FetchError("the archive has no lib/default.nix")
    return lib


def fetch_pinned(cache: Path, url: str = PIN_URL, want: str = PIN_TREE_SHA256) -> Path:
    """The pinned lib in `cache` (verified again on every use), downloaded if missing."""
    final = cache / "lib"
    if final.is_dir():
        got = tree_sha256(final)
        if got == want:
            return final
        shutil.rmtree(cache)  # a cache that is not the pin is not used, nor kept
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        tarball = work / "lib.tar.gz"
        download(url, tarball)
        lib = extract_lib(tarball, work / "tree")
        filesystem = lib / "filesystem.nix"
        filesystem.write_text(with_path_type(filesystem.read_text()))
        got = tree_sha256(lib)
        if got != want:
            raise FetchError(f"{url}: lib/ has digest {got}, the pin says {want}: not used")
        try:
            (work / "tree").rename(cache)  # atomic: a cache dir is whole or absent
        except OSError:
            if not (final.is_dir() and tree_sha256(final) == want):  # another run won
                raise
    return final


def find(environ: Mapping[str, str], repo: Path) -> Found:
    """The real lib by the order above; Found(None, why) when there is none."""
    if environ.get(ENV):
        return Found(from_env(environ[ENV]), ENV)
    shared = repo.parent / "shared" / "nixpkgs-lib" / "lib"
    if is_lib(shared):
        return Found(shared, "../shared/nixpkgs-lib")
    url = environ.get(ENV_URL) or PIN_URL
    try:
        path = fetch_pinned(repo / ".cache" / "nixpkgs-lib" / PIN_REV, url)
    except FetchError as exc:
        return Found(
            None,
            f"{ENV} is unset, ../shared/nixpkgs-lib is missing, and the pinned download "
            f"failed ({exc})",
        )
    return Found(path, f"the pinned download ({PIN_REV[:12]})")
