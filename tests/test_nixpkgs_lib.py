"""Any clone, anywhere: where the NixOS tests find nixpkgs' real lib (NIXPKGS_LIB,
../shared/nixpkgs-lib, the pinned download; tests/harness/nixpkgs_lib.py), the pin's
digest and its checks, and a clone with nothing beside it that passes the NixOS tests
against the stand-in and says so in one line.

The download is exercised against a tarball served on loopback (this machine reaches
no other host); what GitHub serves for the pinned revision is not checked here."""

from __future__ import annotations

import http.server
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.harness import nixpkgs_lib
from tests.harness.nix_support import REPO, nix_eval_json
from tests.harness.nixpkgs_lib import (
    PIN_REV,
    PIN_TREE_SHA256,
    FetchError,
    Found,
    LibPathError,
    fetch_pinned,
    find,
    tree_sha256,
)
from tests.harness.real import in_ci

TOP = f"nixpkgs.lib-{PIN_REV}"
# filesystem.nix's pathType as a lib without Nix < 2.14's fallback defines it
PLAIN_PATH_TYPE = "  pathType = builtins.readFileType;\n\n"
SMALL_LIB = {
    "default.nix": '{ version = "26.11"; }\n',
    "modules.nix": "{ }\n",
    "filesystem.nix": "{\n  pathType =\n    old;\n\n  /**\n    Whether ...\n  */\n  x = 1;\n}\n",
}


@pytest.fixture
def pinned_copy() -> Path:
    """The pinned lib as CI has it: ../shared/nixpkgs-lib/lib, or the verified cache."""
    for lib in (
        REPO.parent / "shared" / "nixpkgs-lib" / "lib",
        REPO / ".cache" / "nixpkgs-lib" / PIN_REV / "lib",
    ):
        if nixpkgs_lib.is_lib(lib):
            return lib
    if in_ci():
        pytest.fail("CI has ../shared/nixpkgs-lib: it is missing", pytrace=False)
    pytest.skip("no copy of the pinned nixpkgs lib (../shared/nixpkgs-lib) here")


def tarball(files: Mapping[str, bytes], links: Mapping[str, str] | None = None) -> bytes:
    """A GitHub-style archive: everything under one top directory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


def archive_of(lib: Path) -> dict[str, bytes]:
    """lib/ as the upstream archive holds it: pathType without the fallback, other files
    beside lib/ that are not taken."""
    files = {
        f"{TOP}/lib/{p.relative_to(lib).as_posix()}": p.read_bytes()
        for p in sorted(lib.rglob("*"))
        if p.is_file()
    }
    name = f"{TOP}/lib/filesystem.nix"
    text = files[name].decode()
    start = text.index("\n  pathType =\n") + 1
    end = text.index("\n  /**", start)
    files[name] = (text[:start] + PLAIN_PATH_TYPE + text[end + 1 :]).encode()
    files[f"{TOP}/flake.nix"] = b"{ outputs = _: { }; }\n"
    return files


def small_archive(**changes: str) -> dict[str, bytes]:
    return {f"{TOP}/lib/{k}": v.encode() for k, v in (SMALL_LIB | changes).items()}


def write_small_lib(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in SMALL_LIB.items():
        fixed = nixpkgs_lib.with_path_type(text) if name == "filesystem.nix" else text
        (root / name).write_text(fixed)
    return root


class Served:
    """Files served over HTTP on loopback (the other side of the download)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests = 0
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.requests += 1
                body = served.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    s.thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture
def closed_port() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: a connect is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/{PIN_REV}.tar.gz"


# ------------------------------------------------------------------ the pin


def test_the_pin_is_the_digest_of_the_shared_copy(pinned_copy: Path) -> None:
    assert tree_sha256(pinned_copy) == PIN_TREE_SHA256
    # the download gets the pathType ../shared's copy has; putting it in again changes nothing
    text = (pinned_copy / "filesystem.nix").read_text()
    assert nixpkgs_lib.with_path_type(text) == text
    readme = pinned_copy.parent / "README.md"
    if readme.is_file():  # ../shared's copy names the revision it is
        assert f"commit {PIN_REV}" in readme.read_text()


