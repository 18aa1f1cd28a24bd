# ruff: noqa: E501  (the templates hold the rule files' own lines; their descriptions are long)
"""The alert rules, rendered from the config: Prometheus alerts by the thresholds the
sidecar judges by, so the two cannot disagree. `alert_rules/*.yml` is the rendering of the
defaults (a test holds them byte-equal); the NixOS module renders the user's settings at
build time with `macha-obs --config FILE rules render DIR` (no state dir, network or root).
The templates are the files' text with `[[name]]` placeholders, comments kept; every value
is a number, duration or address formatted here (an address checked against a strict
pattern), or a series from SERIES, never free text from the config file.

Two variants of macha.yml, as node_exporter's mixin writes its rules: on the sidecar's own
host families, or (`node_exporter = true`, when the sidecar leaves those families to
node_exporter) on node_exporter's node_* series, joined to the sidecar's on `instance`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from decimal import Decimal
from pathlib import Path

from macha_obs.config import Config
from macha_obs.errors import MachaError

HOST_RULES = "macha.yml"
SIDECAR_RULES = "macha-sidecar.yml"
RULE_FILES = (HOST_RULES, SIDECAR_RULES)

# a snapshot is stale after this, or three collect_intervals when collectors run seldom
SNAPSHOT_STALE_FLOOR = 900.0
# MachaApprovalsPending's wait, or half of approval_ttl: approvals must outlive the wait
APPROVALS_WAIT = 1800
# MachaDiskFillingUp, as node_exporter's mixin: the trend over the last 6 hours, and only
# for a filesystem already fairly full (warning under 40 % available, critical under 20 %)
DISK_TREND_WINDOW = "6h"
DISK_WARNING_AVAILABLE = 0.40
DISK_CRITICAL_AVAILABLE = 0.20
# MachaJournalErrorBurst counts errors over this window of the counter
JOURNAL_BURST_WINDOW = "5m"

# node_exporter's own defaults leave out most pseudo filesystems, not the memory-backed
# ones; the sidecar's disks collector leaves those out too (their filling is memory)
_NODE_FS = 'fstype!="",fstype!~"tmpfs|ramfs"'
SERIES: dict[bool, dict[str, str]] = {
    # node_exporter = false: the sidecar's own host families
    False: {
        "source": "# Alerting rules for macha-obs's /metrics",
        "mem_available": "macha_memory_available_bytes",
        "mem_total": "macha_memory_total_bytes",
        "fs_size": "macha_filesystem_size_bytes",
        "fs_avail": "macha_filesystem_avail_bytes",
        "fs_files": "macha_filesystem_files",
        "fs_files_free": "macha_filesystem_files_free",
        "fs_readonly": "macha_filesystem_readonly",
        "boot_time": "macha_boot_time_seconds",
        "cpu_seconds": "macha_cpu_seconds_total",
        "cpu_dims": "mode",
        "num_cpu": "macha_cpus",
        "load1": "macha_load1",
        "load5": "macha_load5",
        "load15": "macha_load15",
    },
    # node_exporter = true: node_exporter's series for the same facts
    True: {
        "source": (
            "# Alerting rules for macha-obs's /metrics and node_exporter's: with node_exporter = true the\n"
            "# sidecar leaves the host's filesystem, memory, swap, load, CPU and boot-time families to\n"
            "# node_exporter, and these rules read its node_* series. Both jobs must set `instance` to\n"
            "# the host name (exporters/ shows how): the rules join the two on it, and the sidecar's\n"
            "# webhook matches alerts to its host by it. Rules"
        ),
        "mem_available": "node_memory_MemAvailable_bytes",
        "mem_total": "node_memory_MemTotal_bytes",
        "fs_size": f"node_filesystem_size_bytes{{{_NODE_FS}}}",
        "fs_avail": f"node_filesystem_avail_bytes{{{_NODE_FS}}}",
        "fs_files": f"node_filesystem_files{{{_NODE_FS}}}",
        "fs_files_free": f"node_filesystem_files_free{{{_NODE_FS}}}",
        "fs_readonly": f"node_filesystem_readonly{{{_NODE_FS}}}",
        "boot_time": "node_boot_time_seconds",
        "cpu_seconds": "node_cpu_seconds_total",
        "cpu_dims": "cpu, mode",
        "num_cpu": 'count without (cpu, mode) (node_cpu_seconds_total{mode="idle"})',
        "load1": "node_load1",
        "load5": "node_load5",
        "load15": "node_load15",
    },
}

_PLACEHOLDER = re.compile(r"\[\[([a-z_0-9]+)\]\]")
# what a rendered value may hold: digits, units, an address; never a quote, brace or newline
_SAFE_VALUE = re.compile(r"[A-Za-z0-9 .:%/\[\]-]+")
# what a URL in an annotation may hold: no quote, brace, backslash, space or newline
_SAFE_URL = re.compile(r"https?://[A-Za-z0-9._~:/?#\[\]@!$&()*+,;=%-]+")
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_URL_VALUES = ("runbook_base", "approvals_url")


class RulesError(MachaError):
    """The rules cannot be written; the message names the path and the reason."""


def number(value: float) -> str:
    """Shortest exact decimal form, never an exponent: 900.0 → '900', 0.955 → '0.955'."""
    return format(Decimal(repr(float(value))).normalize(), "f")


def ratio(value: float) -> str:
    """A threshold between 0 and 1 with at least two decimals: 0.9 → '0.90', 1 → '1.00'."""
    whole, _, fraction = number(value).partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def percent(value: float) -> str:
    """The same threshold as a percentage, for descriptions: 0.9 → '90', 0.955 → '95.5'."""
    return format((Decimal(repr(float(value))) * 100).normalize(), "f")


def duration(seconds: int) -> str:
    """A Prometheus duration: 1800 → '30m', 90 → '1m30s', 3600 → '1h'."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = ((hours, "h"), (minutes, "m"), (secs, "s"))
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def spoken(seconds: float) -> str:
    """A duration for people: '30 minutes', '1 hour', '45 seconds', '902.5 seconds'."""
    if seconds == int(seconds):
        whole = int(seconds)
        for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
            if whole >= size and whole % size == 0:
                count = whole // size
                return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{number(seconds)} seconds"


