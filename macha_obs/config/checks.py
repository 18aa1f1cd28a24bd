"""Pure checks of configuration values, for `config.py`'s model: per-action trust, addresses,
host names, paths and URLs. Each raises ValueError with the reason (pydantic names the
field), or returns the value as it will be used.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

from macha_obs.protected import BUILTIN_PROTECTED_UNITS, PROTECTED_CLASSES, USER_PROTECTED

# Per-action trust (trusted_actions): what a person may let run below the autonomy
# level. Unit verbs need a unit (or a glob of units): "restart_unit" alone, or
# "restart_unit:*", is not per-action trust but autonomy (autonomy_level = "auto-safe").
_TRUST_UNIT_KINDS = ("restart_unit", "start_unit", "reset_failed")
_TRUST_HOST_KINDS = ("journal_vacuum", "nix_gc", "nix_rebuild", "investigate")
_NEVER_TRUSTED = {
    "nix_rollback": "rolls the whole system back: always a human's decision (high risk)",
    "config_change": "a configuration change is only ever read and applied by a human",
    "harden_unit": "a hardening patch is only ever read and applied by a human",
    "tune_unit": "a tuning patch is only ever read and applied by a human",
    "tune_journald": "a tuning patch is only ever read and applied by a human",
}
_HUMAN_ONLY_TYPES = ("mount", "automount", "swap")


def trust_refusal(entry: str, protected: tuple[str, ...]) -> str | None:
    """Why a `trusted_actions` entry ("KIND" or "KIND:TARGET_GLOB") cannot be granted,
    or None. A target that is, or whose glob could name, a protected unit is refused
    with the protected class and why (invariants 3 and 11 hold whatever is trusted)."""
    kind, _, target = entry.partition(":")
    if kind in _NEVER_TRUSTED:
        return f"{kind} cannot be trusted: {_NEVER_TRUSTED[kind]}"
    known = (*_TRUST_UNIT_KINDS, *_TRUST_HOST_KINDS)
    if kind not in known:
        return f"unknown action kind {kind!r} (trustable: {', '.join(known)})"
    if kind not in _TRUST_UNIT_KINDS:
        if target and kind != "investigate":
            return f"{kind} acts on the whole host: write just {kind!r}"
        return None
    if not target.strip("*?"):
        return (
            f"{kind} on every unit is an autonomy level, not per-action trust: name the "
            f'unit(s), e.g. {kind}:nginx.service, or set autonomy_level = "auto-safe"'
        )
    if target.rsplit(".", 1)[-1] in _HUMAN_ONLY_TYPES:
        return f"{target}: mounts and swaps change what every service sees; always a human's"
    for cls in (*PROTECTED_CLASSES, USER_PROTECTED):
        patterns = cls.units or tuple(p for p in protected if p not in BUILTIN_PROTECTED_UNITS)
        for pattern in patterns:
            if fnmatch.fnmatchcase(target, pattern) or fnmatch.fnmatchcase(pattern, target):
                return (
                    f"{target} names protected units ({cls.name}: {cls.why}); protected "
                    "units are never acted on, trusted or not"
                )
    return None


def trusted(values: list[str], protected: tuple[str, ...]) -> tuple[str, ...]:
    """`trusted_actions` as granted, each entry once; the first refused entry is an error."""
    entries = [v.strip() for v in values if v.strip()]
    for entry in entries:
        refused = trust_refusal(entry, protected)
        if refused is not None:
            raise ValueError(f"{entry!r}: {refused}")
    return tuple(dict.fromkeys(entries))


def merged_protected(values: list[str]) -> tuple[str, ...]:
    """The built-in protected units, then the operator's additions (names or globs)."""
    extra = [v.strip() for v in values if v.strip()]
    for pattern in extra:
        if any(c.isspace() for c in pattern) or "/" in pattern:
            raise ValueError(f"{pattern!r} is not a unit name or glob")
    merged = list(BUILTIN_PROTECTED_UNITS)
    merged += [p for p in extra if p not in merged]
    return tuple(merged)


# posture: backups. The default globs live in a file the NixOS module reads too.
DEFAULT_BACKUP_UNITS: tuple[str, ...] = tuple(
    json.loads(Path(__file__).with_name("backup_units.json").read_text())["units"]
)
_MAX_INTERVAL = 366 * 86400.0


def unit_globs(values: list[str]) -> tuple[str, ...]:
    """Unit names or globs, each once: no spaces, no slashes."""
    globs = [v.strip() for v in values if v.strip()]
    for pattern in globs:
        if any(c.isspace() for c in pattern) or "/" in pattern:
            raise ValueError(f"{pattern!r} is not a unit name or glob")
    return tuple(dict.fromkeys(globs))