def test_the_pinned_tarball_is_fetched_verified_cached_and_evaluates(
    pinned_copy: Path, served: Served, tmp_path: Path
) -> None:
    served.files["/pin.tar.gz"] = tarball(archive_of(pinned_copy))
    cache = tmp_path / ".cache" / "nixpkgs-lib" / PIN_REV
    lib = fetch_pinned(cache, served.url("/pin.tar.gz"))
    assert lib == cache / "lib"
    assert tree_sha256(lib) == PIN_TREE_SHA256
    assert not (cache / "flake.nix").exists()  # only lib/ is taken
    assert [p.name for p in cache.parent.iterdir()] == [PIN_REV]  # no download left over
    # the real module system, on this machine's Nix (2.8 has no builtins.readFileType)
    evaluated = nix_eval_json(
        "-E",
        f"let lib = import {lib}; in {{ v = lib.version; t = lib.filesystem.pathType {lib}; "
        "m = (lib.evalModules { modules = [ { options.x = lib.mkOption { default = 1; }; } "
        "{ x = lib.mkForce 2; } ]; }).config.x; }",
    )
    assert evaluated == {"v": evaluated["v"], "t": "directory", "m": 2}
    assert evaluated["v"].startswith("26.11")
    # the next run uses the cache, verified again, without asking the network
    before = served.requests
    assert fetch_pinned(cache, served.url("/pin.tar.gz")) == lib
    assert served.requests == before


def test_a_tarball_that_is_not_the_pin_is_refused_and_nothing_is_kept(
    served: Served, tmp_path: Path
) -> None:
    want = tree_sha256(write_small_lib(tmp_path / "expected"))
    served.files["/ok.tar.gz"] = tarball(small_archive())
    served.files["/bad.tar.gz"] = tarball(small_archive(**{"modules.nix": "{ evil = 1; }\n"}))
    cache = tmp_path / "cache" / "rev"
    with pytest.raises(FetchError, match=f"digest .* the pin says {want}"):
        fetch_pinned(cache, served.url("/bad.tar.gz"), want=want)
    assert list(cache.parent.iterdir()) == []
    # the same code takes the archive that is what the pin says, and puts pathType in
    lib = fetch_pinned(cache, served.url("/ok.tar.gz"), want=want)
    assert "builtins.readFileType or" in (lib / "filesystem.nix").read_text()
    # a cache that was changed afterwards is not used: it is fetched again
    (lib / "modules.nix").write_text("{ changed = 1; }\n")
    assert fetch_pinned(cache, served.url("/ok.tar.gz"), want=want) == lib
    assert (lib / "modules.nix").read_text() == SMALL_LIB["modules.nix"]


@pytest.mark.parametrize(
    ("files", "links", "why"),
    [
        (small_archive() | {f"{TOP}/lib/../../escape": b"x"}, None, "outside the archive"),
        (small_archive(), {f"{TOP}/lib/modules.nix": "/etc/passwd"}, "not a regular file"),
        ({f"{TOP}/README.md": b"no lib here"}, None, "no lib/default.nix"),
        ({f"{TOP}/lib": b"not gzip"}, None, "not a readable tarball"),
    ],
    ids=["climbs-out", "symlink", "no-lib", "not-a-tarball"],
)
def test_an_archive_with_anything_but_lib_files_is_refused(
    served: Served,
    tmp_path: Path,
    files: dict[str, bytes],
    links: dict[str, str] | None,
    why: str,
) -> None:
    body = tarball(files, links) if why != "not a readable tarball" else b"<html>"
    served.files["/x.tar.gz"] = body
    with pytest.raises(FetchError, match=why):
        fetch_pinned(tmp_path / "cache" / "rev", served.url("/x.tar.gz"))
    assert not (tmp_path / "cache" / "rev").exists()


