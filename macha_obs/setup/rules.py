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
        "swap_used": "macha_swap_used_bytes",
        "swap_total": "macha_swap_total_bytes",
    },
    # node_exporter = true: node_exporter's series for the same facts
    True: {
        "source": (
            "# Alerting rules for macha-obs's /metrics and node_exporter's: with node_exporter = true the\n"  # noqa: E501
            "# sidecar leaves the host's filesystem, memory, swap, load, CPU and boot-time families to\n"  # noqa: E501
            "# node_exporter, and these rules read its node_* series. Both jobs must set `instance` to\n"  # noqa: E501
            "# the host name (exporters/ shows how): the rules join the two on it, and the sidecar's\n"  # noqa: E501
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
        "swap_used": "(node_memory_SwapTotal_bytes - node_memory_SwapFree_bytes)",
        "swap_total": "node_memory_SwapTotal_bytes",
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
        "cpu_busy": ratio(cfg.cpu_busy_threshold),
        "cpu_busy_pct": percent(cfg.cpu_busy_threshold),
        "load_per_cpu": number(cfg.load_per_cpu_threshold),
        "swap": ratio(cfg.swap_used_threshold),
        "swap_pct": percent(cfg.swap_used_threshold),
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
        # posture: exposure. The rise is judged over three exposure runs.
        "exposure_threshold": number(cfg.exposure_threshold),
        "exposure_window": duration(round(3 * cfg.exposure_interval)),
        "exposure_window_spoken": spoken(round(3 * cfg.exposure_interval)),
        # posture: backups
        "backup_grace": number(cfg.backup_grace),
        "backup_grace_spoken": spoken(cfg.backup_grace),
        # posture: intrusion
        "auth_burst": str(cfg.auth_failure_burst),
        "auth_window": duration(round(cfg.auth_failure_window)),
        "auth_window_spoken": spoken(round(cfg.auth_failure_window)),
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
    item = fill(template(APPROVAL_ITEM_FILE), values) if cfg.approval_alert_per_item else ""
    values["approval_item_rule"] = item
    return {name: fill(template(file), values) for name, file in TEMPLATE_FILES.items()}


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


# The templates: the rule files' own text, beside this module (DESIGN.md: data that is not
# code lives in files). approval-item.yml.in goes where macha-sidecar.yml.in says
# [[approval_item_rule]], when approval_alert_per_item is set.
TEMPLATE_DIR = Path(__file__).with_name("rule_templates")
TEMPLATE_FILES = {HOST_RULES: "macha.yml.in", SIDECAR_RULES: "macha-sidecar.yml.in"}
APPROVAL_ITEM_FILE = "approval-item.yml.in"


def template(name: str) -> str:
    """A template's text, read as UTF-8 (the package ships it beside this module)."""
    return (TEMPLATE_DIR / name).read_text(encoding="utf-8")
