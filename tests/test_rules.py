"""alert_rules/ and exporters/ checked by Debian's promtool and amtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from macha_obs.config import Config
from macha_obs.models import FindingKind
from tests.harness.eyes_support import PROJECT

pytestmark = pytest.mark.stack

RULES = PROJECT / "alert_rules"
EXPORTERS = PROJECT / "exporters"
RUNBOOKS = PROJECT / "docs" / "runbooks"
RULE_FILES = sorted(RULES.glob("*.yml"))
RULE_TESTS = sorted((RULES / "tests").glob("*.yml"))

# which alert stands for each finding kind: every kind must have one
ALERT_FOR_KIND = {
    FindingKind.UNIT_FAILED: "MachaUnitFailed",
    FindingKind.UNIT_FLAPPING: "MachaUnitFlapping",
    FindingKind.DISK_FILLING: "MachaDiskFilling",
    FindingKind.INODES_LOW: "MachaInodesLow",
    FindingKind.MEMORY_PRESSURE: "MachaMemoryPressure",
    FindingKind.JOURNAL_ERROR_BURST: "MachaJournalErrorBurst",
    FindingKind.DNS_FAILING: "MachaDnsFailing",
    FindingKind.TARGET_UNREACHABLE: "MachaTargetUnreachable",
    FindingKind.UNEXPECTED_REBOOT: "MachaUnexpectedReboot",
    # each unit that broke after a generation switch fires MachaUnitFailed; that the
    # switch is to blame is the sidecar's own inference (collect/nixos.py), not a series
    FindingKind.UNITS_FAILED_AFTER_SWITCH: "MachaUnitFailed",
    FindingKind.CPU_HIGH: "MachaCpuBusy",
    FindingKind.LOAD_HIGH: "MachaLoadHigh",
    FindingKind.SWAP_HIGH: "MachaSwapHigh",
    FindingKind.SERVICE_EXPOSED: "MachaServiceExposed",
    FindingKind.EXPOSURE_ROSE: "MachaServiceExposureRose",
    FindingKind.BACKUP_FAILED: "MachaBackupFailed",
    FindingKind.BACKUP_STALE: "MachaBackupStale",
    FindingKind.AUTH_FAILURES: "MachaAuthFailuresBurst",
    FindingKind.NEW_LISTENER: "MachaUnacceptedListener",
    FindingKind.NEW_ENABLED_UNIT: "MachaNewEnabledUnit",
    FindingKind.NEW_SETID_FILE: "MachaNewSetidFile",
    # a service killed at its MemoryMax again fails (MachaUnitFailed) or keeps restarting
    # (MachaUnitFlapping); that its limit is to blame is the sidecar's inference from
    # systemd's Result and MemoryMax (collect/systemd.py), which proposes the tuning patch
    FindingKind.UNIT_OOM_AT_LIMIT: "MachaUnitFailed",
}
SELF_ALERTS = ("MachaDown", "MachaCollectorFailing")
# what the sidecar decided and did, for the humans (macha-sidecar.yml)
HUMAN_ALERTS = (
    "MachaApprovalsPending",
    "MachaRemediationFailed",
    "MachaCircuitOpen",
    "MachaLLMUnavailable",
    "MachaNotReady",
    "MachaLoopStalled",
)


def run(*argv: str, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\S+)$", "\n".join(p.read_text() for p in RULE_FILES), re.M)


def record_names() -> list[str]:
    return re.findall(r"^\s*- record: (\S+)$", "\n".join(p.read_text() for p in RULE_FILES), re.M)


def alert_blocks() -> list[tuple[str, str]]:
    """(name, text) of every alerting rule, up to the next rule or group."""
    text = "\n".join(p.read_text() for p in RULE_FILES)
    found = re.finditer(
        r"^ +- alert: (\S+)\n(.*?)(?=^ +- alert: |^ +- record: |^  - name: |^  #|\Z)",
        text,
        re.M | re.S,
    )
    return [(m.group(1), m.group(2)) for m in found]


def test_rule_files_pass_promtool_check(promtool: str) -> None:
    assert RULE_FILES
    run(promtool, "check", "rules", *map(str, RULE_FILES))


@pytest.mark.parametrize("tests_file", RULE_TESTS, ids=lambda p: p.name)
def test_rule_unit_tests_pass(promtool: str, tests_file: Path) -> None:
    run(promtool, "test", "rules", str(tests_file))


def test_every_finding_kind_and_self_health_has_an_alert() -> None:
    assert set(ALERT_FOR_KIND) == set(FindingKind)
    names = alert_names()
    # one rule per name, or tiers of one name (node_exporter's mixin): one per severity
    tiers = [(n, re.search(r"severity: (\S+)", b).group(1)) for n, b in alert_blocks()]  # type: ignore[union-attr]
    assert len(tiers) == len(set(tiers)) == len(names)
    assert set(ALERT_FOR_KIND.values()) | set(SELF_ALERTS) | set(HUMAN_ALERTS) <= set(names)


def test_every_alert_has_severity_for_summary_description() -> None:
    blocks = re.split(r"^\s*- alert: ", "\n".join(p.read_text() for p in RULE_FILES), flags=re.M)
    for block in blocks[1:]:
        name = block.split()[0]
        for needle in ("\n        for: ", "severity: ", "summary: ", "description: "):
            assert needle in block, f"{name} lacks {needle.strip()}"
        assert "$labels.instance" in block, f"{name} does not say which host"


def test_every_alert_has_a_runbook_page() -> None:
    """runbook_url is <runbook_url_base>/<AlertName>.md, and docs/runbooks/ has that page."""
    base = Config().runbook_url_base
    for name, block in alert_blocks():
        assert f'runbook_url: "{base}/{name}.md"' in block, name
        page = RUNBOOKS / f"{name}.md"
        assert page.is_file(), f"docs/runbooks/{name}.md is missing"


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    # comments between the evaluations say why; they are not part of an evaluation
    text = re.sub(r"^\s*#.*\n", "", "\n".join(p.read_text() for p in RULE_TESTS), flags=re.M)
    for name in alert_names():
        evals = re.findall(
            rf"alertname: {name}\n\s+exp_alerts:(.*?)(?=\n\s+- eval_time|\n\n|\Z)", text, re.S
        )
        assert any(e.strip() == "[]" for e in evals), f"{name}: no not-firing case"
        assert any("exp_labels" in e for e in evals), f"{name}: no firing case"


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-fleet.yml"])
def test_prometheus_configs(promtool: str, config: str) -> None:
    out = run(promtool, "check", "config", str(EXPORTERS / config))
    assert "SUCCESS" in out
    # the rule glob really found every file of alert_rules/, and every rule in them
    assert f"{len(RULE_FILES)} rule files found" in out
    rules = len(alert_names()) + len(record_names())
    assert sum(map(int, re.findall(r"(\d+) rules found", out))) == rules


@pytest.mark.parametrize(
    "config", ["alertmanager.yml", "alertmanager-fleet.yml", "alertmanager-approvals.yml"]
)
def test_alertmanager_configs(amtool: str, config: str) -> None:
    run(amtool, "check-config", str(EXPORTERS / config))


def assert_routed(amtool: str, config: str, receiver: str, *labels: str) -> None:
    """amtool's route test: an alert with `labels` reaches exactly `receiver`."""
    path = f"--config.file={EXPORTERS / config}"
    run(amtool, "config", "routes", "test", path, f"--verify.receivers={receiver}", *labels)