def loop_stall_seconds(cfg: Config) -> float:
    """The watchdog's bound in Orchestrator.healthy: a cycle and ten verifications."""
    return cfg.check_interval + 10 * (cfg.verify_timeout + 30)


def listener_url(cfg: Config) -> str:
    """Where a person on the host reaches the sidecar's listener, from listen_address."""
    host, port = cfg.listen_host, cfg.listen_port
    try:  # a name the address had is kept only while it is plainly a host name
        ip = ipaddress.ip_address(host)
    except ValueError:
        shown = host if _HOST_NAME.fullmatch(host) else "127.0.0.1"
    else:
        if ip.is_unspecified:  # listening everywhere: loopback reaches it
            ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
        shown = str(ip) if ip.version == 4 else f"[{ip}]"
    return f"http://{shown}:{port}"


def readyz_url(cfg: Config) -> str:
    """Where a person on the host asks the sidecar why it is not ready."""
    return f"{listener_url(cfg)}/readyz"


def approvals_url(cfg: Config) -> str:
    """The approvals page when no item's link is exported: external_url, or the listener."""
    base = cfg.external_url.rstrip("/") if cfg.external_url else listener_url(cfg)
    return f"{base}/approvals"


def rule_values(cfg: Config) -> dict[str, str]:
    """Every placeholder of the templates that the config decides, formatted from `cfg`."""
    approvals_wait = min(APPROVALS_WAIT, int(cfg.approval_ttl // 2))
    stale = max(SNAPSHOT_STALE_FLOOR, 3 * cfg.collect_interval)
    stall = loop_stall_seconds(cfg)
    warning = cfg.disk_predict_warning_hours * 3600
    critical = cfg.disk_predict_critical_hours * 3600
    values = {
        "disk_fill": ratio(cfg.disk_fill_threshold),
        "disk_fill_pct": percent(cfg.disk_fill_threshold),
        "disk_warning_seconds": number(round(warning)),
        "disk_warning_spoken": spoken(round(warning)),
        "disk_critical_seconds": number(round(critical)),
        "disk_critical_spoken": spoken(round(critical)),
        "disk_warning_avail": ratio(DISK_WARNING_AVAILABLE),
        "disk_critical_avail": ratio(DISK_CRITICAL_AVAILABLE),
        "disk_trend_window": DISK_TREND_WINDOW,
        "inodes": ratio(cfg.inode_threshold),
        "inodes_pct": percent(cfg.inode_threshold),
        "memory": ratio(cfg.memory_pressure_threshold),
        "memory_pct": percent(cfg.memory_pressure_threshold),
        "journal_burst": str(cfg.journal_error_burst),
        "journal_window": JOURNAL_BURST_WINDOW,
        "flapping": str(cfg.flapping_restarts),
        "collect_interval": number(cfg.collect_interval),
        "snapshot_stale": number(stale),
        "snapshot_stale_spoken": spoken(stale),
        "approval_ttl_spoken": spoken(cfg.approval_ttl),
        "approvals_for": duration(approvals_wait),
        "approvals_for_spoken": spoken(approvals_wait),
        "check_interval": number(cfg.check_interval),
        "verify_timeout": number(cfg.verify_timeout),
        "loop_stall": number(stall),
        "loop_stall_spoken": spoken(stall),
        "readyz_url": readyz_url(cfg),
        "approvals_url": approvals_url(cfg),
        "runbook_base": cfg.runbook_url_base.rstrip("/"),
    }
    for name, value in values.items():
        pattern = _SAFE_URL if name in _URL_VALUES else _SAFE_VALUE
        if not pattern.fullmatch(value):  # a bug (or a URL) here must not become a broken rule
            raise RulesError(f"rule value {name}={value!r} is not a plain number, duration or URL")
    return values


def fill(template: str, values: dict[str, str]) -> str:
    """`template` with every `[[name]]` replaced; KeyError names a placeholder not known."""
    return _PLACEHOLDER.sub(lambda found: values[found.group(1)], template)


def render(cfg: Config) -> dict[str, str]:
    """The rule files for `cfg` by name: the thresholds decide them, never the host."""
    values = {**rule_values(cfg), **SERIES[cfg.node_exporter]}
    item = fill(_APPROVAL_ITEM_TEMPLATE, values) if cfg.approval_alert_per_item else ""
    values["approval_item_rule"] = item
    return {name: fill(template, values) for name, template in TEMPLATES.items()}


def write_rules(cfg: Config, outdir: Path) -> list[Path]:
    """Each rule file into `outdir` (made if missing), atomically: never half a file read."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        return [_write_atomically(outdir / name, text) for name, text in render(cfg).items()]
    except OSError as exc:
        where = exc.filename or outdir
        raise RulesError(f"{where}: cannot write the rules: {exc.strerror or exc}") from exc


def _write_atomically(target: Path, text: str) -> Path:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o644)  # Prometheus reads them as another user
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


_HOST_TEMPLATE = """\
[[source]], rendered by `macha-obs rules render` from the
# sidecar's config, so that Prometheus alerts by the thresholds the sidecar judges by:
# disk_fill_threshold = [[disk_fill]], inode_threshold = [[inodes]], memory_pressure_threshold = [[memory]],
# journal_error_burst = [[journal_burst]], flapping_restarts = [[flapping]], collect_interval = [[collect_interval]] s,
# disk_predict_warning_hours and disk_predict_critical_hours ([[disk_warning_spoken]], [[disk_critical_spoken]]). Change the
# config and render again; an edit by hand is lost at the next rendering.
#
# Every alert carries `severity`, the series' `instance` (set to the host name by the
# scrape configs in exporters/, which is what the sidecar's webhook matches on), where
# it concerns one, the `unit`, `mountpoint`, `name` or `target` label, and a
# `runbook_url`: what the alert means, what the sidecar does about it, what to check.
groups:
  - name: macha-units
    rules:
      - alert: MachaUnitFailed
        expr: macha_systemd_unit_state{state="failed"} == 1
        for: 1m
        labels:
          severity: critical
        annotations:
          summary: "{{ $labels.unit }} failed on {{ $labels.instance }}"
          description: "systemd reports {{ $labels.unit }} in the failed state on {{ $labels.instance }}."
          runbook_url: "[[runbook_base]]/MachaUnitFailed.md"
      - alert: MachaUnitFlapping
        # 15 minutes: the window over which the sidecar's systemd collector counts restarts
        expr: increase(macha_systemd_unit_restarts_total[15m]) >= [[flapping]]
        for: 1m
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.unit }} keeps restarting on {{ $labels.instance }}"
          description: "{{ $labels.unit }} restarted {{ $value | printf \\"%.0f\\" }} times in 15 minutes on {{ $labels.instance }} (threshold [[flapping]])."
          runbook_url: "[[runbook_base]]/MachaUnitFlapping.md"

  - name: macha-resources
    rules:
      - alert: MachaMemoryPressure
        expr: 1 - [[mem_available]] / [[mem_total]] >= [[memory]]
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "Memory pressure on {{ $labels.instance }}"
          description: "{{ $value | humanizePercentage }} of memory is in use on {{ $labels.instance }} (threshold [[memory_pct]]%)."
          runbook_url: "[[runbook_base]]/MachaMemoryPressure.md"
      - alert: MachaDiskFilling
        # the sidecar's own finding, at the same threshold; a read-only filesystem cannot
        # fill any further and nothing on it can be cleaned: it is left out
        expr: |
          1 - [[fs_avail]] / [[fs_size]] >= [[disk_fill]]
          and [[fs_size]] > 0
          unless [[fs_readonly]] == 1
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.mountpoint }} is filling up on {{ $labels.instance }}"
          description: "{{ $labels.mountpoint }} ({{ $labels.device }}) is {{ $value | humanizePercentage }} full on {{ $labels.instance }} (threshold [[disk_fill_pct]]%)."
          runbook_url: "[[runbook_base]]/MachaDiskFilling.md"
      - alert: MachaDiskFillingUp
        # node_exporter's mixin, two tiers under one name: at the rate of the last
        # [[disk_trend_window]], a writable filesystem already fairly full will be full within
        # disk_predict_warning_hours (warning) or disk_predict_critical_hours (critical).
        expr: |
          [[fs_avail]] / [[fs_size]] < [[disk_warning_avail]]
          and predict_linear([[fs_avail]][[[disk_trend_window]]], [[disk_warning_seconds]]) < 0
          unless [[fs_readonly]] == 1
        for: 1h
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.mountpoint }} will be full within [[disk_warning_spoken]] on {{ $labels.instance }}"
          description: "At the rate of the last [[disk_trend_window]], {{ $labels.mountpoint }} ({{ $labels.device }}) on {{ $labels.instance }} will be full within [[disk_warning_spoken]]; {{ $value | humanizePercentage }} of it is still available."
          runbook_url: "[[runbook_base]]/MachaDiskFillingUp.md"
      - alert: MachaDiskFillingUp
        expr: |
          [[fs_avail]] / [[fs_size]] < [[disk_critical_avail]]
          and predict_linear([[fs_avail]][[[disk_trend_window]]], [[disk_critical_seconds]]) < 0
          unless [[fs_readonly]] == 1
        for: 1h
        labels:
          severity: critical
        annotations:
          summary: "{{ $labels.mountpoint }} will be full within [[disk_critical_spoken]] on {{ $labels.instance }}"
          description: "At the rate of the last [[disk_trend_window]], {{ $labels.mountpoint }} ({{ $labels.device }}) on {{ $labels.instance }} will be full within [[disk_critical_spoken]]; {{ $value | humanizePercentage }} of it is still available."
          runbook_url: "[[runbook_base]]/MachaDiskFillingUp.md"
      - alert: MachaInodesLow
        expr: |
          1 - [[fs_files_free]] / [[fs_files]] >= [[inodes]]
          and [[fs_files]] > 0
          unless [[fs_readonly]] == 1
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.mountpoint }} is running out of inodes on {{ $labels.instance }}"
          description: "{{ $value | humanizePercentage }} of the inodes of {{ $labels.mountpoint }} are used on {{ $labels.instance }} (threshold [[inodes_pct]]%)."
          runbook_url: "[[runbook_base]]/MachaInodesLow.md"

  - name: macha-journal
    rules:
      - alert: MachaJournalErrorBurst
        # A counter, read with increase(): a burst inside one collection cycle stays in the
        # window for [[journal_window]]. A unit's first errors create its series at their count,
        # a rise increase() cannot see: the second part takes a series younger than the
        # window at its whole value, but only where the sidecar already read the journal
        # before the window (else every old count would look new after a restart).
        expr: |
          increase(macha_journal_errors_total[[[journal_window]]]) >= [[journal_burst]]
          or (
            (macha_journal_errors_total unless macha_journal_errors_total offset [[journal_window]])
            and on (job, instance) (macha_journal_entries_read_total offset [[journal_window]])
          ) + 0 >= [[journal_burst]]
        for: 1m
        labels:
          severity: warning
        annotations:
          summary: "Burst of journal errors from {{ $labels.unit }} on {{ $labels.instance }}"
          description: "{{ $labels.unit }} logged {{ $value | printf \\"%.0f\\" }} error entries in [[journal_window]] on {{ $labels.instance }} (threshold [[journal_burst]])."
          runbook_url: "[[runbook_base]]/MachaJournalErrorBurst.md"

  - name: macha-network
    rules:
      - alert: MachaDnsFailing
        expr: macha_dns_probe_success == 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.name }} does not resolve on {{ $labels.instance }}"
          description: "The sidecar on {{ $labels.instance }} cannot resolve {{ $labels.name }}."
          runbook_url: "[[runbook_base]]/MachaDnsFailing.md"
      - alert: MachaTargetUnreachable
        expr: macha_tcp_probe_success == 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.target }} is unreachable from {{ $labels.instance }}"
          description: "The sidecar on {{ $labels.instance }} cannot open a TCP connection to {{ $labels.target }}."
          runbook_url: "[[runbook_base]]/MachaTargetUnreachable.md"
      - alert: MachaNoDefaultRoute
        expr: macha_network_default_route == 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "No default route on {{ $labels.instance }}"
          description: "{{ $labels.instance }} has no default route that is up."
          runbook_url: "[[runbook_base]]/MachaNoDefaultRoute.md"

  - name: macha-boot
    rules:
      - alert: MachaUnexpectedReboot
        # fires for the first hour of a boot that nobody announced, then resolves
        expr: macha_boot_unexpected_reboot == 1 and on (instance) time() - [[boot_time]] < 3600
        for: 0m
        labels:
          severity: critical
        annotations:
          summary: "{{ $labels.instance }} rebooted unexpectedly"
          description: "{{ $labels.instance }} started a new boot that was not announced beforehand."
          runbook_url: "[[runbook_base]]/MachaUnexpectedReboot.md"

  - name: macha-self
    rules:
      - alert: MachaDown
        expr: up{job="macha"} == 0
        for: 5m
        labels:
          severity: critical
          audience: human
        annotations:
          summary: "macha-obs is down on {{ $labels.instance }}"
          description: "Prometheus cannot scrape the macha-obs sidecar on {{ $labels.instance }}: the host is not watched."
          runbook_url: "[[runbook_base]]/MachaDown.md"
      - alert: MachaCollectorFailing
        expr: macha_scrape_collector_success == 0
        for: 15m
        labels:
          severity: warning
          audience: human
        annotations:
          summary: "macha-obs collector {{ $labels.collector }} failing on {{ $labels.instance }}"
          description: "The {{ $labels.collector }} collector of macha-obs has failed for 15 minutes on {{ $labels.instance }}; its metrics are missing."
          runbook_url: "[[runbook_base]]/MachaCollectorFailing.md"
      - alert: MachaSnapshotStale
        # 15 minutes, or three collect_intervals when the collectors run that seldom
        expr: time() - macha_snapshot_timestamp_seconds > [[snapshot_stale]]
        for: 5m
        labels:
          severity: warning
          audience: human
        annotations:
          summary: "macha-obs snapshot is stale on {{ $labels.instance }}"
          description: "The latest snapshot on {{ $labels.instance }} is {{ $value | humanizeDuration }} old (threshold [[snapshot_stale_spoken]]): the collection loop is stuck."
          runbook_url: "[[runbook_base]]/MachaSnapshotStale.md"

  # Raw values divided here, not in the exporter: the busy share over a window the rule
  # picks, the load per CPU. The same names whichever variant, for dashboards and queries.
  - name: macha-host-ratios
    rules:
      - record: instance:macha_cpu_utilisation:rate5m
        expr: |
          1 - sum without ([[cpu_dims]]) (rate([[cpu_seconds]]{mode=~"idle|iowait|steal"}[5m]))
          / [[num_cpu]]
      - record: instance:macha_load1_per_cpu:ratio
        expr: |
          [[load1]] / [[num_cpu]]
      - record: instance:macha_load5_per_cpu:ratio
        expr: |
          [[load5]] / [[num_cpu]]
      - record: instance:macha_load15_per_cpu:ratio
        expr: |
          [[load15]] / [[num_cpu]]