def test_offline_the_download_fails_at_once_with_the_reason(
    closed_port: str, served: Served, tmp_path: Path
) -> None:
    with pytest.raises(FetchError, match="refused"):
        fetch_pinned(tmp_path / "cache" / "rev", closed_port)
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_pinned(tmp_path / "cache" / "rev", served.url("/missing.tar.gz"))
    with pytest.raises(FetchError, match="only http"):
        fetch_pinned(tmp_path / "cache" / "rev", "file:///etc/passwd")
    assert not (tmp_path / "cache" / "rev").exists()


# ------------------------------------------------------------------ the order


def test_the_lib_is_looked_for_in_the_variable_then_beside_then_downloaded(
    closed_port: str, tmp_path: Path
) -> None:
    repo = tmp_path / "work" / "macha-obs"
    repo.mkdir(parents=True)
    offline = {"NIXPKGS_LIB_URL": closed_port}
    # none of the three: the stand-in, and the reason names all three
    found = find(offline, repo)
    assert found.path is None
    assert "NIXPKGS_LIB is unset" in found.source
    assert "../shared/nixpkgs-lib is missing" in found.source
    assert "refused" in found.source
    # ../shared beside the clone
    shared = write_small_lib(tmp_path / "work" / "shared" / "nixpkgs-lib" / "lib")
    assert find(offline, repo) == Found(shared, "../shared/nixpkgs-lib")
    # the variable first: a lib/ or the directory that holds one
    mine = write_small_lib(tmp_path / "mine" / "lib")
    assert find(offline | {"NIXPKGS_LIB": str(mine)}, repo) == Found(mine, "NIXPKGS_LIB")
    assert find({"NIXPKGS_LIB": str(mine.parent)}, repo) == Found(mine, "NIXPKGS_LIB")
    # set but wrong is an error, not a fallback
    with pytest.raises(LibPathError, match=r"NIXPKGS_LIB=.*: neither it nor its lib/"):
        find({"NIXPKGS_LIB": str(tmp_path / "nowhere")}, repo)


def test_a_verified_download_in_the_cache_is_found_third(pinned_copy: Path, tmp_path: Path) -> None:
    repo = tmp_path / "macha-obs"
    cached = repo / ".cache" / "nixpkgs-lib" / PIN_REV / "lib"
    shutil.copytree(pinned_copy, cached)
    found = find({}, repo)
    assert found == Found(cached, f"the pinned download ({PIN_REV[:12]})")


# ------------------------------------------------------------------ a clone, alone


def tracked_files_copy(dest: Path) -> Path:
    """What a clone of this checkout holds once its changes are committed: the files git
    tracks or would track (as on disk now); nothing beside it, no .cache, no venv."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        if in_ci():  # CI runs on a clone: a checkout that git cannot list is a fault
            pytest.fail("not a git checkout", pytrace=False)
        pytest.skip("not a git checkout")
    for name in listed.stdout.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_a_clone_with_nothing_beside_it_passes_the_nixos_tests_with_the_stand_in(
    closed_port: str, tmp_path: Path
) -> None:
    clone = tracked_files_copy(tmp_path / "alone" / "macha-obs")
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NIXPKGS_LIB")}
    # as `./macha-dev test` runs it, offline (this machine is; a networked one would
    # download the pin: the refused URL stands in for no network)
    env |= {"REQUIRE_REAL_COMPONENTS": "1", "NIXPKGS_LIB_URL": closed_port}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_nixos_real_lib.py", "tests/test_llm_endpoint_nixos.py"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, out
    assert warning[0].startswith("warning: the NixOS tests ran against the stand-in evaluator")
    assert "NIXPKGS_LIB is unset, ../shared/nixpkgs-lib is missing" in warning[0]
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, out
    assert "needs the real NixOS module system" in skipped[0]
    assert " passed" in out.splitlines()[-1]
    assert "failed" not in out.splitlines()[-1]
    assert "error" not in out.splitlines()[-1]