@pytest.mark.parametrize(
    ("host", "receiver"),
    [
        ("host1", "macha-host1"),
        ("host2", "macha-host2"),
        ("host3", "macha-host3"),
        ("stranger", "oncall"),
    ],
)
@pytest.mark.parametrize("audience", ["", "human"])
def test_fleet_routes_each_host_to_its_own_sidecar(
    amtool: str, host: str, receiver: str, audience: str
) -> None:
    """A host's alerts go to its sidecar; the sidecars' own health goes to people."""
    labels = [f"instance={host}", "alertname=MachaUnitFailed", "unit=nginx.service"]
    if audience:
        receiver = "oncall"
        labels.append(f"audience={audience}")
    assert_routed(amtool, "alertmanager-fleet.yml", receiver, *labels)


@pytest.mark.parametrize(("labels", "receiver"), [([], "macha"), (["audience=human"], "oncall")])
def test_single_host_routes_people_alerts_to_people(
    amtool: str, labels: list[str], receiver: str
) -> None:
    assert_routed(amtool, "alertmanager.yml", receiver, "instance=web1", *labels)


def test_the_sidecars_own_alerts_are_for_people() -> None:
    """Rules about the sidecar itself carry audience=human, which the receiver ignores and
    the shipped routes send to people: it must not try to heal itself."""
    own = {
        "MachaDown",
        "MachaCollectorFailing",
        "MachaSnapshotStale",
        "MachaApprovalsPending",
        "MachaRemediationFailed",
        "MachaCircuitOpen",
        "MachaLLMUnavailable",
        "MachaNotReady",
        "MachaLoopStalled",
    }
    seen = set()
    for path in RULE_FILES:
        # each "- alert:" block up to the next one (the files are ours: one rule per block)
        for block in re.split(r"\n\s+- alert: ", path.read_text())[1:]:
            name = block.split("\n", 1)[0].strip()
            for_people = re.search(r"^\s+audience: human$", block, re.M) is not None
            assert for_people == (name in own), name
            seen.add(name)
    assert own <= seen
