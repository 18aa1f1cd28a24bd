"""Host matching (issue 20.3): the whole name, with hostname and declared aliases, not its
first label. Both intakes decide by `HostMatcher`; the pull's server-side filter must
send the same hosts (checked against a real Alertmanager in tests/test_pull.py)."""

from __future__ import annotations

import re

import pytest

from macha_obs.intake.pull_rules import host_filter
from macha_obs.intake.webhook import HostMatcher
from macha_obs.models import Alert


def alert(**labels: str) -> Alert:
    return Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": "X", **labels},
            "startsAt": "2026-01-01T00:00:00Z",
        }
    )


# (hostname, aliases, instance label, ours?)
TABLE = [
    # a short hostname: that name, any port, any case, a trailing dot
    ("vm", (), "vm", True),
    ("vm", (), "vm:9100", True),
    ("vm", (), "VM:1", True),  # DNS names are case-insensitive; the port is the exporter's
    ("vm", (), "vm.", True),
    ("vm", (), " vm:9100 ", True),
    # ... but never a longer name that merely starts with it (the bug)
    ("vm", (), "vm.evil.example:9100", False),
    ("vm", (), "vm.example.org", False),
    ("vm", (), "vm2:9100", False),
    ("vm", (), "myvm:9100", False),
    ("vm", (), "vm:abc", False),
    # a full hostname: that name; its short form only when declared
    ("web1.example.org", (), "WEB1.Example.org:9100", True),
    ("web1.example.org", (), "web1.example.org.:9100", True),
    ("web1.example.org", (), "web1:9100", False),
    ("web1.example.org", ("web1",), "web1:9100", True),
    ("web1.example.org", (), "web1.example.org.evil:9100", False),
    # aliases: whole names too
    ("vm", ("vm.example.org",), "vm.example.org:9100", True),
    ("vm", ("vm.example.org",), "vm.example.org.evil.example", False),
    ("vm", ("10.0.0.5",), "10.0.0.5:9100", True),
    ("vm", ("10.0.0.5",), "10.0.0.50:9100", False),
    ("vm", ("fe80::1",), "[fe80::1]:9100", True),
    ("vm", ("fe80::1",), "fe80::1", True),
    ("vm", ("fe80::1",), "[fe80::10]:9100", False),
]


@pytest.mark.parametrize(("hostname", "aliases", "instance", "ours"), TABLE)
def test_host_matching_compares_the_whole_name(
    hostname: str, aliases: tuple[str, ...], instance: str, ours: bool
) -> None:
    hosts = HostMatcher(hostname, aliases, loopback_is_local=False)
    assert hosts.is_local(alert(instance=instance)) is ours


@pytest.mark.parametrize(("hostname", "aliases", "instance", "ours"), TABLE)
def test_the_pull_filter_sends_the_same_hosts(
    hostname: str, aliases: tuple[str, ...], instance: str, ours: bool
) -> None:
    """The Alertmanager matcher (RE2, anchored) agrees with HostMatcher; Python's re reads
    this pattern as RE2 does. Spaces around a value are ours only once it is here."""
    hosts = HostMatcher(hostname, aliases, loopback_is_local=False)
    matcher = host_filter("instance", hosts.names)
    pattern = matcher.removeprefix('instance=~"').removesuffix('"').replace("\\\\", "\\")
    assert (re.fullmatch(pattern, instance) is not None) is (ours and instance == instance.strip())


def test_loopback_is_ours_only_beside_our_own_prometheus() -> None:
    assert HostMatcher("vm").is_local(alert(instance="127.0.0.1:9100"))
    assert HostMatcher("vm").is_local(alert(instance="[::1]:9100"))
    assert not HostMatcher("vm", loopback_is_local=False).is_local(alert(instance="localhost:1"))


def test_the_first_host_label_present_decides() -> None:
    hosts = HostMatcher("vm", (), ("instance", "host"))
    assert not hosts.is_local(alert(instance="other:9100", host="vm"))
    assert hosts.is_local(alert(host="vm"))
    assert hosts.is_local(alert())  # no host label: a host-local rule
    assert not HostMatcher("vm", require_label=True).is_local(alert())
