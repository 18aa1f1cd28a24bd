"""A service's security exposure as `systemd-analyze security` scores it, parsed purely.

systemd 252 prints the overall score only in its table ("→ Overall exposure level for
x.service: 9.6 UNSAFE 😨"); its `--json` lists the settings without the total. So the
table is what we read: one line per setting, ✓ (safe) or ✗ (unsafe) with the exposure
that setting adds, then the overall line. Without a unit, `systemd-analyze security`
prints one row per service (UNIT EXPOSURE PREDICATE HAPPY), which the overview parser
reads. Nothing here runs anything; the callers run the argv lists themselves.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ExposureLevel",
    "ExposureReading",
    "ScoredUnit",
    "SecuritySetting",
    "UnitExposure",
    "parse_security_json",
    "parse_security_overview",
    "parse_security_table",
]

# systemd's own words for a score, from best to worst (src/analyze/analyze-security.c)
ExposureLevel = str
LEVELS: tuple[ExposureLevel, ...] = ("PERFECT", "SAFE", "OK", "MEDIUM", "EXPOSED", "UNSAFE")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_OVERALL = re.compile(
    r"Overall exposure level for (?P<unit>\S+?): (?P<score>\d+(?:\.\d+)?) (?P<level>[A-Z]+)"
)
_SETTING = re.compile(r"^(?P<mark>[✓✗]) (?P<name>\S+)\s+(?P<rest>.*?)\s*$")
_TRAILING_NUMBER = re.compile(r"^(?P<description>.*?)\s+(?P<exposure>\d+(?:\.\d+)?)$")
_OVERVIEW_ROW = re.compile(
    r"^(?P<unit>\S+\.service)\s+(?P<score>\d+(?:\.\d+)?)\s+(?P<level>[A-Z]+)(?:\s.*)?$"
)


class SecuritySetting(BaseModel):
    """One row of the assessment: a setting, whether it is safe, what it adds if not."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(max_length=200)
    safe: bool | None = None  # None: the setting does not apply to this service
    exposure: float | None = Field(None, ge=0)
    description: str = Field("", max_length=300)


class UnitExposure(BaseModel):
    """A service's overall score (0 best … 10 worst), its level, and its unsafe settings."""

    model_config = ConfigDict(frozen=True)

    unit: str = Field(max_length=256)
    score: float = Field(ge=0, le=10)
    level: ExposureLevel = Field(max_length=16)
    settings: tuple[SecuritySetting, ...] = ()

    @property
    def unsafe(self) -> int:
        """How many settings systemd marks ✗: what a hardening patch could change."""
        return sum(1 for s in self.settings if s.safe is False)


def _clean(text: str) -> list[str]:
    return [_ANSI.sub("", line).rstrip() for line in text.splitlines()]


def parse_security_table(text: str) -> UnitExposure:
    """Read `systemd-analyze security UNIT`'s table; ValueError when there is no overall line."""
    settings: list[SecuritySetting] = []
    overall: re.Match[str] | None = None
    for line in _clean(text):
        if (found := _OVERALL.search(line)) is not None:
            overall = found
            continue
        row = _SETTING.match(line)
        if row is None:
            continue
        rest = row["rest"]
        exposure: float | None = None
        description = rest
        if (number := _TRAILING_NUMBER.match(rest)) is not None:
            description, exposure = number["description"], float(number["exposure"])
        settings.append(
            SecuritySetting(
                name=row["name"][:200],
                safe=row["mark"] == "✓",
                exposure=exposure,
                description=description.strip()[:300],
            )
        )
    if overall is None:
        raise ValueError("no 'Overall exposure level' line in systemd-analyze's output")
    return UnitExposure(
        unit=overall["unit"],
        score=min(10.0, float(overall["score"])),
        level=overall["level"],
        settings=tuple(settings),
    )


def parse_security_json(text: str) -> tuple[SecuritySetting, ...]:
    """Read `systemd-analyze security --json=short UNIT`: the settings, without a total."""
    try:
        rows: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"systemd-analyze's JSON does not parse: {exc}") from exc
    if not isinstance(rows, list):
        raise ValueError("systemd-analyze's JSON is not a list of settings")  # noqa: TRY004
    settings: list[SecuritySetting] = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ValueError(  # noqa: TRY004 - bad output, one error type for callers
                "systemd-analyze's JSON has a setting without a name"
            )
        raw = row.get("exposure")
        exposure = float(raw) if isinstance(raw, (str, int, float)) and raw != "" else None
        is_set = row.get("set")
        settings.append(
            SecuritySetting(
                name=row["name"][:200],
                # systemd reports `set` null where the setting does not apply
                safe=None if is_set is None else (bool(is_set) or not exposure),
                exposure=exposure,
                description=str(row.get("description", ""))[:300],
            )
        )
    return tuple(settings)


def parse_security_overview(text: str) -> dict[str, tuple[float, ExposureLevel]]:
    """Read `systemd-analyze security` without a unit: {service: (score, level)}."""
    scores: dict[str, tuple[float, ExposureLevel]] = {}
    for line in _clean(text):
        row = _OVERVIEW_ROW.match(line.strip())
        if row is not None and row["level"] in LEVELS:
            scores[row["unit"]] = (min(10.0, float(row["score"])), row["level"])
    return scores


class ScoredUnit(BaseModel):
    """One running service in an exposure reading: its score, or why it has none."""

    model_config = ConfigDict(frozen=True)

    unit: str = Field(max_length=256)
    score: float | None = Field(None, ge=0, le=10)  # None: its analysis failed (`error`)
    level: ExposureLevel = Field("", max_length=16)
    unsafe: int = Field(0, ge=0)  # settings systemd marks ✗
    # the unsafe rows a hardening patch's catalogue can change (row names as systemd
    # prints them, e.g. "NoNewPrivileges="): what the runbook proposes, bounded
    hardenable: tuple[str, ...] = Field((), max_length=32)
    # a socket of the service listens on (TCP) or is bound to (UDP) a non-loopback address
    listening_non_loopback: bool = False
    scored_at: float | None = None  # unix seconds of the run that scored it
    error: str = Field("", max_length=300)


class ExposureReading(BaseModel):
    """The latest exposure run over the running services (re-run at a slow interval).

    `skipped` names the running services this run did not score (past the configured
    bound or the run's time budget); a skipped service keeps the score of the run that
    scored it last, with that run's `scored_at`."""

    model_config = ConfigDict(frozen=True)

    ran_at: float  # unix seconds, when the run started
    duration_seconds: float = Field(ge=0.0)
    units: list[ScoredUnit] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    # what marks a change of the host's software: the NixOS system generation, and the
    # newest mtime of the package databases (dpkg, rpm, pacman, the Nix system profile)
    generation: int | None = None
    packages_changed_at: float | None = None

    @property
    def failed(self) -> list[str]:
        return [u.unit for u in self.units if u.error]