"""

_SIDECAR_TEMPLATE = """\
# Alerting rules on what the macha-obs sidecar decided and did (its self-metrics), for
# the people it works for: actions waiting for them, fixes that did not hold, an open
# circuit breaker, an LLM it cannot use, a loop that stopped. They reach people through
# the Alertmanager routes already in place; the rules about the host are in macha.yml.
#
# Rendered by `macha-obs rules render` from the sidecar's config, here:
# check_interval = [[check_interval]] s, verify_timeout = [[verify_timeout]] s, approval_ttl = [[approval_ttl_spoken]], and
# listen_address (or external_url) for the addresses below. Change the config and render
# again; an edit by hand is lost at the next rendering.
#
# Every alert carries `severity`, the series' `instance` (the host name) and a
# `runbook_url`: what the alert means, what the sidecar does about it, what to check.
groups:
  - name: macha-sidecar
    rules:
      - alert: MachaApprovalsPending
        # suggest (or an open breaker) queues actions for a human; they expire after
        # approval_ttl. Waiting 30 minutes (or half of approval_ttl, when that is shorter)
        # leaves time to whoever is already on it.
        expr: macha_approvals_pending > 0
        for: [[approvals_for]]
        labels:
          severity: warning
          audience: human
        annotations:
          summary: "Actions wait for approval on {{ $labels.instance }}"
          description: "macha-obs on {{ $labels.instance }} has had actions waiting for a human for over [[approvals_for_spoken]] ({{ $value | printf \\"%.0f\\" }} now). Review them with `macha-approve list` and `macha-approve show ID`, then `macha-approve approve ID` or `macha-approve reject ID`; unanswered, they expire and nothing is done."
          # The page of the oldest pending item, which the sidecar exports while one
          # waits: its plain URL, no capability (opening it needs a login with the token,
          # so Prometheus and whoever reads it cannot decide). A template query, so the
          # link is no label. Without the series or its url, the approvals page.
          approvals_url: '{{ $url := "" }}{{ with printf `macha_approvals_link_info{instance=%q,job=%q}` $labels.instance $labels.job | query }}{{ $url = . | first | label "url" }}{{ end }}{{ or $url "[[approvals_url]]" }}'
          runbook_url: "[[runbook_base]]/MachaApprovalsPending.md"
