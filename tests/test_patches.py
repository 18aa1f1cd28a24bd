"""A config_change is a unified diff a person can review: checked before it is queued
(inside the configured directory, applies exactly, still parses under the real
nix-instantiate), shown as a diff, exported byte for byte, and never applied by us."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from macha_obs.cli import approve_main
from macha_obs.config import Config
from macha_obs.execute.runner import Completed, subprocess_runner
from macha_obs.models import (
    Action,
    ApprovalStatus,
    ConfigChange,
    ExecutionResult,
    JournalVacuum,
    Outcome,
    Proposal,
    Risk,
    UnitState,
)
from macha_obs.policy.scope import Scope
from macha_obs.remediate.patches import (
    PatchChecker,
    PatchRefused,
    apply_patch,
    config_files,
    parse_diff,
)
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Store
from tests.harness.llm_fixtures import read_log_lines
from tests.harness.nix_support import need

CONFIGURATION = """\
{ config, pkgs, ... }:
{
  imports = [ ./hardware-configuration.nix ];
  services.nginx.enable = true;
  services.openssh.enable = true;
  system.stateVersion = "24.05";
}
"""
GOOD = """\
--- a/configuration.nix
+++ b/configuration.nix
@@ -3,4 +3,5 @@
   imports = [ ./hardware-configuration.nix ];
   services.nginx.enable = true;
+  services.nginx.recommendedGzipSettings = true;
   services.openssh.enable = true;
   system.stateVersion = "24.05";
