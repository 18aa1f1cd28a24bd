"""The state dir as a trust boundary (issue 15, item 1).

The service user owns the state dir and can plant anything in it; root runs the CLI.
Symlink and permission attacks on every state file, with the CLI run as root: nothing
outside the state dir is touched, every refusal is a message (never a traceback), and
what the CLI does create belongs to the dir's owner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from macha_obs import statedir
from macha_obs.store import Store, StoreError
from tests.harness.daemon_support import MACHA_APPROVE, MACHA_LOGS, MACHA_OBS

NOBODY = 65534
STATE_FILES = [
    "state.db",
    "state.db-wal",
    "state.db-shm",
    "decisions.jsonl",
    "actions.jsonl",
    "orchestrator.log",
    "daemon.lock",
    "webhook.token",
    "approval_queue.json",
]
COMMANDS = [
    [MACHA_OBS, "status"],
    [MACHA_OBS, "status", "--json"],
    [MACHA_OBS, "autonomy", "show"],
    [MACHA_OBS, "autonomy", "reset"],
    [MACHA_OBS, "pause", "--reason", "planted"],
    [MACHA_OBS, "resume"],
    [MACHA_OBS, "webhook-token", "--create"],
    [MACHA_APPROVE, "list", "--all"],
    [MACHA_APPROVE, "reject", "0"],
    [MACHA_APPROVE, "approve", "0"],
    [MACHA_LOGS, "decisions"],
    [MACHA_LOGS, "actions", "--json"],
    [MACHA_LOGS, "orchestrator"],
]


def run(argv: list[str], state: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "MACHA_CONFIG": "",
        "MACHA_STATE_DIR": str(state),
        "MACHA_SYSTEMD_BUS_ADDRESS": "unix:path=/nonexistent",
    }
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A scratch dir the service user can reach (pytest's own tmp_path is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="macha-statedir-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


def owned_dir(base: Path) -> Path:
    state = base / "state"
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY, NOBODY)
    return state


@pytest.mark.parametrize("name", STATE_FILES)
def test_a_planted_symlink_is_never_followed_by_roots_cli(open_tmp: Path, name: str) -> None:
    state = owned_dir(open_tmp)
    victim = open_tmp / "victim"
    victim.write_text("root's precious file\n")
    victim.chmod(0o600)
    before = victim.stat()
    link = state / name
    link.symlink_to(victim)
    os.lchown(link, NOBODY, NOBODY)
    for argv in COMMANDS:
        done = run(argv, state)
        assert "Traceback" not in done.stderr, (argv, done.stderr)
    after = victim.stat()
    assert victim.read_text() == "root's precious file\n"
    assert (after.st_mtime_ns, after.st_size, after.st_mode) == (
        before.st_mtime_ns,
        before.st_size,
        before.st_mode,
    )
    assert link.is_symlink()  # left for a person to look at, not replaced
    # nothing the CLI created belongs to root: it ran as the dir's owner
    for entry in state.iterdir():
        assert entry.lstat().st_uid == NOBODY, entry


def test_roots_cli_runs_as_the_state_dirs_owner(open_tmp: Path) -> None:
    state = owned_dir(open_tmp)
    done = run([MACHA_OBS, "pause", "--reason", "maintenance"], state)
    assert done.returncode == 0, done.stderr
    for name in ("state.db", "actions.jsonl"):
        info = (state / name).stat()
        assert info.st_uid == NOBODY, name
        assert info.st_mode & 0o007 == 0, name
    # the audit log still says who asked: the person (root), not the service user
    assert '"by": "root"' in (state / "actions.jsonl").read_text()


def test_serve_refuses_a_planted_lock_without_touching_its_target(open_tmp: Path) -> None:
    state = owned_dir(open_tmp)
    victim = open_tmp / "victim"
    victim.write_text("x\n")
    (state / "daemon.lock").symlink_to(victim)
    done = run([MACHA_OBS, "serve"], state)
    assert done.returncode == 2, done.stderr
    assert "daemon.lock is a symlink" in done.stderr
    assert victim.read_text() == "x\n"


def _damage(state: Path, how: str) -> None:
    if how == "dir":
        state.chmod(0o777)
    elif how == "group":
        state.chmod(0o770)
    elif how == "owner":
        (state / "decisions.jsonl").write_text("")
        os.chown(state / "decisions.jsonl", 12345, 12345)
    elif how == "mode":
        (state / "actions.jsonl").write_text("")
        (state / "actions.jsonl").chmod(0o666)
    else:
        os.mkfifo(state / "orchestrator.log")


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("dir", "writable by other users"),
        ("group", "writable by other users"),
        ("owner", "belongs to uid 12345"),
        ("mode", "writable by others"),
        ("fifo", "not a regular file"),
    ],
)
def test_a_state_dir_or_file_others_can_write_is_refused(
    tmp_path: Path, how: str, says: str
) -> None:
    state = tmp_path / "state"
    with Store(state) as store:
        store.meta.set_meta("k", "v")
    _damage(state, how)
    with (  # noqa: PT012
        pytest.raises((StoreError, statedir.StateDirError), match=says),
        Store(state) as store,
    ):
        store.audit.audit_action({"event": "x"})
        store.audit.audit_decision({"event": "x"})
        # how the daemon opens its log (daemon.setup_logging)
        statedir.open_file(state / "orchestrator.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
