"""The house's layering: each room imports only the rooms below it.

A room is a top-level module or package of `macha_obs` (`store/`, `metrics/`,
`orchestrator.py`, ...). ROOMS lists, bottom up, what each may import, as DESIGN.md's
rooms table draws it (`errors` is the bottom room: every room may import it). A new
import across rooms must be added here on purpose, and can never close a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "macha_obs"

# room -> the rooms it may import (bottom up: a room only names rooms listed before it)
ROOMS: dict[str, set[str]] = {
    "errors": set(),
    "__version__": set(),
    "terminal": set(),
    "protected": {"errors"},
    # config/: the model, its value checks, where a setting came from, the loading
    "config": {"errors", "protected"},
    "statedir": {"errors", "config"},
    "models": {"config", "errors"},
    "systemd": {"errors", "models"},
    "collect": {"config", "errors", "models", "systemd", "statedir"},
    "metrics": {"__version__", "config", "models"},
    "store": {"errors", "models", "statedir"},
    # scope.py (the scope lock's pure rules) is policy's; the runbooks and the incident
    # grouping classify alerts with it, so agent/ and intake/ may read policy/ (pure).
    "policy": {"config", "errors", "models", "protected"},
    "intake": {"config", "errors", "models", "policy", "statedir", "store"},
    "agent": {"config", "errors", "models", "policy", "protected", "terminal"},
    "execute": {"errors", "models", "systemd"},
    # remediate/ reads and marks incidents through intake's IncidentStore (the rules of
    # when an incident is open live there, once)
    "remediate": {"config", "errors", "execute", "intake", "models", "policy", "store"},
    "lanes": {"config", "models"},
    "orchestrator": {
        "agent",
        "collect",
        "config",
        "intake",
        "lanes",
        "metrics",
        "models",
        "policy",
        "remediate",
        "store",
        "systemd",
    },
    "web": {"config", "errors", "intake", "models", "remediate", "statedir", "store", "terminal"},
    # the MCP server: the record and the host only through remediate/ (invariant 15)
    "mcp": {"agent", "config", "errors", "intake", "models", "policy", "remediate", "store"},
    "server": {"metrics"},  # readiness asks the store through a Protocol (health.py)
    "daemon": {"errors", "statedir"},
    "setup": {"config", "errors", "models", "protected"},
    "cli": set(),  # the only room that wires everything: it may import every room
}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "macha_obs" else None


def imports(path: Path) -> Iterator[str]:
    """Every `macha_obs...` module `path` imports, at any depth in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "macha_obs":
                yield from (f"macha_obs.{alias.name}" for alias in node.names)
            elif node.module.startswith("macha_obs."):
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("macha_obs."))


def room_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        source = room_of(".".join(rel.parts))
        if source is None:
            continue
        for module in imports(path):
            target = room_of(module)
            if target is not None and target != source:
                found.setdefault(source, set()).add(target)
    return found


def test_every_room_is_known() -> None:
    named = (
        room_of(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts))
        for p in PACKAGE.rglob("*.py")
    )
    rooms = {room for room in named if room is not None} - {"__init__"}
    assert rooms <= set(ROOMS), f"rooms missing from ROOMS: {sorted(rooms - set(ROOMS))}"


@pytest.mark.parametrize("room", sorted(set(ROOMS) - {"cli"}))
def test_a_room_imports_only_the_rooms_below_it(room: str) -> None:
    extra = room_imports().get(room, set()) - ROOMS[room] - {"errors"}  # the bottom room
    assert not extra, f"{room} imports {sorted(extra)}, above it or beside it"


def test_the_table_is_bottom_up_so_no_import_can_close_a_cycle() -> None:
    seen: set[str] = set()
    for room, allowed in ROOMS.items():
        assert allowed <= seen, f"{room} may import {sorted(allowed - seen)}, not below it"
        seen.add(room)


def test_no_module_is_over_400_lines() -> None:
    """Modules of one concern (STYLE.md 1): past 400 lines, split along a seam."""
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert long == {}