"""


def retarget(diff: str, old: str, new: str) -> str:
    """`diff` with its headers naming `old` and `new` instead of configuration.nix."""
    body = diff.split("\n", 2)[2]
    return f"--- {old}\n+++ {new}\n{body}"


class NothingRuns:
    """The executor seam: a config_change must never reach it."""

    def run(self, action: Action) -> ExecutionResult:
        raise AssertionError(f"executed {action!r}")

    def unit_state(self, unit: str) -> UnitState:
        raise AssertionError(f"looked up {unit}")


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    need("nix-instantiate")  # the real parser: a failure, not a skip, where it is required
    root = tmp_path / "nixos"
    (root / "hosts").mkdir(parents=True)
    (root / "configuration.nix").write_text(CONFIGURATION)
    (root / "hosts" / "web.nix").write_text(CONFIGURATION)
    # the same text outside: had a check followed a path out, the diff would apply there
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.nix").write_text(CONFIGURATION)
    (root / "link-out.nix").symlink_to(outside / "secret.nix")
    (root / "link-in.nix").symlink_to(root / "hosts" / "web.nix")
    return root


@pytest.fixture
def remediator(make_config: Callable[..., Config], config_dir: Path) -> Remediator:
    cfg = make_config(nixos_config_dir=str(config_dir), autonomy_level="auto-full")
    return Remediator(cfg, Store(cfg.state_dir), NothingRuns())


def propose(rem: Remediator, change: ConfigChange) -> Outcome:
    verdict = rem.handle("inc-1", Proposal(action=change, reason="gzip"), Scope()).verdict
    return verdict.outcome


def test_a_good_change_is_queued_shown_as_a_diff_and_exported_byte_for_byte(
    remediator: Remediator, config_dir: Path, tmp_path: Path
) -> None:
    change = ConfigChange(path="configuration.nix", diff=GOOD, summary="gzip for nginx")
    handled = remediator.handle("inc-1", Proposal(action=change), Scope())
    assert handled.verdict.outcome is Outcome.QUEUE, handled.verdict.reason
    assert handled.approval is not None
    env = {
        "MACHA_STATE_DIR": str(remediator.config.state_dir),
        "MACHA_NIXOS_CONFIG_DIR": str(config_dir),
        "MACHA_CONFIG": "",
    }
    shown = CliRunner().invoke(approve_main, ["show", str(handled.approval.id)], env=env)
    assert shown.exit_code == 0, shown.output
    assert "    +  services.nginx.recommendedGzipSettings = true;" in shown.output
    assert "    --- a/configuration.nix" in shown.output
    assert f"cd {config_dir} && patch -p1 < fix.patch" in shown.output

    exported = CliRunner().invoke(approve_main, ["export", str(handled.approval.id)], env=env)
    assert exported.exit_code == 0, exported.output
    assert exported.stdout_bytes == GOOD.encode()
    # the person's side: the exported file applies to a copy of their configuration
    copy = tmp_path / "copy"
    shutil.copytree(config_dir, copy, symlinks=True)
    patch_file = tmp_path / "fix.patch"
    patch_file.write_bytes(exported.stdout_bytes)
    for argv in (
        [need("git"), "apply", "--check", str(patch_file)],
        [need("patch"), "-p1", "--dry-run", "--force", "-i", str(patch_file)],
    ):
        done = subprocess.run(argv, cwd=copy, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{argv[0]}: {done.stdout}{done.stderr}"

    # approving marks it read and changes nothing on disk
    approved = CliRunner().invoke(approve_main, ["approve", str(handled.approval.id)], env=env)
    assert approved.exit_code == 0, approved.output
    assert remediator.store.approvals.get_approval(handled.approval.id).status is (  # type: ignore[union-attr]
        ApprovalStatus.ACKNOWLEDGED
    )
    assert (config_dir / "configuration.nix").read_text() == CONFIGURATION
    assert remediator.store.ledger.list_actions() == []


def test_invariant_9_the_parser_gets_a_scratch_name_of_ours_never_the_models_text(
    config_dir: Path,
) -> None:
    """The model names the file and writes the diff; neither reaches an argv: the parser
    reads a scratch copy whose name is ours."""
    seen: list[list[str]] = []

    def recording(argv: Sequence[str], *, timeout: float) -> Completed:
        seen.append(list(argv))
        return subprocess_runner(argv, timeout=timeout)

    web = retarget(GOOD, "a/hosts/web.nix", "b/hosts/web.nix")
    PatchChecker(config_dir, runner=recording).check(ConfigChange(path="hosts/web.nix", diff=web))
    (argv,) = seen
    assert argv[1:4] == ["--store", "dummy://", "--parse"]
    assert Path(argv[4]).name == "patched.nix"
    assert not Path(argv[4]).is_relative_to(config_dir)
    assert not any("web" in arg or "gzip" in arg.lower() for arg in argv)


def test_a_symlink_that_stays_inside_is_followed(remediator: Remediator) -> None:
    diff = retarget(GOOD, "a/link-in.nix", "b/link-in.nix")
    assert propose(remediator, ConfigChange(path="link-in.nix", diff=diff)) is Outcome.QUEUE


BROKEN_CONTEXT = GOOD.replace("openssh.enable = true;", "openssh.enable = false;")
UNPARSEABLE = GOOD.replace("recommendedGzipSettings = true;", "recommendedGzipSettings = true")
TWO_FILES = GOOD + retarget(GOOD, "a/hosts/web.nix", "b/hosts/web.nix")


@pytest.mark.parametrize(
    ("path", "diff", "reason"),
    [
        ("configuration.nix", BROKEN_CONTEXT, "hunk 1 (@@ -3,4 +3,5 @@) does not apply"),
        ("configuration.nix", UNPARSEABLE, "configuration.nix does not parse after the patch"),
        ("../outside/secret.nix", GOOD, "is not a plain relative path"),
        ("hosts/../../outside/secret.nix", GOOD, "is not a plain relative path"),
        ("/etc/nixos/configuration.nix", GOOD, "is absolute"),
        ("link-out.nix", retarget(GOOD, "a/link-out.nix", "b/link-out.nix"), "resolves outside"),
        ("configuration.nix", retarget(GOOD, "a/hosts/web.nix", "b/hosts/web.nix"), "headers"),
        ("hosts/web.nix", GOOD, "headers name 'a/configuration.nix'"),
        ("configuration.nix", retarget(GOOD, "a/configuration.nix", "b/x.nix"), "headers"),
        ("configuration.nix", TWO_FILES, "touches more than one file"),
        ("missing.nix", retarget(GOOD, "a/missing.nix", "b/missing.nix"), "cannot read"),
        ("hosts", GOOD, "not a .nix file"),
        ("configuration.nix", GOOD.replace("-3,4 +3,5", "-2,4 +2,5"), "differs at line 2"),
        ("configuration.nix", GOOD.replace("+3,5 @@", "+3,6 @@"), "ends before its line counts"),
    ],
)
def test_a_bad_change_is_refused_with_the_reason_and_not_queued(
    remediator: Remediator, path: str, diff: str, reason: str
) -> None:
    proposal = Proposal(action=ConfigChange(path=path, diff=diff))
    handled = remediator.handle("inc-1", proposal, Scope())
    assert handled.verdict.outcome is Outcome.REFUSE
    assert reason in handled.verdict.reason
    assert remediator.store.approvals.list_approvals() == []
    [record] = read_log_lines(remediator.store.audit.decisions_log)
    assert record["outcome"] == "refuse"
    assert reason in record["reason"]


def test_without_a_configured_directory_no_change_is_queued(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config(autonomy_level="suggest")
    rem = Remediator(cfg, Store(cfg.state_dir), NothingRuns())
    verdict = rem.decide("inc-1", Proposal(action=ConfigChange(path="c.nix", diff=GOOD)), Scope())
    assert verdict.outcome is Outcome.REFUSE
    assert "no nixos_config_dir is configured" in verdict.reason


def test_a_missing_parser_refuses_rather_than_queue_unchecked(config_dir: Path) -> None:
    checker = PatchChecker(config_dir, tool=str(config_dir / "no-nix-instantiate"))
    change = ConfigChange(path="configuration.nix", diff=GOOD)
    assert checker.refusal(change) == f"cannot check: {config_dir}/no-nix-instantiate not found"


def test_observe_mode_checks_and_records_a_good_change(
    make_config: Callable[..., Config], config_dir: Path
) -> None:
    cfg = make_config(nixos_config_dir=str(config_dir), autonomy_level="observe")
    rem = Remediator(cfg, Store(cfg.state_dir), NothingRuns())
    good = ConfigChange(path="configuration.nix", diff=GOOD)
    assert propose(rem, good) is Outcome.RECORD
    bad = ConfigChange(path="configuration.nix", diff=UNPARSEABLE)
    assert propose(rem, bad) is Outcome.REFUSE


def test_the_model_is_offered_the_plain_nix_files_of_the_directory(config_dir: Path) -> None:
    (config_dir / ".git").mkdir()
    (config_dir / ".git" / "hidden.nix").write_text("{ }")
    (config_dir / "flake.lock").write_text("{}")
    assert config_files(config_dir) == ["configuration.nix", "hosts/web.nix"]  # no links
    assert config_files(None) == []
    assert config_files(config_dir / "absent") == []


# ---------------------------------------------------------------- export and show, by hand


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"MACHA_STATE_DIR": str(tmp_path / "state"), "MACHA_CONFIG": ""}


def test_show_makes_escape_sequences_visible_while_export_keeps_them(
    tmp_path: Path, env: dict[str, str]
) -> None:
    diff = GOOD.replace("Gzip", "Gzip \x1b[2J\x1b]0;owned\x07 \u202e")
    with Store(tmp_path / "state") as store:
        change = ConfigChange(path="configuration.nix", diff=diff)
        store.approvals.enqueue("inc", change, risk=Risk.HIGH, reason="r", ttl=600)
    shown = CliRunner().invoke(approve_main, ["show", "0"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output
    assert "\u202e" not in shown.output
    assert "\\x1b[2J\\x1b]0;owned\\x07 \\u202e" in shown.output
    exported = CliRunner().invoke(approve_main, ["export", "0"], env=env)
    assert exported.stdout_bytes == diff.encode()


def test_export_refuses_unknown_ids_and_other_actions(tmp_path: Path, env: dict[str, str]) -> None:
    with Store(tmp_path / "state") as store:
        store.approvals.enqueue("inc", JournalVacuum(), risk=Risk.LOW, reason="r", ttl=600)
    other = CliRunner().invoke(approve_main, ["export", "0"], env=env)
    assert other.exit_code == 1
    assert "approval 0 is journal_vacuum, not a config_change" in other.output
    missing = CliRunner().invoke(approve_main, ["export", "42"], env=env)
    assert missing.exit_code == 1
    assert "no approval with id 42" in missing.output
    malformed = CliRunner().invoke(approve_main, ["export", "x1"], env=env)
    assert malformed.exit_code == 2


# ---------------------------------------------------------------- the diff itself, on literals


def test_no_newline_markers_and_zero_context_hunks_apply_exactly() -> None:
    old = "a\nb\nc"
    diff = (
        "--- f.nix\n+++ f.nix\n"
        "@@ -0,0 +1 @@\n+top\n"
        "@@ -3 +4,2 @@\n-c\n\\ No newline at end of file\n+c\n+d\n"
    )
    patch = parse_diff(diff, "f.nix")
    assert patch.strip == 0
    assert apply_patch(patch, old) == "top\na\nb\nc\nd\n"


def test_an_empty_line_in_a_hunk_is_an_empty_context_line() -> None:
    diff = "--- a/f.nix\n+++ b/f.nix\n@@ -1,3 +1,3 @@\n x\n\n-y\n+z\n"
    assert apply_patch(parse_diff(diff, "f.nix"), "x\n\ny\n") == "x\n\nz\n"


@pytest.mark.parametrize(
    ("diff", "reason"),
    [
        ("--- a/f.nix\n+++ b/f.nix\n@@ -1 +1 @@\n-x\n+y", "does not end with a newline"),
        ("--- a/f.nix\n+++ b/f.nix\n@@ -1 +1 @@\n x\n", "changes nothing"),
        ("hello\n--- a/f.nix\n+++ b/f.nix\n@@ -1 +1 @@\n-x\n+y\n", "does not start with"),
        ("--- a/f.nix\n+++ b/f.nix\n@@ -1 +1 @@\n-x\n+y\n+z\n", "not a hunk header"),
        ("--- a/f.nix\n+++ b/f.nix\n@@ -2 +2 @@\n-x\n+y\n@@ -1 +1 @@\n-x\n+y\n", "precedes"),
        ("--- a/f.nix\n+++ b/f.nix\n@@ -1 +3 @@\n-x\n+y\n", "new text starts at line 3"),
        ("diff --git a/g.nix b/g.nix\n--- a/f.nix\n+++ b/f.nix\n", "'diff --git' line"),
    ],
)
def test_malformed_diffs_are_refused(diff: str, reason: str) -> None:
    with pytest.raises(PatchRefused, match=reason):
        parse_diff(diff, "f.nix")