[[approval_item_rule]]      - alert: MachaRemediationFailed
        # Every fix that failed verification (at once, or its alert did not resolve in
        # alert_verify_window) is escalated, so escalations count them all. Not
        # actions_total{result="failed"}: its series is born at 1 with the first failure
        # of each kind, an increase that increase() cannot see.
        expr: increase(macha_escalations_total[15m]) > 0
        for: 0m
        labels:
          severity: warning
          audience: human
        annotations:
          summary: "An automatic fix failed on {{ $labels.instance }}"
          description: "{{ $value | printf \\"%.0f\\" }} fix(es) by macha-obs failed verification in the last 15 minutes on {{ $labels.instance }}: the problem is still there and was handed to a human. `macha-approve list` shows the escalated actions with their evidence, `macha-logs actions` what was done."
          runbook_url: "[[runbook_base]]/MachaRemediationFailed.md"
      - alert: MachaCircuitOpen
        # the breaker stays open until a human closes it; auto-safe and auto-full are
        # capped at suggest meanwhile
        expr: macha_circuit_breaker_open == 1
        for: 1m
        labels:
          severity: warning
          audience: human
        annotations:
          summary: "macha-obs circuit breaker is open on {{ $labels.instance }}"
          description: "Repeated failed fixes opened the circuit breaker of macha-obs on {{ $labels.instance }}: it acts at most at suggest level and queues every action for a human. Find out why its fixes fail (`macha-obs status`, `macha-logs actions`), then close the breaker with `macha-obs autonomy reset`."
          runbook_url: "[[runbook_base]]/MachaCircuitOpen.md"
      - alert: MachaLLMUnavailable
        # Requests happen only when incidents are analysed, so the ratio is over the
        # requests there were (NaN, no alert, when there were none). One failed request
        # cannot keep it true for 15 minutes: it takes failures that go on.
        expr: |
          sum by (job, instance) (increase(macha_llm_requests_total{outcome!="ok"}[15m]))
            / sum by (job, instance) (increase(macha_llm_requests_total[15m]))
          > 0.5
        for: 15m
        labels:
          severity: warning
          audience: human
        annotations:
          summary: "macha-obs cannot use its LLM on {{ $labels.instance }}"
          description: "{{ $value | humanizePercentage }} of the LLM requests of macha-obs on {{ $labels.instance }} failed over the last 15 minutes: incidents are analysed by the runbooks alone. Check the model server (`ollama_url`: is it running, is the model pulled?) and `macha-logs service` for the errors."
          runbook_url: "[[runbook_base]]/MachaLLMUnavailable.md"
      - alert: MachaNotReady
        # /readyz fails while the process still answers (MachaDown does not fire): its
        # database was replaced, truncated or deleted under it, cannot be written, or its
        # cycles keep failing; the systemd collector it decides by keeps failing (the bus
        # is unreachable); or a thread that must run died. Whatever it decides then is
        # lost, blind or never made. One alert per problem (server/health.py).
        expr: macha_health_problem == 1
        for: 5m
        labels:
          severity: critical
          audience: human
        annotations:
          summary: "macha-obs on {{ $labels.instance }} cannot do its job ({{ $labels.problem }})"
          description: "macha-obs on {{ $labels.instance }} has not been ready for 5 minutes: {{ $labels.problem }}. `macha-obs status` or `curl -s [[readyz_url]]` says why, `macha-logs service` shows the errors. A lost state.db is not replaced silently: restore it and restart, or restart with `macha-obs serve --start-fresh`; a dead thread needs a restart; a failing collector clears when its source answers again."
          runbook_url: "[[runbook_base]]/MachaNotReady.md"
      - alert: MachaLoopStalled
        # Cycles run on every snapshot and at least every check_interval; the watchdog
        # gives one check_interval + 10 x (verify_timeout + 30 s) = [[loop_stall_spoken]].
        expr: time() - macha_last_cycle_timestamp_seconds > [[loop_stall]]
        for: 5m
        labels:
          severity: warning
          audience: human
        annotations:
          summary: "macha-obs has stopped its check cycles on {{ $labels.instance }}"
          description: "The last check cycle of macha-obs on {{ $labels.instance }} started {{ $value | humanizeDuration }} ago (threshold [[loop_stall_spoken]]): nothing is analysed or fixed. See `macha-logs service` and `macha-obs status`; restart the service (macha-autonomous) if it is stuck."
          runbook_url: "[[runbook_base]]/MachaLoopStalled.md"
