"""A hardening or tuning patch, checked before a person is asked to read it.

The proposal carries catalogue settings only (models/hardening.py); the patch is rendered
from them. Before it is queued, for a service:
- a copy of the unit file (and its drop-ins) with the new drop-in beside it, in a
  temporary directory of ours, passes `systemd-analyze verify` - a failure, or any word
  of verify's about our drop-in, refuses it;
- a transient copy of the unit (`macha-check-<unit>-<id>`, its ExecStart, User, Group,
  WorkingDirectory and environment read from systemd, never from a proposal) with the
  new settings and a sandbox (PrivateNetwork=yes: it cannot bind the real port or talk
  out; PrivateTmp=yes; ProtectSystem=strict and ProtectHome=read-only: it writes none of
  the real service's files) must start and stay active for the observation window, as an
  unchanged copy in the same sandbox does first (when even that one stops, the sandbox is
  the cause: "not tried"); each is stopped afterwards whatever happens, and
  RuntimeMaxSec= stops it should we not. A unit that cannot be copied so (a oneshot,
  Type=notify or forking, socket-activated) says "not tried: <why>";
- the exposure score of the copy without and with the drop-in
  (`systemd-analyze security --offline=true`) is shown before and after;
- with `nixos_config_dir` set, the same settings as a unified diff of its
  configuration.nix, checked as a config_change is (remediate/patches.py).
A MemoryMax raise must start from the limit systemd reports for the unit now. journald's
SystemMaxUse has no verifier: its drop-in is rendered from the catalogue, and its NixOS
diff is checked. A check that fails refuses the proposal with the reason (PatchRefused).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from macha_obs.config import Config
from macha_obs.errors import RunnerError
from macha_obs.execute.runner import Runner, subprocess_runner
from macha_obs.execute.transient import (
    UINT64_MAX,
    Systemd,
    UnitFacts,
    exec_property,
    setting_property,
)
from macha_obs.models import (
    HARDENING,
    ConfigChange,
    HardenUnit,
    SettingsPatch,
    TuneJournald,
    TuneUnit,
    UnitExposure,
    parse_security_table,
    size_text,
)
from macha_obs.remediate.patches import PatchChecker, PatchRefused, read_target

NIXOS_FILE = "configuration.nix"
WINDOW = 3.0  # seconds the transient copy must stay active
POLL = 0.25
MAX_UNIT_BYTES = 262_144
CACHE_SECONDS = 3600.0
CACHE_KEPT = 64
_COPYABLE_TYPES = {"simple", "exec"}
_DENIED = "Access denied"
_AUTH = "Interactive authentication required"
_BUS_TYPES = {key.value: entry.bus for key, entry in HARDENING.items()}


@dataclass(frozen=True)
class Report:
    """What the checks found, for the person reading the queued item."""

    verify: str
    copy: str
    before: UnitExposure | None = None
    after: UnitExposure | None = None
    nixos: str = ""

    def describe(self) -> str:
        parts = [f"verify: {self.verify}", f"transient copy: {self.copy}"]
        if self.before is not None and self.after is not None:
            parts.append(
                f"exposure {self.before.score:.1f} {self.before.level} -> "
                f"{self.after.score:.1f} {self.after.level} (systemd-analyze security)"
            )
        if self.nixos:
            parts.append(f"NixOS: {self.nixos}")
        return "checks: " + "; ".join(parts)


def nixos_patch(action: SettingsPatch, config_dir: Path | None) -> ConfigChange:
    """The patch as a unified diff of `configuration.nix` under `config_dir`: the
    catalogue's lines added before the file's last closing brace. PatchRefused when there
    is no such file or no brace to add them before."""
    text = read_target(config_dir, NIXOS_FILE)
    lines = text.splitlines(keepends=True)
    if not text.endswith("\n"):
        raise PatchRefused(f"{NIXOS_FILE} does not end with a newline")
    closing = [i for i, line in enumerate(lines) if line.strip() == "}"]
    if not closing:
        raise PatchRefused(f"{NIXOS_FILE} has no closing '}}' line to add the settings before")
    at = closing[-1]
    added = [f"  # {action.kind}, proposed by macha-obs\n"]
    added += [f"  {line}\n" for line in action.nix_lines()]
    new = [*lines[:at], *added, *lines[at:]]
    diff = "".join(difflib.unified_diff(lines, new, f"a/{NIXOS_FILE}", f"b/{NIXOS_FILE}", n=3))
    summary = f"{action.kind} {action.target}" if action.target != "host" else action.kind
    return ConfigChange(path=NIXOS_FILE, diff=diff, summary=summary[:200])


class HardeningChecker:
    """Checks a settings patch before it is queued; see the module's docstring."""

    def __init__(
        self,
        config_dir: Path | None,
        *,
        runner: Runner = subprocess_runner,
        address: str | None = None,
        root: Path = Path("/"),
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        token: Callable[[], str] = lambda: os.urandom(3).hex(),
        patches: PatchChecker | None = None,
    ) -> None:
        """`root`: where the unit files systemd names are read (the lab's /proc/PID/root
        in tests); `address`: its bus. `clock`/`sleep` bound the observation window."""
        self.config_dir = config_dir
        self.systemd = Systemd(runner, address=address)
        self.root = root
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self.token = token
        self.patches = patches or PatchChecker(config_dir, runner=runner)
        self._seen: dict[str, tuple[float, str | None, str]] = {}

    @classmethod
    def for_config(cls, config: Config) -> HardeningChecker:
        """The checker the sidecar uses: its NixOS directory and its systemd bus."""
        return cls(config.nixos_config_dir, address=config.systemd_bus_address)

    def refusal(self, action: SettingsPatch) -> tuple[str | None, str]:
        """(why it is refused or None, what the checks found). A result is kept for an
        hour: a proposal judged again meanwhile does not start another copy."""
        key = action.model_dump_json()
        now = self.clock()
        kept = self._seen.get(key)
        if kept is not None and now - kept[0] < CACHE_SECONDS:
            return kept[1], kept[2]
        try:
            found: tuple[str | None, str] = (None, self.check(action).describe())
        except PatchRefused as exc:
            found = (str(exc)[:400], "")
        self._seen[key] = (now, *found)
        while len(self._seen) > CACHE_KEPT:
            self._seen.pop(next(iter(self._seen)))
        return found

    def check(self, action: SettingsPatch) -> Report:
        """Every check; PatchRefused with the first that failed."""
        nixos = ""
        if self.config_dir is not None:
            change = nixos_patch(action, self.config_dir)
            self.patches.check(change)
            nixos = f"the diff of {NIXOS_FILE} applies and parses (nix-instantiate --parse)"
        if isinstance(action, TuneJournald):
            return Report(
                verify="not run: journald.conf has no verifier; the drop-in is the catalogue's",
                copy="not tried: journald is not copied",
                nixos=nixos,
            )
        try:
            facts = self.systemd.facts(action.unit)
        except (RunnerError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise PatchRefused(f"cannot read {action.unit} from systemd: {exc}") from exc
        if facts.load_state != "loaded" or not facts.fragment:
            raise PatchRefused(f"{action.unit} is not a loaded unit with a unit file")
        if isinstance(action, TuneUnit) and facts.memory_max != action.raised_from:
            now = "none" if facts.memory_max >= UINT64_MAX else size_text(facts.memory_max)
            raise PatchRefused(
                f"{action.unit}'s MemoryMax is {now} now, not the "
                f"{size_text(action.raised_from)} the raise starts from"
            )
        with tempfile.TemporaryDirectory(prefix="macha-harden-") as scratch:
            copy = self._copy_unit(facts, Path(scratch))
            scored = isinstance(action, HardenUnit)  # a memory limit is not exposure
            before = self._score(copy) if scored else None
            dropin = copy.parent / f"{copy.name}.d" / Path(action.dropin_path).name
            dropin.write_text(action.dropin(), encoding="utf-8")
            verified = self._verify(copy, dropin)
            after = self._score(copy) if scored else None
        return Report(verified, self._try_copy(action, facts), before, after, nixos)

    # ------------------------------------------------------------ the unit file copy

    def _read(self, path: str) -> bytes:
        where = self.root / path.lstrip("/")
        try:
            with open(where, "rb") as file:
                data = file.read(MAX_UNIT_BYTES + 1)
        except OSError as exc:
            raise PatchRefused(f"cannot read {path}: {exc.strerror}") from exc
        if len(data) > MAX_UNIT_BYTES:
            raise PatchRefused(f"{path} is larger than {MAX_UNIT_BYTES} bytes")
        return data

    def _copy_unit(self, facts: UnitFacts, scratch: Path) -> Path:
        """The unit file and its drop-ins, under our own names, in `scratch`."""
        units = scratch / "units"
        (units / f"{facts.unit}.d").mkdir(parents=True)
        copy = units / facts.unit
        copy.write_bytes(self._read(facts.fragment))
        for dropin in facts.dropins:
            name = Path(dropin).name
            if name.endswith(".conf"):
                (units / f"{facts.unit}.d" / name).write_bytes(self._read(dropin))
        return copy

    def _verify(self, copy: Path, dropin: Path) -> str:
        try:
            done = self.systemd.verify(str(copy))
        except RunnerError as exc:
            raise PatchRefused(f"cannot verify: {exc}") from exc
        said = done.output.replace(str(copy.parent) + "/", "")
        about_ours = [line for line in done.output.splitlines() if str(dropin) in line]
        if done.returncode != 0 or about_ours:
            what = about_ours or said.splitlines() or [f"exit status {done.returncode}"]
            shown = " ".join(" ".join(what).replace(str(copy.parent) + "/", "").split())
            raise PatchRefused(f"systemd-analyze verify refuses the drop-in: {shown[:300]}")
        return "systemd-analyze verify passed"

    def _score(self, copy: Path) -> UnitExposure | None:
        try:
            done = self.systemd.security(str(copy))
            return parse_security_table(done.output)
        except (RunnerError, ValueError):
            return None  # a score is shown when there is one; it is not a gate

    # ------------------------------------------------------------ the transient copy

    def _not_copyable(self, facts: UnitFacts) -> str | None:
        sockets = [t for t in facts.triggered_by if t.endswith(".socket")]
        if sockets:
            return f"socket-activated by {', '.join(sockets)}; a copy cannot take its socket"
        if facts.type not in _COPYABLE_TYPES:
            return f"Type={facts.type}: only simple and exec services are copied"
        if len(facts.exec_start) != 1:
            return f"{len(facts.exec_start)} ExecStart= commands; one is copied"
        return None

    def _try_copy(self, action: HardenUnit | TuneUnit, facts: UnitFacts) -> str:
        """Two copies in the sandbox: the unit as it is, then with the new settings. Only
        when the unchanged copy stays active does the changed one's fate say something of
        the settings; otherwise the sandbox is what stops it, and the copy is not proof."""
        why_not = self._not_copyable(facts)
        if why_not is not None:
            return f"not tried: {why_not}"
        try:
            unchanged, _ = self._copy(facts, ())
            if unchanged is not None:
                return (
                    "not tried: even unchanged, a copy does not stay active in the read-only "
                    f"sandbox ({unchanged})"
                )
            changed, name = self._copy(facts, tuple(action.pairs()))
        except RunnerError as exc:
            if _DENIED in str(exc) or _AUTH in str(exc):
                # systemd 252-255 ask polkit without the unit name: no rule can allow only our
                # copies, so an unprivileged sidecar cannot try; the other checks stand
                return f"not tried: systemd does not let this user start a transient unit ({exc})"
            raise PatchRefused(f"a copy of {facts.unit} could not be started: {exc}") from exc
        if changed is not None:
            raise PatchRefused(
                f"the copy {name} with the new settings did not stay active: {changed} "
                "(unchanged, a copy did)"
            )
        return (
            f"{name} stayed active {self.window:g}s in a sandbox ({SANDBOX_SAID}), as did "
            "an unchanged copy"
        )

    def _copy(self, facts: UnitFacts, pairs: tuple[tuple[str, str], ...]) -> tuple[str | None, str]:
        """Start one copy with `pairs` set, watch it, stop it: (None if it stayed active for
        the window, else what it became; its name)."""
        name = f"macha-check-{facts.unit.removesuffix('.service')}-{self.token()}.service"
        path, argv = facts.exec_start[0]
        props = [
            ["Description", "s", f"macha-obs check of {facts.unit} (a sandboxed copy)"],
            exec_property(path, argv),
            ["RuntimeMaxUSec", "t", str(int((self.window + 60) * 1e6))],
            ["CollectMode", "s", "inactive-or-failed"],
        ]
        for key, value in (
            ("User", facts.user),
            ("Group", facts.group),
            ("WorkingDirectory", facts.working_directory),
        ):
            if value:
                props.append([key, "s", value])
        if facts.environment:
            props.append(["Environment", "as", str(len(facts.environment)), *facts.environment])
        if facts.environment_files:
            files = [w for f, ok in facts.environment_files for w in (f, str(ok).lower())]
            props.append(["EnvironmentFiles", "a(sb)", str(len(facts.environment_files)), *files])
        for key, value in pairs:
            props.append(setting_property(key, value, _BUS_TYPES.get(key, "t")))
        # the sandbox, last so that it wins: no network but its own loopback (the real port
        # stays the real service's, nothing goes out), its own /tmp, and a read-only file
        # system (the copy never writes the real service's state, pid files or data);
        # a proposal's ProtectHome= (yes, or read-only) is at least as strict as ours
        props += [
            ["PrivateNetwork", "b", "true"],
            ["PrivateTmp", "b", "true"],
            ["ProtectSystem", "s", "strict"],
        ]
        if "ProtectHome" not in dict(pairs):
            props.append(["ProtectHome", "s", "read-only"])
        try:
            self.systemd.start_transient(name, props)
            return self._observe(name), name
        finally:
            self._stop(name)

    def _observe(self, name: str) -> str | None:
        """None when active for the whole window, else what it became and when."""
        started = self.clock()
        while True:
            state, sub = self.systemd.active_state(name)
            elapsed = self.clock() - started
            if state not in ("active", "activating"):
                return f"{state}/{sub} after {elapsed:.1f}s"
            if elapsed >= self.window and state == "active":
                return None
            if elapsed >= self.window + 10:
                return f"still {state}/{sub} after {elapsed:.1f}s"
            self.sleep(POLL)

    def _stop(self, name: str) -> None:
        for step in (self.systemd.stop, self.systemd.reset_failed):
            # not loaded any more (collected): nothing is left to stop
            with contextlib.suppress(RunnerError):
                step(name)


SANDBOX_SAID = "PrivateNetwork=yes, PrivateTmp=yes, ProtectSystem=strict, ProtectHome=read-only"

__all__ = ["HardeningChecker", "Report", "nixos_patch"]
