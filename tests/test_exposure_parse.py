"""The exposure parser against what this machine's systemd-analyze (252) really prints."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from macha_obs.models import (
    UnitExposure,
    parse_security_json,
    parse_security_overview,
    parse_security_table,
)

FIXTURES = Path(__file__).parent / "fixtures" / "exposure"
UNHARDENED = "[Service]\nExecStart=/usr/bin/python3 -m http.server 8081\n"
HARDENED = UNHARDENED + (
    "DynamicUser=yes\nNoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\n"
    "PrivateTmp=yes\nProtectKernelTunables=yes\nRestrictAddressFamilies=AF_INET AF_INET6\n"
)


def _analyze(tmp_path: Path, name: str, text: str, *flags: str) -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is part of the test stack (Debian's systemd package)")
    unit = tmp_path / name
    unit.write_text(text)
    return subprocess.run(
        [analyze, "security", "--offline=true", *flags, str(unit)],
        capture_output=True,
        text=True,
        check=True,
        env={"SYSTEMD_COLORS": "0", "PATH": "/usr/bin:/bin"},
    ).stdout


def test_the_recorded_table_gives_the_overall_score_and_every_unsafe_setting() -> None:
    exposure = parse_security_table((FIXTURES / "demo-listen.table.txt").read_text())
    assert (exposure.unit, exposure.score, exposure.level) == ("demo-listen.service", 9.6, "UNSAFE")
    text = (FIXTURES / "demo-listen.table.txt").read_text()
    assert exposure.unsafe == text.count("✗") == 75
    no_new = next(s for s in exposure.settings if s.name == "NoNewPrivileges=")
    assert (no_new.safe, no_new.exposure) == (False, 0.2)
    assert next(s for s in exposure.settings if s.name == "AmbientCapabilities=").safe is True


def test_the_json_agrees_with_the_table_on_which_settings_are_unsafe() -> None:
    table = parse_security_table((FIXTURES / "demo-listen.table.txt").read_text())
    settings = parse_security_json((FIXTURES / "demo-listen.json").read_text())
    unsafe_json = {s.name for s in settings if s.safe is False}
    assert unsafe_json == {s.name for s in table.settings if s.safe is False}


def test_hardening_a_real_unit_file_lowers_its_real_score(tmp_path: Path) -> None:
    before = parse_security_table(_analyze(tmp_path, "x.service", UNHARDENED))
    after = parse_security_table(_analyze(tmp_path, "y.service", HARDENED))
    assert (before.unit, after.unit) == ("x.service", "y.service")
    assert after.score < before.score
    assert after.unsafe < before.unsafe
    assert "NoNewPrivileges=" not in {s.name for s in after.settings if s.safe is False}


@pytest.mark.parametrize(
    "text",
    ["", "garbage\n", "✗ NoNewPrivileges=  may acquire new privileges  0.2\n"],
)
def test_output_without_an_overall_line_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError, match="Overall exposure level"):
        parse_security_table(text)


@pytest.mark.parametrize("text", ["{", "{}", '[{"set": false}]'])
def test_json_that_is_not_a_settings_list_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_security_json(text)


def test_the_overview_reads_one_score_per_service_and_ignores_the_rest() -> None:
    text = (
        "UNIT                                 EXPOSURE PREDICATE HAPPY\n"
        "ModemManager.service                      6.3 MEDIUM    😐\n"
        "\x1b[0;1;31mdemo-listen.service\x1b[0m          9.6 UNSAFE    😨\n"
        "systemd-journald.service                  4.4 OK        🙂\n"
        "not-a-row\n"
        "x.service  12.0 BOGUS\n"
    )
    assert parse_security_overview(text) == {
        "ModemManager.service": (6.3, "MEDIUM"),
        "demo-listen.service": (9.6, "UNSAFE"),
        "systemd-journald.service": (4.4, "OK"),
    }


def test_a_score_is_bounded() -> None:
    with pytest.raises(ValueError):
        UnitExposure(unit="x.service", score=11, level="UNSAFE")