"""

_APPROVAL_ITEM_TEMPLATE = """\
      - alert: MachaApprovalPendingItem
        # approval_alert_per_item: one alert per pending approval, to route by kind or
        # risk. Its page's plain URL (it needs a login) stays out of the labels (an
        # external_url changed is the same alert): `max without (url)`, an annotation.
        expr: max without (url) (macha_approval_pending_info) == 1
        for: [[approvals_for]]
        labels:
          severity: warning
          audience: human
        annotations:
          summary: "{{ $labels.kind }} ({{ $labels.risk }} risk) waits for approval on {{ $labels.instance }}"
          description: "macha-obs on {{ $labels.instance }} has queued {{ $labels.kind }} ({{ $labels.risk }} risk) for a human for over [[approvals_for_spoken]]: approval {{ $labels.approval_id }}. Open its approval_url, or `macha-approve show {{ $labels.approval_id }}`; unanswered, it expires and nothing is done."
          approval_url: '{{ $url := "" }}{{ with printf `macha_approval_pending_info{instance=%q,job=%q,approval_id=%q}` $labels.instance $labels.job $labels.approval_id | query }}{{ $url = . | first | label "url" }}{{ end }}{{ or $url "[[approvals_url]]" }}'
          runbook_url: "[[runbook_base]]/MachaApprovalPendingItem.md"
"""

TEMPLATES = {HOST_RULES: _HOST_TEMPLATE, SIDECAR_RULES: _SIDECAR_TEMPLATE}