def unit_intervals(value: object) -> dict[str, float]:
    """{unit glob: seconds}, from a table or (the environment) a JSON object."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, dict):
        # ValueError, not TypeError: pydantic reports only the former as a bad value
        raise ValueError("expected a table of unit glob = seconds")  # noqa: TRY004
    out: dict[str, float] = {}
    for pattern, seconds in value.items():
        globs = unit_globs([str(pattern)])
        if not globs:
            raise ValueError("an empty unit glob")
        glob = globs[0]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float | str):
            raise ValueError(f"{glob}: expected seconds, not {seconds!r}")  # noqa: TRY004
        number = float(seconds)
        if not 60 <= number <= _MAX_INTERVAL:  # nan fails this too
            raise ValueError(f"{glob}: {number:g} s is not between 60 s and 366 days")
        out[glob] = number
    return out


# ------------------------------------------------------------------ names and addresses


def unit_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9:_][A-Za-z0-9:_.@\-]*\.[a-z]+", value):
        raise ValueError(f"{value!r} is not a unit name")
    return value


# RFC 1123 labels (underscores too: they occur in real host names), an optional final dot
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def host_name(value: str) -> str:
    """A DNS host name or an IP address literal: no spaces, control characters or globs."""
    if _HOST_NAME.fullmatch(value):
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a host name (letters, digits, '-', '_' and dots) or an IP address"
        ) from None
    return value


def host_alias(value: str) -> str:
    """Another name of this host: whole, never a pattern (`*` would take every host's
    alerts as ours)."""
    if not value.strip():
        raise ValueError("an empty alias would match alerts without a host")
    if any(c in value for c in "*?[]{}"):
        raise ValueError(f"{value!r}: aliases are names, not patterns (no * ? [ ] {{ }})")
    return host_name(value)


def split_host_port(address: str) -> tuple[str, int]:
    """'127.0.0.1:9847', 'name:9847' or '[::1]:9847' → (host, port); ValueError otherwise.
    An IPv6 address needs its brackets, and they must close."""
    host, sep, port_text = address.rpartition(":")
    # ASCII digits only: str.isdigit() also takes "²" and "٨٠"
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port_text):
        raise ValueError("needs HOST:PORT, e.g. 127.0.0.1:9847")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0..65535")
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
        if not _ipv6(inner):
            raise ValueError(f"{host!r}: an IPv6 address in brackets, e.g. [::1]:9847")
        return inner, port
    if not host or ":" in host:
        raise ValueError("needs HOST:PORT, e.g. 127.0.0.1:9847 (IPv6 as [::1]:9847)")
    return host_name(host), port


def _ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def split_list(text: str) -> list[str]:
    """A list setting from the environment: a JSON list, or comma-separated."""
    text = text.strip()
    if text.startswith("["):
        loaded = json.loads(text)
        if not isinstance(loaded, list):
            raise ValueError("expected a JSON list")
        return [str(v) for v in loaded]
    return [part.strip() for part in text.split(",") if part.strip()]


def same_kind(value: object, kind: object) -> object:
    """`check_interval = true` is a mistake, not 1 second; `dbus_events = 1` neither.
    (Strings still convert: the environment has nothing else.)"""
    if isinstance(value, bool) and kind in (int, float, int | None, float | None):
        raise ValueError("expected a number, not true or false")
    if kind is bool and isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("expected true or false, not a number")
    return value


# ------------------------------------------------------------------ paths


def no_nul(value: object) -> object:
    """Before a path is made: "" (which Path reads as ".") and NUL bytes are refused."""
    if isinstance(value, str | Path) and "\0" in str(value):
        raise ValueError("a path cannot contain a NUL character")
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


# posture: the system paths where a new setuid/setgid file is an intrusion sign
DEFAULT_SETID_DIRS = tuple(
    Path(p)
    for p in (
        "/usr/bin",
        "/usr/sbin",
        "/bin",
        "/sbin",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/run/wrappers/bin",
    )
)


def absolute_paths(value: Any) -> tuple[Path, ...]:
    """A list of absolute paths (a comma-separated string from the environment too)."""
    if isinstance(value, str):
        value = split_list(value)
    for v in value or ():
        no_nul(str(v))
    return tuple(absolute(Path(str(v))) for v in value or ())


def absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"{str(path)!r} must be an absolute path")
    return path


# ------------------------------------------------------------------ URLs


def http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/")


def external_url(value: str) -> str:
    """The base of the links alerts carry: an http(s) URL, no query or fragment, and
    nothing that could leave a label value or an HTML attribute."""
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/%\-]*)?", value):
        raise ValueError(
            "must be an http:// or https:// URL with no query, fragment or spaces, "
            "e.g. https://proxy.example.org/macha"
        )
    return value.rstrip("/")


def runbook_base(value: str) -> str:
    """It goes into every rule file: an http(s) URL with nothing a rule would read."""
    if not re.fullmatch(r"https?://[A-Za-z0-9._~:/?#\[\]@!$&()*+,;=%-]+", value):
        raise ValueError("must be an http:// or https:// URL without spaces, quotes or braces")
    return value.rstrip("/")


def alertmanager_urls(values: list[str]) -> tuple[str, ...]:
    """http(s) base URLs of Alertmanager peers (API v2 below them), no duplicates."""
    urls = [v.strip().rstrip("/") for v in values if v.strip()]
    for url in urls:
        if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", url):
            raise ValueError(f"{url!r}: needs http(s)://HOST[:PORT][/PATH]")
    if len(set(urls)) != len(urls) or len(urls) > 16:
        raise ValueError("at most 16 Alertmanager URLs, each once")
    return tuple(urls)
