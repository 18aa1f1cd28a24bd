"""The exposure collector on literals and small seams: /proc parsing, findings, the
interval cache on an injected clock, the run's bounds, one failing unit among others."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from macha_obs.agent.runbooks import runbook_proposals
from macha_obs.collect.base import collect_all
from macha_obs.collect.exposure import (
    ExposureCollector,
    HostChanges,
    analyze_env,
    order_for_run,
    read_host_changes,
    summarize_exposure,
)
from macha_obs.collect.exposure_listeners import (
    hex_address,
    is_loopback,
    parse_net_table,
    service_of_cgroup,
)
from macha_obs.config import Config
from macha_obs.metrics import build_registry
from macha_obs.models import (
    Alert,
    ExposureReading,
    FindingKind,
    HardeningKey,
    HardenUnit,
    Incident,
    Investigate,
    ScoredUnit,
    UnitStatus,
)

TABLE = (Path(__file__).parent / "fixtures" / "exposure" / "demo-listen.table.txt").read_text()

# /proc/net/tcp as the lab printed it: 127.0.0.1:18082 and 0.0.0.0:18081, both LISTEN
PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:46A2 00000000:0000 0A 00000000:00000000 00:00000000 00000000 63007        0 1090980 1
   1: 00000000:46A1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1090975 1
   2: 0A00020F:9C40 0A000201:0050 01 00000000:00000000 00:00000000 00000000     0        0 1090999 1
"""
# /proc/net/udp6: [::1]:53 bound, [::]:5353 bound, and one connected to a peer
PROC_UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
    0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2001 2 0 0
    1: 00000000000000000000000000000000:14E9 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2002 2 0 0
    2: 00000000000000000000000000000000:14EA 0000000000000000FFFF00000A000001:0035 07 00000000:00000000 00:00000000 00000000     0        0 2003 2 0 0
