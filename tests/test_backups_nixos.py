"""The NixOS module wires backup_units from the user's restic and borg jobs, through the
real module system (nixpkgs' lib.evalModules; tests/harness/nix_support.py): the job
units are added to the user's own backup_units, or to the daemon's defaults, and the
module still evaluates where NixOS's restic and borgbackup modules are absent.

services.restic.backups and services.borgbackup.jobs are declared here, at the
module-system boundary, as attribute sets of submodules (what NixOS declares them as):
nixos-options.nix leaves them out on purpose, so that every other evaluation shows the
module does not need them."""

from __future__ import annotations

import pytest

from macha_obs.config import Config
from macha_obs.config.checks import DEFAULT_BACKUP_UNITS
from tests.harness.nix_support import eval_lib, eval_module, need_real_lib, rendered_config

ENABLED = {"enable": True}
# NixOS declares both as attrsOf (submodule ...): freeform here, the names are what matter
JOB_OPTIONS = """
  options.services.restic.backups = lib.mkOption {
    type = lib.types.attrsOf (lib.types.submodule { freeformType = lib.types.attrs; });
    default = { };
  };
  options.services.borgbackup.jobs = lib.mkOption {
    type = lib.types.attrsOf (lib.types.submodule { freeformType = lib.types.attrs; });
    default = { };
  };
"""


@pytest.fixture(autouse=True)
def real_lib() -> None:
    need_real_lib()


def user(body: str) -> str:
    return f"{{ lib, ... }}: {{ {JOB_OPTIONS} config = {{ {body} }}; }}"


JOBS = (
    'services.restic.backups.offsite = { repository = "s3:x"; }; '
    'services.restic.backups.local = { repository = "/mnt/b"; }; '
    'services.borgbackup.jobs.home = { repo = "borg@host:home"; };'
)
JOB_UNITS = (
    "restic-backups-local.service",
    "restic-backups-offsite.service",
    "borgbackup-job-home.service",
)


def test_the_nix_side_reads_the_same_defaults_as_the_daemon() -> None:
    assert tuple(eval_lib("defaultBackupUnits")) == DEFAULT_BACKUP_UNITS == Config().backup_units


def test_the_users_jobs_are_added_to_the_default_globs() -> None:
    cfg = rendered_config(eval_module(ENABLED, user_module=user(JOBS)))
    assert cfg.backup_units == (*DEFAULT_BACKUP_UNITS, *JOB_UNITS)


def test_the_users_jobs_are_added_to_their_own_backup_units() -> None:
    own = {"enable": True, "settings": {"backup_units": ["nightly-dump.service"]}}
    cfg = rendered_config(eval_module(own, user_module=user(JOBS)))
    assert cfg.backup_units == ("nightly-dump.service", *JOB_UNITS)


def test_no_jobs_leaves_backup_units_to_the_user_or_the_daemon() -> None:
    declared_but_empty = rendered_config(eval_module(ENABLED, user_module=user("")))
    assert declared_but_empty.backup_units == DEFAULT_BACKUP_UNITS
    own = {"enable": True, "settings": {"backup_units": ["nightly-dump.service"]}}
    assert rendered_config(eval_module(own, user_module=user(""))).backup_units == (
        "nightly-dump.service",
    )


def test_the_module_evaluates_without_the_restic_and_borg_modules() -> None:
    result = eval_module(ENABLED)
    assert result["evaluator"] == "nixpkgs lib"
    assert rendered_config(result).backup_units == DEFAULT_BACKUP_UNITS
