"""Shared helpers for the eyes' tests: fixture paths, a fixture snapshot, scraping."""

from __future__ import annotations

import os
import sqlite3
import urllib.request
from pathlib import Path

from macha_obs.models import Snapshot

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROJECT = Path(__file__).resolve().parents[2]


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def fixture_snapshot() -> Snapshot:
    return Snapshot.model_validate_json(fixture_text("snapshot.json"))


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of a GET; error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - loopback test URL
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def make_nixos_tree(
    root: Path, generations: int = 3, store_bytes: tuple[int, ...] = (10, 32)
) -> None:
    """A NixOS-shaped tree: /etc/NIXOS, system-N-link profiles, a Nix database."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/NIXOS").touch()
    profiles = root / "nix/var/nix/profiles"
    profiles.mkdir(parents=True)
    for n in range(1, generations + 1):
        (profiles / f"system-{n}-link").symlink_to(f"/nix/store/{n:032d}-nixos-system")
        os.utime(profiles / f"system-{n}-link", (1000.0 * n, 1000.0 * n), follow_symlinks=False)
    (profiles / "system").symlink_to(f"system-{generations}-link")
    db = root / "nix/var/nix/db"
    db.mkdir(parents=True)
    with sqlite3.connect(db / "db.sqlite") as conn:
        conn.execute("CREATE TABLE ValidPaths (id INTEGER PRIMARY KEY, path TEXT, narSize INTEGER)")
        conn.executemany(
            "INSERT INTO ValidPaths(path, narSize) VALUES (?, ?)",
            [(f"/nix/store/p{i}", size) for i, size in enumerate(store_bytes)],
        )
    conn.close()