"""  # noqa: E501


class Table:
    """The unit table at the bus boundary: (name, load, active, sub, restarts, changed)."""

    def __init__(self, running: Sequence[str]) -> None:
        self.running = list(running)

    def unit_table(self, include: str, exclude: str, timeout: float | None = None) -> list[Any]:
        rows: list[Any] = [(u, "loaded", "active", "running", 0, 1) for u in self.running]
        return [*rows, ("idle.service", "loaded", "inactive", "dead", 0, 1)]


class Analyze:
    """systemd-analyze at the process boundary: the recorded table, renamed per unit."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.fail = set(fail)
        self.calls: list[str] = []
        self.envs: list[Mapping[str, str]] = []

    def __call__(
        self, argv: Sequence[str], env: Mapping[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        unit = argv[-1]
        self.calls.append(unit)
        self.envs.append(env)
        if unit in self.fail:
            return subprocess.CompletedProcess(argv, 1, "", f"Unit {unit} not found.\n")
        return subprocess.CompletedProcess(argv, 0, TABLE.replace("demo-listen.service", unit), "")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def collector(
    running: Sequence[str], analyze: Analyze, clock: Clock, **kw: Any
) -> ExposureCollector:
    return ExposureCollector(
        bus=Table(running),
        runner=analyze,
        listening=lambda units: {u for u in units if u.startswith("web")},
        changes=lambda: HostChanges(7, 100.0),
        clock=clock,
        wall=clock,
        **kw,
    )


# ------------------------------------------------------------------ /proc, on literals


def test_the_service_is_the_first_service_in_the_cgroup_path() -> None:
    assert service_of_cgroup("0::/system.slice/nginx.service\n") == "nginx.service"
    lab = "4:memory:/x\n0::/labsd-1-2/system.slice/labsd-expo-open.service\n"
    assert service_of_cgroup(lab) == "labsd-expo-open.service"
    user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service\n"
    assert service_of_cgroup(user) == "user@1000.service"
    assert service_of_cgroup("0::/init.scope\n") is None
    assert service_of_cgroup("1:name=systemd:/system.slice/cron.service\n") == "cron.service"


def test_only_non_loopback_listeners_count() -> None:
    assert str(hex_address("0100007F")) == "127.0.0.1"
    assert parse_net_table(PROC_TCP, "0A") == {1090975}  # not 127.0.0.1, not ESTABLISHED
    # [::]:5353 bound; [::1]:53 is loopback; the third has a peer (connected)
    assert parse_net_table(PROC_UDP6, "07") == {2002}
    mapped = "0000000000000000FFFF00000100007F"
    assert is_loopback(hex_address(mapped))  # ::ffff:127.0.0.1, IPv4 loopback in IPv6
    assert not is_loopback(hex_address("00000000000000000000000000000000"))


def test_host_changes_read_the_generation_and_the_newest_package_database(
    tmp_path: Path,
) -> None:
    assert read_host_changes(tmp_path) == HostChanges(None, None)
    profiles = tmp_path / "nix/var/nix/profiles"
    profiles.mkdir(parents=True)
    (profiles / "system").symlink_to("system-42-link")
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: x\n")
    os.utime(status, (5e9, 5e9))
    assert read_host_changes(tmp_path) == HostChanges(42, 5e9)


def test_services_never_scored_go_first_then_the_longest_ago() -> None:
    order = order_for_run(["a.service", "b.service", "c.service"], {"a.service": 5.0})
    assert order == ["b.service", "c.service", "a.service"]


# ------------------------------------------------------------------ findings


def _reading(scores: dict[str, float], ran_at: float, generation: int) -> ExposureReading:
    units = [
        ScoredUnit(unit=u, score=s, level="X", listening_non_loopback=True, scored_at=ran_at)
        for u, s in scores.items()
    ]
    return ExposureReading(ran_at=ran_at, duration_seconds=1, units=units, generation=generation)


def test_exposure_rose_only_when_the_software_changed_in_between() -> None:
    before = _reading({"a.service": 4.0, "b.service": 9.0}, 1.0, generation=1)
    after = _reading({"a.service": 4.5, "b.service": 9.0}, 2.0, generation=2)
    rose = [
        f for f in summarize_exposure(after, before, 9.5) if f.kind is FindingKind.EXPOSURE_ROSE
    ]
    assert [f.unit for f in rose] == ["a.service"]
    assert rose[0].details["previous"] == 4.0
    same_software = _reading({"a.service": 4.5, "b.service": 9.0}, 2.0, generation=1)
    assert summarize_exposure(same_software, before, 9.5) == []
    fell = _reading({"a.service": 3.0, "b.service": 9.0}, 2.0, generation=2)
    assert summarize_exposure(fell, before, 9.5) == []


def test_service_exposed_needs_both_a_listener_and_a_score_above_the_threshold() -> None:
    reading = ExposureReading(
        ran_at=1,
        duration_seconds=0,
        units=[
            ScoredUnit(unit="web.service", score=9.6, level="UNSAFE", listening_non_loopback=True),
            ScoredUnit(unit="quiet.service", score=9.6, level="UNSAFE"),
            ScoredUnit(unit="hard.service", score=1.5, level="OK", listening_non_loopback=True),
            ScoredUnit(unit="at.service", score=7.0, level="MEDIUM", listening_non_loopback=True),
        ],
    )
    found = summarize_exposure(reading, None, 7.0)
    assert [(f.kind, f.unit) for f in found] == [(FindingKind.SERVICE_EXPOSED, "web.service")]


# ------------------------------------------------------------------ the collector


def test_the_run_is_cached_until_the_interval_passes_on_the_injected_clock() -> None:
    analyze, clock = Analyze(), Clock()
    c = collector(["web.service", "db.service"], analyze, clock, interval=3600)
    first, findings = c.collect()
    assert analyze.calls == ["db.service", "web.service"]  # running services only
    assert [f.unit for f in findings] == ["web.service"]
    clock.now += 3599
    assert c.collect() == (first, findings)
    assert len(analyze.calls) == 2
    clock.now += 1
    second, _ = c.collect()
    assert len(analyze.calls) == 4
    assert second.ran_at == clock.now != first.ran_at


def test_a_failing_unit_is_an_error_for_that_unit_only() -> None:
    analyze, clock = Analyze(fail=["bad.service"]), Clock()
    snapshot = collect_all(
        [collector(["web.service", "bad.service", "db.service"], analyze, clock)],
        hostname="h",
        clock=clock,
    )
    assert snapshot.collectors["exposure"].success
    assert snapshot.exposure is not None
    by_unit = {u.unit: u for u in snapshot.exposure.units}
    assert by_unit["bad.service"].score is None
    assert "not found" in by_unit["bad.service"].error
    assert by_unit["web.service"].score == by_unit["db.service"].score == 9.6
    registry = build_registry(lambda: snapshot)
    assert (
        registry.get_sample_value("macha_unit_security_exposure", {"unit": "bad.service"}) is None
    )
    assert registry.get_sample_value("macha_unit_security_exposure", {"unit": "db.service"}) == 9.6
    outcomes = {
        o: registry.get_sample_value("macha_security_exposure_units", {"outcome": o})
        for o in ("scored", "failed", "skipped")
    }
    assert outcomes == {"scored": 2.0, "failed": 1.0, "skipped": 0.0}


def test_the_run_is_bounded_and_says_what_it_skipped_then_rotates() -> None:
    analyze, clock = Analyze(), Clock()
    running = [f"s{i}.service" for i in range(5)]
    c = collector(running, analyze, clock, max_units=3, interval=300)
    first, _ = c.collect()
    assert first.skipped == ["s3.service", "s4.service"]
    assert [u.unit for u in first.units] == ["s0.service", "s1.service", "s2.service"]
    clock.now += 300
    second, _ = c.collect()
    # the two never scored go first; s0 (scored longest ago, by name) fills the bound
    assert analyze.calls[3:] == ["s3.service", "s4.service", "s0.service"]
    assert second.skipped == ["s1.service", "s2.service"]
    kept = {u.unit: u for u in second.units}
    assert kept["s1.service"].scored_at == first.ran_at  # its last score, and when
    assert len(second.units) == 5


def test_the_run_stops_starting_analyses_past_its_time_budget() -> None:
    clock = Clock()

    class Slow(Analyze):
        def __call__(
            self, argv: Sequence[str], env: Mapping[str, str], timeout: float
        ) -> subprocess.CompletedProcess[str]:
            clock.now += 8  # each analysis takes 8 s on the injected clock
            return super().__call__(argv, env, timeout)

    analyze = Slow()
    c = collector([f"s{i}.service" for i in range(5)], analyze, clock, budget=20)
    reading, _ = c.collect()
    assert len(analyze.calls) == 3  # started at 0, 8, 16 s; not at 24 s
    assert reading.skipped == ["s3.service", "s4.service"]
    assert reading.duration_seconds == 24


def test_systemd_analyze_runs_without_colours_and_on_the_configured_bus() -> None:
    analyze, clock = Analyze(), Clock()
    c = ExposureCollector(
        bus=Table(["web.service"]),
        address="unix:path=/run/x/bus",
        runner=analyze,
        listening=lambda units: set(),
        changes=HostChanges,
        clock=clock,
    )
    c.collect()
    assert analyze.envs[0]["SYSTEMD_COLORS"] == "0"
    assert analyze.envs[0]["DBUS_SYSTEM_BUS_ADDRESS"] == "unix:path=/run/x/bus"
    assert "DBUS_SYSTEM_BUS_ADDRESS" not in analyze_env(None)


@pytest.mark.parametrize(
    ("key", "value"),
    [("exposure_interval", 299), ("exposure_threshold", 10.5), ("exposure_max_units", 0)],
)
def test_exposure_config_is_validated(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=key):
        Config.model_validate({key: value})
    defaults = Config()
    assert (defaults.exposure_interval, defaults.exposure_threshold) == (3600.0, 7.0)
    assert defaults.exposure_max_units == 200


# ------------------------------------------------------------------ what is proposed


def test_exposure_findings_get_a_read_only_look_for_a_person_never_an_action() -> None:
    exposed = ExposureReading(
        ran_at=1,
        duration_seconds=0,
        units=[
            ScoredUnit(unit="web.service", score=9.6, level="UNSAFE", listening_non_loopback=True)
        ],
    )
    findings = summarize_exposure(exposed, None, 7.0)
    findings += summarize_exposure(
        _reading({"db.service": 5.0}, 2.0, 2), _reading({"db.service": 4.0}, 1.0, 1), 9.9
    )
    assert {f.kind for f in findings} == {FindingKind.SERVICE_EXPOSED, FindingKind.EXPOSURE_ROSE}
    incident = Incident(id="i", source="finding", findings=findings)
    proposals, _ = runbook_proposals(incident)
    assert [p.action for p in proposals] == [
        Investigate(diagnostic=UnitStatus(unit="web.service")),
        Investigate(diagnostic=UnitStatus(unit="db.service")),
    ]
    assert "9.6 UNSAFE" in proposals[0].reason
    assert "from 4.0 to 5.0" in proposals[1].reason
    # the same alerts, through their macha_finding label, get the same look
    alert = Alert.model_validate(
        {
            "status": "firing",
            "startsAt": "2026-12-07T01:00:00Z",
            "labels": {
                "alertname": "MachaServiceExposed",
                "unit": "web.service",
                "macha_finding": "service_exposed",
            },
        }
    )
    from_alert, _ = runbook_proposals(Incident(id="j", source="alert", alerts=[alert]))
    assert [p.action for p in from_alert] == [
        Investigate(diagnostic=UnitStatus(unit="web.service"))
    ]


def test_a_measured_exposed_service_is_proposed_the_catalogue_settings_it_lacks() -> None:
    """The exposure finding carries the unsafe rows the hardening catalogue can change;
    the runbook proposes exactly those as one patch, beside the look. An alert alone (no
    measure), a protected unit and a unit with nothing to harden get only the look."""
    rows = ("NoNewPrivileges=", "PrivateTmp=", "RestrictAddressFamilies=~AF_UNIX")
    units = [
        ScoredUnit(
            unit=name, score=9.6, level="UNSAFE", listening_non_loopback=True, hardenable=rows
        )
        for name in ("web.service", "sshd.service")
    ]
    units.append(ScoredUnit(unit="bare.service", score=9.0, listening_non_loopback=True))
    findings = summarize_exposure(
        ExposureReading(ran_at=1, duration_seconds=0, units=units), None, 7.0
    )
    assert findings[0].details["hardenable"] == " ".join(rows)
    proposals, _ = runbook_proposals(Incident(id="i", source="finding", findings=findings))
    patches = [p.action for p in proposals if isinstance(p.action, HardenUnit)]
    assert len(patches) == 1
    assert patches[0].unit == "web.service"
    # AF_UNIX stays allowed by the value the runbook chooses: not a reason on its own
    assert {s.key for s in patches[0].settings} == {
        HardeningKey.NO_NEW_PRIVILEGES,
        HardeningKey.PRIVATE_TMP,
    }
    looks = [p.action for p in proposals if isinstance(p.action, Investigate)]
    assert len(looks) == 3
