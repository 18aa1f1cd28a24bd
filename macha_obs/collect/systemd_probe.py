"""Child process of the systemd collector: list units over D-Bus (pystemd), print JSON.

Run as a script (`python -I systemd_probe.py`), not as part of the package: it imports
only the standard library and pystemd, so it starts fast. It exists because pystemd holds
the GIL inside sd_bus_call: a stalled bus would freeze every thread of the sidecar for
libsystemd's own timeout (25-90 s). A child process can be killed at our own bound.

Output: {"units": [[name, load, active, sub, n_restarts|null, state_change_usec], ...]}
"""

import argparse
import json
import os
import re
import sys
from typing import Any

_DEST = b"org.freedesktop.systemd1"
_MANAGER_PATH = b"/org/freedesktop/systemd1"
_MANAGER = b"org.freedesktop.systemd1.Manager"
_UNIT = b"org.freedesktop.systemd1.Unit"
_SERVICE = b"org.freedesktop.systemd1.Service"
_PROPS = b"org.freedesktop.DBus.Properties"
_S = ord("s")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _body(reply: Any) -> Any:
    body = reply.body
    return body[0] if isinstance(body, tuple) and len(body) == 1 else body


def _get(bus: Any, path: bytes, interface: bytes, name: bytes) -> Any:
    reply = bus.call_method(_DEST, path, _PROPS, b"Get", [(_S, interface), (_S, name)])
    return _body(reply)


def list_units(bus: Any, include: re.Pattern[str], exclude: re.Pattern[str]) -> list[list[Any]]:
    reply = bus.call_method(_DEST, _MANAGER_PATH, _MANAGER, b"ListUnits", [])
    rows: list[list[Any]] = []
    for unit in _body(reply) or []:
        name = _text(unit[0])
        if not include.fullmatch(name) or exclude.fullmatch(name):
            continue
        path = unit[6]
        changed = int(_get(bus, path, _UNIT, b"StateChangeTimestamp") or 0)
        restarts = None
        if name.endswith(".service"):
            restarts = int(_get(bus, path, _SERVICE, b"NRestarts") or 0)
        rows.append([name, _text(unit[2]), _text(unit[3]), _text(unit[4]), restarts, changed])
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", default="")
    parser.add_argument("--include", default=".+")
    parser.add_argument("--exclude", default="")
    parser.add_argument("--sys-path", default="")
    args = parser.parse_args(argv)
    # The parent's import path: under -I (and in Nix's wrapped interpreters) the child would
    # not find pystemd on its own.
    sys.path[:0] = [p for p in args.sys_path.split(os.pathsep) if p]
    from pystemd.dbuslib import DBus, DBusAddress

    bus = DBusAddress(args.address.encode()) if args.address else DBus()
    try:
        bus.open()
        rows = list_units(bus, re.compile(args.include), re.compile(args.exclude))
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        bus.close()
    json.dump({"units": rows}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
